"""The local provider against a real simulated fleet and its control API (real HTTP, free ports)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from agents.sim.background import BackgroundFleet
from control.providers import registry
from control.providers.base import Instance, Size
from control.providers.local.provider import LocalProvider
from tests.providers.conftest import closed_port_url, provider_error, wait_until, without_hanging


@pytest.fixture
def fleet() -> Iterator[BackgroundFleet]:
    with BackgroundFleet(pool="lp", gpus=1, time_scale=20.0, seed=3, control_port=0) as f:
        yield f


def provider(fleet: BackgroundFleet, **config: object) -> LocalProvider:
    p = registry.get("local", {"url": fleet.control_url, **config})
    assert isinstance(p, LocalProvider)
    return p


def names(fleet: BackgroundFleet) -> list[str]:
    return [n.name for n in fleet.nodes]


def test_scale_up_boots_nodes_and_actual_catches_up(fleet: BackgroundFleet) -> None:
    p = provider(fleet, boot_delay_s=2, profile="l40s")  # long enough to see them booting on a loaded machine
    assert p.current_size() == Size(0, 0)
    rid = p.set_desired_size(3)
    assert rid.startswith("local-")
    assert p.current_size() == Size(desired=3, actual=0)  # asked for, still booting
    assert {i.state for i in p.list_instances()} == {"booting"}
    wait_until(lambda: p.current_size() == Size(3, 3), what="three nodes up")
    instances = p.list_instances()
    assert instances == [Instance(id=n, node=n, state="up") for n in names(fleet)]
    assert {n.profile for n in fleet.nodes} == {"l40s"}  # the pool's profile reached the fleet
    assert p.set_desired_size(3) != rid  # the same size again: harmless, nothing added, a new id
    assert len(fleet.nodes) == 3


def test_scale_down_removes_booting_then_failed_then_newest(fleet: BackgroundFleet) -> None:
    failed, up_old, up_new = (fleet.add_node(name=n).name for n in ("a-failed", "b-up", "c-up"))
    fleet.fail(failed, "error")
    p = provider(fleet, boot_delay_s=600)
    p.set_desired_size(5)  # two more, booting for ten minutes
    assert p.current_size() == Size(desired=5, actual=2)
    p.set_desired_size(3)
    assert names(fleet) == [failed, up_old, up_new]  # the booting ones went first
    p.set_desired_size(2)
    assert names(fleet) == [up_old, up_new]  # then the failed one, though older
    p.set_desired_size(1)
    assert names(fleet) == [up_old]  # then the newest
    p.set_desired_size(0)
    assert p.current_size() == Size(0, 0) and p.list_instances() == []


def test_remove_instance_removes_that_node_and_again_is_not_an_error(fleet: BackgroundFleet) -> None:
    for n in ("n1", "n2", "n3"):
        fleet.add_node(name=n)
    p = provider(fleet)
    rid = p.remove_instance("n2")
    assert rid.startswith("local-") and "already-gone" not in rid
    assert names(fleet) == ["n1", "n3"] and p.current_size() == Size(2, 2)
    again = p.remove_instance("n2")
    assert again.startswith("local-already-gone-")
    assert names(fleet) == ["n1", "n3"]  # nothing else removed


def test_the_control_api_down_is_an_error_to_retry() -> None:
    url = closed_port_url()
    err = provider_error(lambda: LocalProvider(url=url).current_size())
    assert not err.permanent
    assert f"cannot reach the simulated fleet's control API at {url} to list its nodes" in str(err)
    assert "is `manage.py simfleet` running there?" in str(err)
    assert not provider_error(lambda: LocalProvider(url=url).set_desired_size(2)).permanent


def test_a_hung_control_api_times_out_as_an_error_to_retry(silent_url: str) -> None:
    err = provider_error(lambda: without_hanging(LocalProvider(url=silent_url, timeout_s=0.3).current_size))
    assert not err.permanent and "did not answer list its nodes within 0.3 s" in str(err)


def test_a_profile_the_fleet_does_not_know_is_permanent_and_says_why(fleet: BackgroundFleet) -> None:
    p = provider(fleet, profile="tpu")  # the shape is fine; only the fleet knows its profiles
    err = provider_error(lambda: p.set_desired_size(1))
    assert err.permanent
    assert str(err) == ("the simulated fleet refused to add a node: 400 profile must be one of h100, a100, l40s, "
                        "mixed, got 'tpu'; check the pool's provider config")
    assert fleet.nodes == []


def test_negative_sizes_are_refused_before_any_call() -> None:
    err = provider_error(lambda: LocalProvider(url=closed_port_url()).set_desired_size(-1))
    assert err.permanent and "0 or more; got -1" in str(err)


def test_config_defaults_and_bad_values() -> None:
    assert registry.validate_config("local", {}) == {"url": "http://127.0.0.1:8399", "boot_delay_s": 30.0,
                                                     "timeout_s": 5.0}
    assert registry.validate_config("local", {"url": " http://sim:8399/ ", "profile": "mixed", "boot_delay_s": 0,
                                              "timeout_s": 2}) == {
        "url": "http://sim:8399/", "profile": "mixed", "boot_delay_s": 0.0, "timeout_s": 2.0}
    with pytest.raises(registry.ConfigError) as info:
        registry.validate_config("local", {"url": "ftp://x", "profile": "H 100", "boot_delay_s": "soon",
                                           "timeout_s": 0, "colour": "red", "api_token": "t"})
    assert info.value.fields == {
        "url": "must be an http:// or https:// URL, got 'ftp://x'",
        "profile": "must be a profile name such as h100, a100, l40s or mixed, got 'H 100'",
        "boot_delay_s": "must be a number, got 'soon'",
        "timeout_s": "must be above 0 and at most 120 seconds, got 0",
        "colour": "unknown key; allowed: url, profile, boot_delay_s, timeout_s",
        "api_token": "looks like a secret: the pool's config is stored in the database and shown to operators, so "
                     "it must hold none; the local provider needs no credentials",
    }
    with pytest.raises(registry.ConfigError) as info:
        registry.validate_config("local", {"boot_delay_s": 7200, "timeout_s": True})
    assert info.value.fields == {"boot_delay_s": "must be from 0 to 3600 seconds, got 7200",
                                 "timeout_s": "must be a number, got True"}
