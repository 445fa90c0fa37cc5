"""The aws provider against moto's server: a real HTTP server in a subprocess, spoken to by real boto3 clients."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import boto3
import httpx
import pytest

from control.providers import registry
from control.providers.aws.provider import ENDPOINT_ENV, AwsProvider
from control.providers.base import Size
from tests.providers.conftest import closed_port_url, provider_error, without_hanging

CREDS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, "moto's server exited"
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "moto's server did not start within 30 s"
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.kill()  # an emulator with nothing to save; SIGTERM costs werkzeug a second
        proc.wait(10)


@pytest.fixture
def aws(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A clean moto, and an environment where the provider finds moto and test credentials and nothing else."""
    httpx.post(f"{moto_url}/moto-api/reset", timeout=10).raise_for_status()
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv(ENDPOINT_ENV, moto_url)
    yield moto_url


def make_group(url: str, name: str = "gpu-pool", desired: int = 2, low: int = 0, high: int = 10) -> Any:
    ec2 = boto3.client("ec2", endpoint_url=url, **CREDS)
    ec2.create_launch_template(LaunchTemplateName=f"{name}-lt",
                               LaunchTemplateData={"ImageId": "ami-12c6146b", "InstanceType": "p5.48xlarge"})
    asg = boto3.client("autoscaling", endpoint_url=url, **CREDS)
    asg.create_auto_scaling_group(AutoScalingGroupName=name, LaunchTemplate={"LaunchTemplateName": f"{name}-lt"},
                                  MinSize=low, MaxSize=high, DesiredCapacity=desired,
                                  AvailabilityZones=["us-east-1a"])
    return asg


def group(asg: Any, name: str = "gpu-pool") -> dict[str, Any]:
    return asg.describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"][0]


def test_scale_up_and_down_sets_the_groups_desired_capacity(aws: str) -> None:
    asg = make_group(aws, desired=2)
    p = registry.get("aws", {"asg": "gpu-pool"})
    assert isinstance(p, AwsProvider)
    assert p.current_size() == Size(desired=2, actual=2)
    assert p.max_size == 10  # learned from the group
    rid = p.set_desired_size(5)
    assert len(rid) > 20  # AWS's own request id, to find the call in CloudTrail
    assert group(asg)["DesiredCapacity"] == 5
    assert p.current_size() == Size(5, 5)
    assert len(p.list_instances()) == 5
    assert p.set_desired_size(5) != rid and group(asg)["DesiredCapacity"] == 5  # the same size twice: harmless
    p.set_desired_size(1)
    assert group(asg)["DesiredCapacity"] == 1 and p.current_size() == Size(1, 1)


def test_over_the_groups_max_or_under_its_min_is_permanent_and_changes_nothing(aws: str) -> None:
    asg = make_group(aws, desired=2, low=1, high=3)
    p = AwsProvider(asg="gpu-pool")
    err = provider_error(lambda: p.set_desired_size(4))
    assert err.permanent
    assert str(err) == ("cannot scale Auto Scaling group 'gpu-pool' to 4: its MaxSize is 3; raise the group's "
                        "MaxSize or lower the pool's max_nodes")
    err = provider_error(lambda: p.set_desired_size(0))
    assert err.permanent and "its MinSize is 1; lower the group's MinSize or raise the pool's min_nodes" in str(err)
    assert group(asg)["DesiredCapacity"] == 2
    p.set_desired_size(3)  # the max itself is allowed
    assert group(asg)["DesiredCapacity"] == 3


def test_list_instances_names_nodes_by_tag_and_remove_instance_removes_that_one(aws: str) -> None:
    asg = make_group(aws, desired=3)
    ids = [i["InstanceId"] for i in group(asg)["Instances"]]
    boto3.client("ec2", endpoint_url=aws, **CREDS).create_tags(
        Resources=[ids[1]], Tags=[{"Key": "switchyard:node", "Value": "gpu-aws-7"}])
    p = AwsProvider(asg="gpu-pool")
    listed = {i.id: (i.node, i.state) for i in p.list_instances()}
    assert listed == {ids[0]: (ids[0], "InService"), ids[1]: ("gpu-aws-7", "InService"),
                      ids[2]: (ids[2], "InService")}
    rid = p.remove_instance(ids[1])
    assert "already-gone" not in rid
    after = group(asg)
    assert after["DesiredCapacity"] == 2  # lowered with it, so no replacement is launched
    assert {i["InstanceId"] for i in after["Instances"]} == {ids[0], ids[2]}
    again = p.remove_instance(ids[1])
    assert again.startswith("aws-already-gone-")
    assert group(asg)["DesiredCapacity"] == 2  # nothing else removed
    assert p.remove_instance("i-0123456789abcdef0").startswith("aws-already-gone-")


def test_remove_instance_never_touches_another_groups_instance(aws: str) -> None:
    make_group(aws, name="gpu-pool", desired=1)
    other = make_group(aws, name="other", desired=2)
    theirs = group(other, "other")["Instances"][0]["InstanceId"]
    assert AwsProvider(asg="gpu-pool").remove_instance(theirs).startswith("aws-already-gone-")
    assert group(other, "other")["DesiredCapacity"] == 2 and len(group(other, "other")["Instances"]) == 2


def test_removing_below_the_groups_min_is_permanent(aws: str) -> None:
    asg = make_group(aws, desired=1, low=1)
    only = group(asg)["Instances"][0]["InstanceId"]
    err = provider_error(lambda: AwsProvider(asg="gpu-pool").remove_instance(only))
    assert err.permanent and "would go below its MinSize 1; lower the group's MinSize" in str(err)
    assert len(group(asg)["Instances"]) == 1


def test_an_unknown_group_is_permanent_and_names_it(aws: str) -> None:
    p = AwsProvider(asg="nope", region="eu-west-1")
    for call in (p.current_size, lambda: p.set_desired_size(1), p.list_instances, lambda: p.remove_instance("i-1")):
        err = provider_error(call)
        assert err.permanent
        assert str(err) == "Auto Scaling group 'nope' not found in eu-west-1; check the pool's provider config"


def test_aws_down_is_an_error_to_retry(aws: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENDPOINT_ENV, closed_port_url())
    err = provider_error(lambda: without_hanging(AwsProvider(asg="gpu-pool", timeout_s=1).current_size))
    assert not err.permanent and "cannot reach AWS Auto Scaling in us-east-1 to describe the group" in str(err)


def test_no_credentials_is_permanent_and_says_where_they_come_from(aws: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    err = provider_error(lambda: AwsProvider(asg="gpu-pool").current_size())
    assert err.permanent
    assert "no usable AWS credentials to describe the group" in str(err)
    assert "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)" in str(err)


def test_config() -> None:
    assert registry.validate_config("aws", {"asg": "gpu-pool"}) == {"asg": "gpu-pool", "region": "us-east-1",
                                                                   "timeout_s": 10.0}
    with pytest.raises(registry.ConfigError) as info:
        registry.validate_config("aws", {"region": "Mars", "aws_secret_access_key": "x", "zone": "a"})
    assert info.value.fields == {
        "asg": "required: the Auto Scaling group's name",
        "region": "must be an AWS region such as us-east-1, got 'Mars'",
        "aws_secret_access_key": "looks like a secret: the pool's config is stored in the database and shown to "
                                 "operators, so it must hold none; set the standard AWS environment "
                                 "(AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE) or give the "
                                 "controller an instance role",
        "zone": "unknown key; allowed: asg, region, timeout_s",
    }
    with pytest.raises(registry.ConfigError) as info:
        registry.validate_config("aws", {"asg": 7, "timeout_s": "fast"})
    assert info.value.fields == {"asg": "must be a string, got 7", "timeout_s": "must be a number, got 'fast'"}
