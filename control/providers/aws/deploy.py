"""A deployment policy entry applied to the pool's Auto Scaling group: a new launch-template version whose user
data starts the engine with the entry's arguments (the previous version is its source, so everything else is
kept), the group pointed at that version, and an instance refresh that replaces the instances with the entry's
healthy percentages:

    MinHealthyPercentage = floor(100 x (desired - max_unavailable) / desired)
    MaxHealthyPercentage = 100 + ceil(100 x max_surge / desired), at most 200 and at most Min + 100

Every argument is shell-quoted in the script (the policy already refuses shell metacharacters; quoting keeps a
future field from becoming one). IAM: ec2:DescribeLaunchTemplates, ec2:CreateLaunchTemplateVersion,
autoscaling:UpdateAutoScalingGroup, autoscaling:StartInstanceRefresh, autoscaling:DescribeInstanceRefreshes."""

from __future__ import annotations

import base64
import math
import shlex
from typing import TYPE_CHECKING, Any

from control.policy.deployment import command, engine_args
from control.providers.base import ProviderError, RolloutStatus

if TYPE_CHECKING:
    from control.providers.aws.provider import AwsProvider

DEFAULT_IMAGES = {"vllm": "vllm/vllm-openai:latest", "sglang": "lmsysorg/sglang:latest"}
FAILED = {"Failed", "Cancelled", "RollbackFailed", "RollbackSuccessful", "Baseline"}


def user_data(entry: dict[str, Any], revision: int | None) -> str:
    """The instance's boot script: the engine in its container, on port 8000."""
    image = entry.get("image") or DEFAULT_IMAGES[entry["engine"]]
    # The vLLM image's entrypoint is its OpenAI server; SGLang's image takes the whole command.
    argv = engine_args(entry) if entry["engine"] == "vllm" else command(entry)
    run = ["docker", "run", "-d", "--restart", "unless-stopped", "--gpus", "all", "--ipc", "host", "-p",
           "8000:8000", "--name", "engine", image, *argv]
    return "\n".join(["#!/bin/bash", f"# switchyard deployment revision {revision or '-'}", "set -euo pipefail",
                      " ".join(shlex.quote(a) for a in run), ""])


def healthy_percentages(desired: int, max_unavailable: int, max_surge: int) -> tuple[int, int]:
    if desired <= 0:
        return 100, 100
    low = max(0, min(100, math.floor(100 * (desired - max_unavailable) / desired)))
    high = min(200, low + 100, 100 + math.ceil(100 * max_surge / desired))
    return low, max(high, 100)


def apply(p: AwsProvider, entry: dict[str, Any], revision: int | None) -> str:
    group = p._group()
    spec = group.get("LaunchTemplate")
    if not spec:
        raise ProviderError(f"Auto Scaling group '{p.asg}' has no launch template (a mixed-instances policy or a "
                            "launch configuration): deployments need a launch template", permanent=True)
    ec2 = p._client("ec2")
    ident = {"LaunchTemplateId": spec["LaunchTemplateId"]} if spec.get("LaunchTemplateId") else \
        {"LaunchTemplateName": spec["LaunchTemplateName"]}
    found = p._call("describe the launch template", lambda: ec2.describe_launch_templates(
        **({"LaunchTemplateIds": [ident["LaunchTemplateId"]]} if "LaunchTemplateId" in ident else
           {"LaunchTemplateNames": [ident["LaunchTemplateName"]]})))["LaunchTemplates"][0]
    source = str(spec.get("Version") or "$Default")
    source = str(found["LatestVersionNumber"] if source == "$Latest" else
                 found["DefaultVersionNumber"] if source == "$Default" else source)
    script = base64.b64encode(user_data(entry, revision).encode()).decode()
    made = p._call("create a launch-template version", lambda: ec2.create_launch_template_version(
        LaunchTemplateId=found["LaunchTemplateId"], SourceVersion=source,
        VersionDescription=f"switchyard deployment revision {revision or '-'}",
        LaunchTemplateData={"UserData": script}))
    version = str(made["LaunchTemplateVersion"]["VersionNumber"])
    asg = p._client("autoscaling")
    p._call("point the group at the new launch-template version", lambda: asg.update_auto_scaling_group(
        AutoScalingGroupName=p.asg, LaunchTemplate={"LaunchTemplateId": found["LaunchTemplateId"],
                                                    "Version": version}))
    low, high = healthy_percentages(int(group["DesiredCapacity"]), entry["strategy"]["max_unavailable"],
                                    entry["strategy"]["max_surge"])
    started = p._call("start an instance refresh", lambda: asg.start_instance_refresh(
        AutoScalingGroupName=p.asg, Strategy="Rolling",
        Preferences={"MinHealthyPercentage": low, "MaxHealthyPercentage": high,
                     "InstanceWarmup": entry["strategy"]["drain_timeout_s"], "SkipMatching": True}))
    return str(started["InstanceRefreshId"])


def status(p: AwsProvider, refresh_id: str) -> RolloutStatus:
    resp = p._call("describe the instance refresh", lambda: p._client("autoscaling").describe_instance_refreshes(
        AutoScalingGroupName=p.asg, InstanceRefreshIds=[refresh_id]))
    refreshes = resp.get("InstanceRefreshes") or []
    if not refreshes:
        return RolloutStatus(False, f"instance refresh {refresh_id} of group '{p.asg}' is gone")
    r = refreshes[0]
    state = str(r.get("Status"))
    progress = f"{r.get('PercentageComplete', 0)}% complete ({state})"
    if state == "Successful":
        return RolloutStatus(True, "", progress)
    if state in FAILED:
        return RolloutStatus(False, f"the instance refresh ended {state}: {r.get('StatusReason') or 'no reason'}",
                             progress)
    return RolloutStatus(False, "", progress)
