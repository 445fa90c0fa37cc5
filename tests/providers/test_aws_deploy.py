"""A deployment applied through the aws provider (real boto3) against moto's server: a launch-template version
whose user data starts the engine with the entry's arguments, the group moved to it, and an instance refresh with
the entry's healthy percentages. moto (5.2) has no instance refreshes, so StartInstanceRefresh and
DescribeInstanceRefreshes are answered by a recorder at botocore's before-call hook (what was asked is asserted);
every other call goes to moto."""

from __future__ import annotations

import base64
from typing import Any

import boto3
import pytest

from control.policy.schemas import validate
from control.providers import registry
from control.providers.aws.deploy import healthy_percentages, user_data
from control.providers.aws.provider import AwsProvider
from tests.providers.conftest import provider_error
from tests.providers.test_aws import CREDS, aws, make_group, moto_url  # noqa: F401  (fixtures)

ENTRY = {"model": "meta-llama/Llama-3.1-8B-Instruct", "params_b": 8, "tensor_parallel_size": 8,
         "quantization": "fp8", "max_model_len": 8192, "extra_args": ["--max-num-seqs", "128"],
         "gpus_per_node": 8, "gpu_memory_gb": 80, "strategy": {"max_surge": 1, "max_unavailable": 1}}


def entry(**over: Any) -> dict[str, Any]:
    return validate("deployment", {"pools": {"a": {**ENTRY, **over}}})["pools"]["a"]


class _Http:
    status_code = 200
    headers: dict[str, str] = {}


class Refreshes:
    """Answers the instance-refresh calls moto lacks, recording their parameters."""

    def __init__(self, statuses: list[dict[str, Any]]) -> None:
        self.started: list[dict[str, Any]] = []
        self.statuses = statuses

    def record(self, params: dict[str, Any], **_: Any) -> None:
        self.started.append(dict(params))  # the call's own parameters, before they are serialised

    def start(self, **_: Any) -> tuple[Any, dict[str, Any]]:
        return _Http(), {"InstanceRefreshId": "8a1b2c3d-refresh", "ResponseMetadata": {"HTTPStatusCode": 200}}

    def check(self, params: dict[str, Any], **_: Any) -> None:
        assert params["InstanceRefreshIds"] == ["8a1b2c3d-refresh"] and params["AutoScalingGroupName"]

    def describe(self, **_: Any) -> tuple[Any, dict[str, Any]]:
        current = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        return _Http(), {"InstanceRefreshes": [{"InstanceRefreshId": "8a1b2c3d-refresh", **current}],
                         "ResponseMetadata": {"HTTPStatusCode": 200}}

    def attach(self, p: AwsProvider) -> None:
        events = p._client("autoscaling").meta.events
        events.register("before-parameter-build.auto-scaling.StartInstanceRefresh", self.record)
        events.register("before-call.auto-scaling.StartInstanceRefresh", self.start)
        events.register("before-parameter-build.auto-scaling.DescribeInstanceRefreshes", self.check)
        events.register("before-call.auto-scaling.DescribeInstanceRefreshes", self.describe)


def test_apply_makes_a_launch_template_version_and_starts_a_refresh(aws: str) -> None:  # noqa: F811
    make_group(aws, desired=4)
    p = registry.get("aws", {"asg": "gpu-pool"})
    assert isinstance(p, AwsProvider)
    refreshes = Refreshes([{"Status": "InProgress", "PercentageComplete": 50},
                           {"Status": "Successful", "PercentageComplete": 100}])
    refreshes.attach(p)
    rid = p.apply_deployment(entry(), 17)
    assert rid == "8a1b2c3d-refresh"
    ec2 = boto3.client("ec2", endpoint_url=aws, **CREDS)
    versions = ec2.describe_launch_template_versions(LaunchTemplateName="gpu-pool-lt")["LaunchTemplateVersions"]
    newest = max(versions, key=lambda v: v["VersionNumber"])
    assert newest["VersionNumber"] == 2 and newest["VersionDescription"] == "switchyard deployment revision 17"
    script = base64.b64decode(newest["LaunchTemplateData"]["UserData"]).decode()
    assert script == user_data(entry(), 17)
    assert ("vllm/vllm-openai:latest --model meta-llama/Llama-3.1-8B-Instruct --tensor-parallel-size 8 "
            "--pipeline-parallel-size 1 --max-model-len 8192 --gpu-memory-utilization 0.9 --quantization fp8 "
            "--enable-prefix-caching --max-num-seqs 128") in script
    group = boto3.client("autoscaling", endpoint_url=aws, **CREDS).describe_auto_scaling_groups(
        AutoScalingGroupNames=["gpu-pool"])["AutoScalingGroups"][0]
    assert group["LaunchTemplate"]["Version"] == "2"
    # 4 instances, 1 unavailable: 75 % must stay healthy; 1 surge: up to 125 %.
    [started] = refreshes.started
    assert started["AutoScalingGroupName"] == "gpu-pool" and started["Strategy"] == "Rolling"
    assert started["Preferences"]["MinHealthyPercentage"] == 75
    assert started["Preferences"]["MaxHealthyPercentage"] == 125
    first = p.deployment_status(rid)
    assert not first.done and first.progress == "50% complete (InProgress)"
    assert p.deployment_status(rid).done


def test_a_failed_refresh_is_reported(aws: str) -> None:  # noqa: F811
    make_group(aws, desired=2)
    p = registry.get("aws", {"asg": "gpu-pool"})
    assert isinstance(p, AwsProvider)
    refreshes = Refreshes([{"Status": "Failed", "PercentageComplete": 0,
                            "StatusReason": "instances failed their health checks"}])
    refreshes.attach(p)
    status = p.deployment_status(p.apply_deployment(entry(engine="sglang"), 3))
    assert not status.done and status.failed == ("the instance refresh ended Failed: instances failed their health "
                                                 "checks")


def test_a_group_that_does_not_exist_is_a_permanent_error(aws: str) -> None:  # noqa: F811
    err = provider_error(lambda: registry.get("aws", {"asg": "nope"}).apply_deployment(entry(), 1))
    assert err.permanent and "'nope' not found" in err.message


@pytest.mark.parametrize(("desired", "unavailable", "surge", "expected"), [
    (4, 1, 1, (75, 125)), (6, 1, 0, (83, 100)), (2, 2, 0, (0, 100)), (3, 0, 1, (100, 134)), (0, 1, 1, (100, 100)),
    (1, 1, 5, (0, 100)),
])
def test_healthy_percentages(desired: int, unavailable: int, surge: int, expected: tuple[int, int]) -> None:
    assert healthy_percentages(desired, unavailable, surge) == expected


def test_the_user_data_quotes_every_argument_and_runs_sglang_whole() -> None:
    script = user_data(entry(engine="sglang", image="lmsysorg/sglang:v0.4.1"), None)
    assert "lmsysorg/sglang:v0.4.1 python3 -m sglang.launch_server --model-path" in script
    assert script.startswith("#!/bin/bash\n# switchyard deployment revision -\nset -euo pipefail\n")
