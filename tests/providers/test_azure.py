"""The azure provider (the real azure-mgmt-compute client) against a local fake of Resource Manager over HTTPS."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from control.providers import registry
from control.providers.azure.provider import (
    CLIENT_ENV,
    ENDPOINT_ENV,
    SECRET_FILE_ENV,
    TENANT_ENV,
    TOKEN_FILE_ENV,
    AzureProvider,
)
from control.providers.base import Instance, Size
from tests.providers.conftest import closed_port_url, provider_error, wait_until, without_hanging
from tests.providers.fakes.azure import FakeArm, self_signed_cert

SUB = "5f2d0c9e-1b3a-4c8d-9e7f-0a1b2c3d4e5f"
TOKEN = "arm-token-xyz"


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed_cert(tmp_path_factory.mktemp("arm-tls"))


@pytest.fixture
def arm(cert: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeArm]:
    token = tmp_path / "token"
    token.write_text(TOKEN)
    for name in (TENANT_ENV, CLIENT_ENV, SECRET_FILE_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(TOKEN_FILE_ENV, str(token))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert[0]))  # trust the fake's throwaway certificate
    with FakeArm(*cert, subscription_id=SUB, resource_group="gpu-rg", vmss="gpuvmss", token=TOKEN,
                 capacity=2) as fake:
        monkeypatch.setenv(ENDPOINT_ENV, fake.url)
        yield fake


def provider(**config: object) -> AzureProvider:
    p = registry.get("azure", {"subscription_id": SUB, "resource_group": "gpu-rg", "vmss": "gpuvmss", **config})
    assert isinstance(p, AzureProvider)
    p.poll_interval_s = 0.05  # the fake's operations finish on their first poll
    return p


def test_scale_up_waits_for_the_operation_and_actual_follows_provisioning(arm: FakeArm) -> None:
    p = provider()
    assert p.current_size() == Size(2, 2)
    assert p.max_size == 1000  # not a single placement group
    arm.ready_after_s = 2  # long enough to see them provisioning on a loaded machine
    rid = p.set_desired_size(4)
    assert len(rid) == 36 and rid != "" and not rid.startswith("azure-")  # Azure's x-ms-request-id
    assert arm.capacity == 4
    assert any(m == "GET" and "/operations/" in path for m, path in arm.requests)  # it waited for the operation
    assert p.current_size() == Size(desired=4, actual=2)
    assert [i.state for i in p.list_instances()] == ["Succeeded", "Succeeded", "Creating", "Creating"]
    wait_until(lambda: p.current_size() == Size(4, 4), what="four provisioned instances")
    assert p.list_instances()[3] == Instance(id="3", node="gpuvmss000003", state="Succeeded")
    p.set_desired_size(4)  # the same capacity twice: harmless
    assert arm.capacity == 4 and arm.instance_ids() == ["0", "1", "2", "3"]


def test_scale_down_removes_the_highest_instance_ids(arm: FakeArm) -> None:
    p = provider()
    p.set_desired_size(5)
    p.set_desired_size(1)
    assert arm.capacity == 1 and arm.instance_ids() == ["0"] and p.current_size() == Size(1, 1)


def test_remove_instance_deletes_that_vm_and_lowers_the_capacity(arm: FakeArm) -> None:
    p = provider()
    p.set_desired_size(4)
    rid = p.remove_instance("1")
    assert "already-gone" not in rid
    assert arm.instance_ids() == ["0", "2", "3"] and arm.capacity == 3
    assert ("POST", "/subscriptions/" + SUB + "/resourceGroups/gpu-rg/providers/Microsoft.Compute/"
            "virtualMachineScaleSets/gpuvmss/delete") in arm.requests
    assert p.remove_instance("1").startswith("azure-already-gone-")
    assert p.remove_instance("77").startswith("azure-already-gone-")
    assert arm.instance_ids() == ["0", "2", "3"] and arm.capacity == 3  # nothing else removed


def test_an_operation_still_running_after_the_timeout_is_left_to_azure(arm: FakeArm) -> None:
    arm.hold_operations = True
    p = provider(timeout_s=0.5)
    rid = without_hanging(lambda: p.set_desired_size(3))
    assert isinstance(rid, str)
    assert len(rid) == 36 and arm.capacity == 3  # accepted: Azure carries it out


def test_a_failed_operation_is_an_error_and_quota_is_permanent(arm: FakeArm) -> None:
    p = provider()
    arm.fail_operations = ("QuotaExceeded", "Operation could not be completed as it results in exceeding approved "
                                            "standardNDSH100v5Family Cores quota.")
    err = provider_error(lambda: p.set_desired_size(6))
    assert err.permanent and "QuotaExceeded" in str(err) and "Cores quota" in str(err)
    arm.fail_operations = ("AllocationFailed", "Allocation failed. We do not have sufficient capacity.")
    err = provider_error(lambda: p.set_desired_size(6))
    assert not err.permanent and "AllocationFailed" in str(err)


def test_an_unknown_scale_set_is_permanent_and_names_it(arm: FakeArm) -> None:
    p = provider(vmss="nope")
    for call in (p.current_size, lambda: p.set_desired_size(3), p.list_instances, lambda: p.remove_instance("0")):
        err = provider_error(call)
        assert err.permanent
        assert str(err).startswith(f"VM scale set 'nope' in resource group 'gpu-rg' not found in subscription {SUB} "
                                   "(ResourceNotFound: The Resource 'Microsoft.Compute/virtualMachineScaleSets/nope' "
                                   "under resource group 'gpu-rg' was not found.); check the pool's provider config")


@pytest.mark.parametrize("status", [429, 500, 503])
def test_throttling_and_server_errors_are_errors_to_retry(arm: FakeArm, status: int) -> None:
    p = provider()
    arm.fail(status, method="PATCH")
    err = provider_error(lambda: p.set_desired_size(3))
    assert not err.permanent
    assert f"Azure could not set the capacity to 3 for VM scale set 'gpuvmss' in resource group 'gpu-rg' now " \
           f"({status}" in str(err)
    assert arm.capacity == 2
    arm.heal()
    p.set_desired_size(3)
    assert arm.capacity == 3


def test_forbidden_is_permanent_and_says_which_role(arm: FakeArm) -> None:
    arm.fail(403, method="POST")
    p = provider()
    err = provider_error(lambda: p.remove_instance("0"))
    assert err.permanent and "the controller may not delete instance 0" in str(err)
    assert "Virtual Machine Contributor" in str(err)
    assert arm.instance_ids() == ["0", "1"]


def test_a_wrong_token_is_permanent(arm: FakeArm) -> None:
    arm.token = "another"
    err = provider_error(lambda: provider().current_size())
    assert err.permanent
    assert str(err).startswith("Azure refused the controller's credentials to read the scale set "
                               "(InvalidAuthenticationToken: The access token is invalid.)")


def test_resource_manager_down_is_an_error_to_retry(arm: FakeArm, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENDPOINT_ENV, closed_port_url("https"))
    err = provider_error(lambda: provider(timeout_s=1).current_size())
    assert not err.permanent and str(err).startswith("cannot reach Azure Resource Manager to read the scale set")


def test_an_untrusted_certificate_is_permanent(arm: FakeArm, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REQUESTS_CA_BUNDLE")
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    err = provider_error(lambda: provider().current_size())
    assert err.permanent and "TLS certificate is not trusted" in str(err) and "REQUESTS_CA_BUNDLE" in str(err)


def test_a_plain_http_endpoint_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENDPOINT_ENV, "http://127.0.0.1:1")
    err = provider_error(lambda: provider().current_size())
    assert err.permanent and str(err) == (f"{ENDPOINT_ENV} must be an https:// URL (azure-core sends bearer tokens "
                                          "over TLS only), got 'http://127.0.0.1:1'")


def test_credentials_come_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in (TOKEN_FILE_ENV, TENANT_ENV, CLIENT_ENV, SECRET_FILE_ENV):
        monkeypatch.delenv(name, raising=False)
    err = provider_error(lambda: provider().current_size())
    assert err.permanent and str(err) == (f"no Azure credentials: set {TENANT_ENV}, {CLIENT_ENV} and "
                                          f"{SECRET_FILE_ENV} for a service principal, or {TOKEN_FILE_ENV}")
    monkeypatch.setenv(TENANT_ENV, "tenant")
    err = provider_error(lambda: provider().current_size())
    assert f"(missing {CLIENT_ENV}, {SECRET_FILE_ENV})" in str(err)
    monkeypatch.setenv(CLIENT_ENV, "client")
    monkeypatch.setenv(SECRET_FILE_ENV, str(tmp_path / "missing"))
    err = provider_error(lambda: provider().current_size())
    assert err.permanent and f"cannot read the Azure client secret file {tmp_path / 'missing'}" in str(err)
    (tmp_path / "secret").write_text("s3cret\n")
    monkeypatch.setenv(SECRET_FILE_ENV, str(tmp_path / "secret"))
    from azure.identity import ClientSecretCredential

    credential = provider()._credential()
    assert isinstance(credential, ClientSecretCredential)
    monkeypatch.setenv(TENANT_ENV, "not a tenant!")
    err = provider_error(lambda: provider().current_size())
    assert err.permanent and str(err).startswith(f"{TENANT_ENV} or {CLIENT_ENV} is not usable: ")


def test_config() -> None:
    assert registry.validate_config("azure", {"subscription_id": SUB, "resource_group": "gpu-rg",
                                              "vmss": "gpuvmss"}) == {
        "subscription_id": SUB, "resource_group": "gpu-rg", "vmss": "gpuvmss", "timeout_s": 30.0}
    with pytest.raises(registry.ConfigError) as info:
        registry.validate_config("azure", {"subscription_id": "my-sub", "vmss": "a b", "client_secret": "x",
                                           "location": "eastus"})
    assert info.value.fields == {
        "subscription_id": "must be a subscription id such as 00000000-0000-0000-0000-000000000000, got 'my-sub'",
        "resource_group": "required: the scale set's resource group",
        "vmss": "must be a scale set name (1-64 letters, digits, '-', '_' or '.'), got 'a b'",
        "client_secret": "looks like a secret: the pool's config is stored in the database and shown to operators, "
                         "so it must hold none; set SWITCHYARD_AZURE_TENANT_ID, SWITCHYARD_AZURE_CLIENT_ID and "
                         "SWITCHYARD_AZURE_CLIENT_SECRET_FILE (a file holding the service principal's secret), or "
                         "SWITCHYARD_AZURE_TOKEN_FILE",
        "location": "unknown key; allowed: subscription_id, resource_group, vmss, timeout_s",
    }
