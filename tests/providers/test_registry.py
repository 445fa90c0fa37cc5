"""The registry: which kinds exist, config validation common to all of them, building a provider."""

from __future__ import annotations

import pytest

from control.providers import KINDS, ConfigError, Provider, get, validate_config
from control.providers.aws.provider import AwsProvider
from control.providers.azure.provider import AzureProvider
from control.providers.kubernetes.provider import KubernetesProvider
from control.providers.local.provider import LocalProvider

GOOD = {
    "local": {},
    "kubernetes": {"namespace": "gpu", "deployment": "vllm"},
    "aws": {"asg": "gpu-pool"},
    "azure": {"subscription_id": "5f2d0c9e-1b3a-4c8d-9e7f-0a1b2c3d4e5f", "resource_group": "rg", "vmss": "gpu"},
}


def test_kinds() -> None:
    assert KINDS == ("local", "kubernetes", "aws", "azure")


@pytest.mark.parametrize(("kind", "cls"), [("local", LocalProvider), ("kubernetes", KubernetesProvider),
                                           ("aws", AwsProvider), ("azure", AzureProvider)])
def test_get_builds_each_kind_without_connecting(kind: str, cls: type[Provider]) -> None:
    provider = get(kind, GOOD[kind])  # no server anywhere: building must not call out
    assert isinstance(provider, cls) and provider.kind == kind and provider.max_size is None


def test_an_unknown_kind() -> None:
    with pytest.raises(ConfigError) as info:
        validate_config("gcp", {})
    assert info.value.fields == {"kind": "unknown provider kind 'gcp'; use one of local, kubernetes, aws, azure"}
    with pytest.raises(ConfigError):
        get("gcp", {})


def test_a_config_that_is_not_an_object() -> None:
    with pytest.raises(ConfigError) as info:
        validate_config("aws", ["gpu-pool"])  # type: ignore[arg-type]
    assert info.value.fields == {"config": "must be a JSON object of settings, got list"}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("key", ["password", "client_secret", "token", "api_key", "AWS_SECRET_ACCESS_KEY",
                                 "credentials", "passwd"])
def test_secret_looking_keys_are_refused_for_every_kind(kind: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate_config(kind, {**GOOD[kind], key: "hunter2"})
    assert list(info.value.fields) == [key]
    message = info.value.fields[key]
    assert message.startswith("looks like a secret: the pool's config is stored in the database")
    assert "hunter2" not in message and "hunter2" not in str(info.value)  # the secret is never echoed back


def test_urls_must_not_carry_credentials() -> None:
    with pytest.raises(ConfigError) as info:
        validate_config("kubernetes", {**GOOD["kubernetes"], "api_url": "https://admin:hunter2@k8s.example:6443"})
    assert info.value.fields == {"api_url": "must not hold credentials (user:password@); they come from the "
                                            "environment or a secret file"}


def test_get_validates_and_a_config_error_is_a_value_error() -> None:
    with pytest.raises(ValueError) as info:
        get("aws", {"region": "us-east-1"})
    assert isinstance(info.value, ConfigError)
    assert str(info.value) == "asg: required: the Auto Scaling group's name"


def test_an_empty_string_is_unset() -> None:
    assert validate_config("local", {"profile": "", "url": "  "}) == validate_config("local", {})
    with pytest.raises(ConfigError) as info:
        validate_config("kubernetes", {"namespace": "", "deployment": " "})
    assert info.value.fields == {"namespace": "required: the Deployment's namespace",
                                 "deployment": "required: the Deployment's name"}


def test_validation_is_idempotent() -> None:
    for kind, config in GOOD.items():
        cleaned = validate_config(kind, config)
        assert validate_config(kind, cleaned) == cleaned  # what the controller stores validates again unchanged
