"""Scale an EC2 Auto Scaling group: desired capacity up and down, one instance out with the capacity lowered.

Credentials: boto3's standard chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, an instance role, ...).
SWITCHYARD_AWS_ENDPOINT_URL points both clients at an emulator (moto's server, LocalStack).
IAM: autoscaling:DescribeAutoScalingGroups, autoscaling:SetDesiredCapacity,
autoscaling:TerminateInstanceInAutoScalingGroup, and ec2:DescribeInstances for the node-name tags (optional).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.parsers import ResponseParserError

from control.providers.aws import deploy
from control.providers.base import Instance, Provider, ProviderError, RolloutStatus, Size, request_id

log = logging.getLogger(__name__)
T = TypeVar("T")

ENDPOINT_ENV = "SWITCHYARD_AWS_ENDPOINT_URL"
NODE_TAG = "switchyard:node"  # set on each instance (say, by its user data) to the Switchyard node name it runs
IN_SERVICE = "InService"
TRANSIENT_CODES = {"Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequestsException",
                   "ScalingActivityInProgress", "ResourceContention", "ServiceUnavailable", "InternalFailure",
                   "InternalError", "RequestTimeout"}
CREDENTIAL_CODES = {"InvalidClientTokenId", "SignatureDoesNotMatch", "UnrecognizedClientException", "AuthFailure",
                    "ExpiredToken", "ExpiredTokenException", "InvalidAccessKeyId"}
DENIED_CODES = {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation"}


class AwsProvider(Provider):
    kind = "aws"
    rolls_out_itself = True  # an instance refresh (deploy.py)

    def __init__(self, asg: str, region: str = "us-east-1", timeout_s: float = 10.0) -> None:
        self.asg = asg
        self.region = region
        self.timeout_s = timeout_s
        self.max_size = None  # the group's MaxSize, learned on every read of the group
        self._lock = threading.Lock()
        self._clients: dict[str, Any] = {}

    def _client(self, service: str) -> Any:
        with self._lock:  # boto3 sessions are not thread-safe; clients are
            if service not in self._clients:
                config = Config(connect_timeout=self.timeout_s, read_timeout=self.timeout_s,
                                # one retry at most: the controller's loop is the retry, with its own backoff
                                retries={"max_attempts": 2, "mode": "standard"})
                session = boto3.session.Session(region_name=self.region)
                self._clients[service] = session.client(service, config=config,
                                                        endpoint_url=os.environ.get(ENDPOINT_ENV) or None)
            return self._clients[service]

    def _call(self, action: str, fn: Callable[[], T]) -> T:
        """Run one API call, turning every failure into a ProviderError that says whether to retry and what to fix."""
        try:
            return fn()
        except (NoCredentialsError, PartialCredentialsError) as exc:
            raise ProviderError(f"no usable AWS credentials to {action} ({exc}): set AWS_ACCESS_KEY_ID and "
                                "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) for the controller, or give it an instance "
                                "role", permanent=True) from None
        except ClientError as exc:
            raise self._client_error(action, exc) from None
        except (ConnectionError, HTTPClientError) as exc:  # refused, DNS, connect/read timeouts
            raise ProviderError(f"cannot reach AWS Auto Scaling in {self.region} to {action}: {exc}") from None
        except ResponseParserError:  # an HTML error page (a proxy, an emulator's crash): not an AWS answer
            raise ProviderError(f"AWS Auto Scaling in {self.region} gave an unreadable answer to {action}; "
                                "retrying") from None
        except BotoCoreError as exc:
            raise ProviderError(f"AWS call to {action} failed: {exc}") from None

    def _client_error(self, action: str, exc: ClientError) -> ProviderError:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        message = str(error.get("Message", "")) or str(exc)
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        where = f"Auto Scaling group '{self.asg}' in {self.region}"
        if code in TRANSIENT_CODES or status >= 500 or status == 429:
            return ProviderError(f"AWS could not {action} for {where} now ({code}: {message}); retrying")
        if code in CREDENTIAL_CODES:
            return ProviderError(f"AWS refused the controller's credentials ({code}: {message}); check "
                                 "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE", permanent=True)
        if code in DENIED_CODES:
            return ProviderError(f"the controller's AWS identity may not {action} for {where} ({code}: {message}); "
                                 f"grant it {exc.operation_name} (docs/providers.md lists the IAM actions)",
                                 permanent=True)
        return ProviderError(f"AWS refused to {action} for {where} ({code}: {message}); check the pool's provider "
                             "config", permanent=True)

    def _group(self) -> dict[str, Any]:
        resp = self._call("describe the group", lambda: self._client("autoscaling").describe_auto_scaling_groups(
            AutoScalingGroupNames=[self.asg]))
        groups = resp.get("AutoScalingGroups") or []
        if not groups:
            raise ProviderError(f"Auto Scaling group '{self.asg}' not found in {self.region}; check the pool's "
                                "provider config", permanent=True)
        group = groups[0]
        self.max_size = int(group["MaxSize"])
        return group

    # -- the interface --------------------------------------------------------------------------------------

    def current_size(self) -> Size:
        group = self._group()
        ready = sum(1 for i in group.get("Instances", [])
                    if i.get("LifecycleState") == IN_SERVICE and i.get("HealthStatus", "Healthy") == "Healthy")
        return Size(desired=int(group["DesiredCapacity"]), actual=ready)

    def set_desired_size(self, n: int) -> str:
        self._check_size(n)
        group = self._group()
        # AWS refuses a capacity outside [MinSize, MaxSize] with a terse ValidationError (and emulators do not check
        # at all), so say here what to change.
        low, high = int(group["MinSize"]), int(group["MaxSize"])
        if n > high:
            raise ProviderError(f"cannot scale Auto Scaling group '{self.asg}' to {n}: its MaxSize is {high}; raise "
                                "the group's MaxSize or lower the pool's max_nodes", permanent=True)
        if n < low:
            raise ProviderError(f"cannot scale Auto Scaling group '{self.asg}' to {n}: its MinSize is {low}; lower "
                                "the group's MinSize or raise the pool's min_nodes", permanent=True)
        # HonorCooldown=False: the controller keeps its own cooldowns; the group's would silently drop the request.
        resp = self._call(f"set the desired capacity to {n}", lambda: self._client("autoscaling").set_desired_capacity(
            AutoScalingGroupName=self.asg, DesiredCapacity=n, HonorCooldown=False))
        return str(resp["ResponseMetadata"]["RequestId"])

    def list_instances(self) -> list[Instance]:
        members = self._group().get("Instances", [])
        names = self._node_names([m["InstanceId"] for m in members])
        return [Instance(id=m["InstanceId"], node=names.get(m["InstanceId"], m["InstanceId"]),
                         state=str(m.get("LifecycleState"))) for m in members]

    def _node_names(self, ids: list[str]) -> dict[str, str]:
        """Each instance's `switchyard:node` tag. Without ec2:DescribeInstances the ids stand in: listing and
        removing still work, only the names are the ids."""
        if not ids:
            return {}
        try:
            resp = self._call("read the instances' tags", lambda: self._client("ec2").describe_instances(
                InstanceIds=ids))
        except ProviderError as exc:
            if not exc.permanent:
                raise
            log.warning("aws %s: instance tags unreadable, using instance ids as node names: %s", self.asg, exc)
            return {}
        names: dict[str, str] = {}
        for reservation in resp.get("Reservations", []):
            for inst in reservation.get("Instances", []):
                for tag in inst.get("Tags") or []:
                    if tag.get("Key") == NODE_TAG and tag.get("Value"):
                        names[inst["InstanceId"]] = tag["Value"]
        return names

    def remove_instance(self, instance_id: str) -> str:
        group = self._group()
        member = next((i for i in group.get("Instances", []) if i["InstanceId"] == instance_id), None)
        # Not a member (gone already, or never this group's: terminating it would shrink another group) or already
        # terminating (a retried call): the goal is met, and lowering the capacity again would remove another.
        if member is None or str(member.get("LifecycleState", "")).startswith("Terminat"):
            return request_id("aws", "already-gone")
        if int(group["DesiredCapacity"]) - 1 < int(group["MinSize"]):
            raise ProviderError(f"cannot remove {instance_id} from Auto Scaling group '{self.asg}': the group would "
                                f"go below its MinSize {group['MinSize']}; lower the group's MinSize",
                                permanent=True)
        resp = self._call(f"terminate instance {instance_id}",
                          lambda: self._client("autoscaling").terminate_instance_in_auto_scaling_group(
                              InstanceId=instance_id, ShouldDecrementDesiredCapacity=True))
        return str(resp["ResponseMetadata"]["RequestId"])


    def apply_deployment(self, entry: dict[str, Any], revision: int | None) -> str:
        """A launch-template version with the engine's user data, and an instance refresh (deploy.py)."""
        return deploy.apply(self, entry, revision)

    def deployment_status(self, request_id: str) -> RolloutStatus:
        return deploy.status(self, request_id)


PROVIDER = AwsProvider
