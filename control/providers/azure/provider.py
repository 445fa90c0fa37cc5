"""Scale an Azure virtual machine scale set (Uniform orchestration): its sku capacity, its VMs as the instances.

Credentials, from the environment only: a service principal (SWITCHYARD_AZURE_TENANT_ID, SWITCHYARD_AZURE_CLIENT_ID,
SWITCHYARD_AZURE_CLIENT_SECRET_FILE: a file holding the secret), or a bearer token in SWITCHYARD_AZURE_TOKEN_FILE
(re-read for every request; for fakes, or a token minted elsewhere). SWITCHYARD_AZURE_ENDPOINT replaces the Resource
Manager URL (a sovereign cloud, Azure Stack Hub, a fake); it must be https, since azure-core sends bearer tokens over
TLS only, and a private CA is trusted through REQUESTS_CA_BUNDLE.

Long-running operations (the capacity update, deleting an instance) are waited for up to timeout_s: a failed one is
an error; one still running after that is left to Azure and the call returns its request id (the controller sees
the outcome in current_size).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

from azure.core.credentials import AccessToken
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.polling import LROPoller
from azure.mgmt.compute import ComputeManagementClient
from azure.mgmt.compute.models import Sku, VirtualMachineScaleSetUpdate, VirtualMachineScaleSetVMInstanceRequiredIDs

from control.providers.base import Instance, Provider, ProviderError, Size, read_secret_file, request_id

T = TypeVar("T")

TENANT_ENV = "SWITCHYARD_AZURE_TENANT_ID"
CLIENT_ENV = "SWITCHYARD_AZURE_CLIENT_ID"
SECRET_FILE_ENV = "SWITCHYARD_AZURE_CLIENT_SECRET_FILE"
TOKEN_FILE_ENV = "SWITCHYARD_AZURE_TOKEN_FILE"
ENDPOINT_ENV = "SWITCHYARD_AZURE_ENDPOINT"
DEFAULT_ENDPOINT = "https://management.azure.com"
SUCCEEDED = "Succeeded"
# Codes of failed requests or operations that retrying cannot fix (quota, a bad request, a SKU not offered there).
PERMANENT_CODES = {"QuotaExceeded", "OperationNotAllowed", "InvalidParameter", "BadRequest", "SkuNotAvailable",
                   "AuthorizationFailed", "LinkedAuthorizationFailed", "InvalidRequestContent"}
RBAC_HINT = ("give the controller's identity the Virtual Machine Contributor role on the scale set (or "
             "Microsoft.Compute/virtualMachineScaleSets/read, write, delete/action and virtualMachines/read)")


class Gone(Exception):
    """A 404 where the caller expects one (the instance went away)."""


class TokenFileCredential:
    """A bearer token read from a file for each request (so a token rotated on disk is picked up at once)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        # Five minutes ahead is inside azure-core's refresh margin: it asks again for every request.
        return AccessToken(read_secret_file(self.path, TOKEN_FILE_ENV, "Azure token"), int(time.time()) + 300)


class AzureProvider(Provider):
    kind = "azure"
    serving_states = ("Succeeded",)
    failed_states = ("Failed",)
    poll_interval_s = 5.0  # between polls of an operation when Azure's answer carries no Retry-After

    def __init__(self, subscription_id: str, resource_group: str, vmss: str, timeout_s: float = 30.0) -> None:
        self.subscription_id = subscription_id
        self.resource_group = resource_group
        self.vmss = vmss
        self.timeout_s = timeout_s
        self.max_size = None  # learned on every read: 100 in a single placement group, else 1000
        self._client: ComputeManagementClient | None = None

    # -- connection -----------------------------------------------------------------------------------------

    def _credential(self) -> Any:
        token_file = os.environ.get(TOKEN_FILE_ENV)
        if token_file:
            return TokenFileCredential(token_file)
        names = (TENANT_ENV, CLIENT_ENV, SECRET_FILE_ENV)
        values = {name: os.environ.get(name) for name in names}
        missing = [name for name, value in values.items() if not value]
        if missing:
            given = "" if len(missing) == 3 else f" (missing {', '.join(missing)})"
            raise ProviderError(f"no Azure credentials{given}: set {TENANT_ENV}, {CLIENT_ENV} and {SECRET_FILE_ENV} "
                                f"for a service principal, or {TOKEN_FILE_ENV}", permanent=True)
        from azure.identity import ClientSecretCredential  # only when used: it pulls in msal

        secret = read_secret_file(str(values[SECRET_FILE_ENV]), SECRET_FILE_ENV, "Azure client secret")
        try:
            return ClientSecretCredential(str(values[TENANT_ENV]), str(values[CLIENT_ENV]), secret)
        except ValueError as exc:  # a malformed tenant id
            raise ProviderError(f"{TENANT_ENV} or {CLIENT_ENV} is not usable: {exc}", permanent=True) from None

    def _compute(self) -> ComputeManagementClient:
        if self._client is None:
            endpoint = (os.environ.get(ENDPOINT_ENV) or DEFAULT_ENDPOINT).rstrip("/")
            if not endpoint.startswith("https://"):
                raise ProviderError(f"{ENDPOINT_ENV} must be an https:// URL (azure-core sends bearer tokens over TLS "
                                    f"only), got {endpoint!r}", permanent=True)
            self._client = ComputeManagementClient(
                self._credential(), self.subscription_id, base_url=endpoint,
                credential_scopes=[f"{endpoint}/.default"],  # a sovereign cloud's tokens are for its own endpoint
                connection_timeout=self.timeout_s, read_timeout=self.timeout_s,
                # one retry at once at most: the controller's loop is the real retry, with its own backoff
                retry_total=1, retry_backoff_factor=0.2, retry_backoff_max=2,
                polling_interval=self.poll_interval_s)
        return self._client

    def _where(self) -> str:
        return f"VM scale set '{self.vmss}' in resource group '{self.resource_group}'"

    def _call(self, action: str, fn: Callable[[], T], gone_ok: bool = False) -> T:
        try:
            return fn()
        except ProviderError:
            raise
        except HttpResponseError as exc:
            if gone_ok and exc.status_code == 404:
                raise Gone() from None
            raise self._http_error(action, exc) from None
        except ClientAuthenticationError as exc:  # no status: the credential could not get a token
            raise ProviderError(f"could not get an Azure token to {action} ({_message(exc)}); check {TENANT_ENV}, "
                                f"{CLIENT_ENV} and {SECRET_FILE_ENV} (or {TOKEN_FILE_ENV})", permanent=True) from None
        except ServiceRequestError as exc:  # could not send: refused, DNS, TLS
            if "CERTIFICATE_VERIFY_FAILED" in str(exc):
                raise ProviderError(f"the Azure endpoint's TLS certificate is not trusted to {action}; for a private "
                                    "CA set REQUESTS_CA_BUNDLE", permanent=True) from None
            raise ProviderError(f"cannot reach Azure Resource Manager to {action}: {_message(exc)}") from None
        except ServiceResponseError as exc:  # sent, but no (complete) answer: a read timeout, a dropped connection
            raise ProviderError(f"Azure Resource Manager did not answer {action} within {self.timeout_s:g} s: "
                                f"{_message(exc)}") from None
        except AzureError as exc:
            raise ProviderError(f"Azure call to {action} failed: {_message(exc)}") from None

    def _http_error(self, action: str, exc: HttpResponseError) -> ProviderError:
        status = int(exc.status_code or 0)
        code = str(getattr(exc.error, "code", "") or "")
        message = _message(exc)
        if status == 404:
            return ProviderError(f"{self._where()} not found in subscription {self.subscription_id} ({message}); "
                                 "check the pool's provider config", permanent=True)
        if status == 401:
            return ProviderError(f"Azure refused the controller's credentials to {action} ({message}); check "
                                 f"{TENANT_ENV}, {CLIENT_ENV} and {SECRET_FILE_ENV} (or {TOKEN_FILE_ENV})",
                                 permanent=True)
        if status == 403:
            return ProviderError(f"the controller may not {action} for {self._where()} ({message}); {RBAC_HINT}",
                                 permanent=True)
        if code in PERMANENT_CODES or (400 <= status < 500 and status not in (408, 409, 429)):
            return ProviderError(f"Azure refused to {action} for {self._where()} ({message})", permanent=True)
        return ProviderError(f"Azure could not {action} for {self._where()} now ({status or code} {message}); "
                             "retrying")

    def _run(self, action: str, begin: Callable[[Callable[[Any], None]], LROPoller[Any]], gone_ok: bool = False) -> str:
        """Start a long-running operation, wait up to timeout_s for it, return its request id."""
        seen: list[str] = []

        def hook(response: Any) -> None:  # every response of the operation passes here (retries and polls too)
            if not seen and response.http_response.status_code < 400:  # the request that Azure accepted
                headers = response.http_response.headers
                seen.append(headers.get("x-ms-request-id") or headers.get("x-ms-correlation-request-id") or "")

        def start_and_wait() -> str:
            poller = begin(hook)
            poller.wait(self.timeout_s)  # raises what the operation failed with
            if poller.done():
                poller.result()
            return seen[0] if seen and seen[0] else request_id("azure")

        return self._call(action, start_and_wait, gone_ok)

    # -- the interface --------------------------------------------------------------------------------------

    def _vmss(self) -> Any:
        compute = self._compute()
        vmss = self._call("read the scale set", lambda: compute.virtual_machine_scale_sets.get(
            self.resource_group, self.vmss))
        if vmss.single_placement_group is not None:
            self.max_size = 100 if vmss.single_placement_group else 1000
        return vmss

    def _vms(self) -> list[Any]:
        compute = self._compute()
        return self._call("list the scale set's instances", lambda: list(
            compute.virtual_machine_scale_set_vms.list(self.resource_group, self.vmss)))

    def current_size(self) -> Size:
        desired = int((self._vmss().sku.capacity) or 0)
        return Size(desired=desired, actual=sum(1 for vm in self._vms() if vm.provisioning_state == SUCCEEDED))

    def set_desired_size(self, n: int) -> str:
        self._check_size(n)
        self._vmss()  # a missing scale set is a clear 404 here, and max_size is fresh
        if self.max_size is not None and n > self.max_size:
            raise ProviderError(f"cannot scale {self._where()} to {n}: it allows at most {self.max_size} instances; "
                                "lower the pool's max_nodes", permanent=True)
        compute = self._compute()
        update = VirtualMachineScaleSetUpdate(sku=Sku(capacity=n))
        return self._run(f"set the capacity to {n}", lambda hook: compute.virtual_machine_scale_sets.begin_update(
            self.resource_group, self.vmss, update, raw_response_hook=hook))

    def list_instances(self) -> list[Instance]:
        return [Instance(id=str(vm.instance_id), node=_computer_name(vm) or str(vm.instance_id),
                         state=str(vm.provisioning_state)) for vm in self._vms()]

    def remove_instance(self, instance_id: str) -> str:
        vm = next((v for v in self._vms() if str(v.instance_id) == str(instance_id)), None)
        # Not (or no longer) in the scale set, or being deleted already (a retried call): the goal is met.
        if vm is None or vm.provisioning_state == "Deleting":
            return request_id("azure", "already-gone")
        compute = self._compute()
        ids = VirtualMachineScaleSetVMInstanceRequiredIDs(instance_ids=[str(instance_id)])
        # Deleting instances lowers the scale set's capacity with them: no separate update.
        try:
            return self._run(f"delete instance {instance_id}",
                             lambda hook: compute.virtual_machine_scale_sets.begin_delete_instances(
                                 self.resource_group, self.vmss, ids, raw_response_hook=hook), gone_ok=True)
        except Gone:  # deleted between the listing and the request
            return request_id("azure", "already-gone")


    def restart_instances(self, instance_ids: list[str], entry: dict[str, Any], revision: int | None) -> str:
        """Put the entry's boot script in the scale set's model and upgrade these instances to it (deploy.py)."""
        from control.providers.azure import deploy

        return deploy.restart(self, instance_ids, entry, revision)


def _computer_name(vm: Any) -> str | None:
    return vm.os_profile.computer_name if vm.os_profile is not None else None


def _message(exc: AzureError) -> str:
    error = getattr(exc, "error", None)
    if error is not None and getattr(error, "message", None):
        code = getattr(error, "code", None)
        return f"{code}: {error.message}" if code else str(error.message)
    return str(exc.message if getattr(exc, "message", None) else exc).splitlines()[0]


PROVIDER = AzureProvider
