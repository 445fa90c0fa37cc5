"""The control API over real HTTP: add, list, remove, slow down, fail (refuse / error / hang), recover, bad input."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from agents.sim.background import BackgroundFleet
from agents.sim.fleet import UnknownNode
from tests.sim.conftest import chat


def names(client: httpx.Client, fleet: BackgroundFleet) -> list[str]:
    return [n["name"] for n in client.get(f"{fleet.control_url}/nodes").json()["nodes"]]


def test_add_list_and_remove_nodes(fleet: BackgroundFleet, client: httpx.Client) -> None:
    api = fleet.control_url
    assert client.get(f"{api}/healthz").json() == {"ok": True, "nodes": 0}
    created = client.post(f"{api}/nodes", json={"profile": "l40s", "name": "edge-1"})
    assert created.status_code == 201
    doc = created.json()
    assert doc["name"] == "edge-1" and doc["state"] == "up" and doc["url"].startswith("http://127.0.0.1:")
    assert client.get(f"{doc['url']}/health").headers["x-sim-node"] == "edge-1"
    auto = client.post(f"{api}/nodes").json()  # no body: defaults, a generated name
    assert auto["name"] == "t-01"
    listed = client.get(f"{api}/nodes").json()
    assert listed["pool"] == "t" and listed["model"] == "sim-llm"
    assert {(n["name"], n["profile"]) for n in listed["nodes"]} == {("edge-1", "l40s"), ("t-01", "h100")}
    assert client.get(f"{api}/nodes/edge-1").json()["profile"] == "l40s"
    removed = client.delete(f"{api}/nodes/edge-1")
    assert removed.status_code == 200 and removed.json() == {"name": "edge-1", "state": "removed"}
    assert names(client, fleet) == ["t-01"]
    with pytest.raises(httpx.ConnectError):
        client.get(f"{doc['url']}/health")  # its server is gone


def test_a_node_with_a_boot_delay_is_booting_then_up(fleet: BackgroundFleet, client: httpx.Client) -> None:
    doc = client.post(f"{fleet.control_url}/nodes", json={"boot_delay_s": 0.5}).json()
    assert doc["state"] == "booting"
    with pytest.raises(httpx.ConnectError):
        client.get(f"{doc['url']}/health")  # the port is reserved but nothing listens yet
    deadline = time.monotonic() + 10
    while client.get(f"{fleet.control_url}/nodes/{doc['name']}").json()["state"] != "up":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert client.get(f"{doc['url']}/health").status_code == 200


BAD_ADDS: list[tuple[Any, int, str]] = [
    ({"profile": "tpu"}, 400, "profile must be one of h100, a100, l40s, mixed, got 'tpu'"),
    ({"name": "Bad Name!"}, 400, "node name 'Bad Name!' is not valid"),
    ({"name": 7}, 400, "name must be a string"),
    ({"boot_delay_s": -1}, 400, "boot_delay_s must be 0-3600 seconds"),
    ({"boot_delay_s": "soon"}, 400, "boot_delay_s must be a number"),
    ({"colour": "red"}, 400, "unknown field(s) 'colour'"),
    ([1], 400, "the body must be a JSON object"),
    ({"name": "dup"}, 409, "a node named 'dup' already exists"),
]


@pytest.mark.parametrize(("body", "status", "message"), BAD_ADDS)
def test_bad_adds_are_refused_and_add_nothing(fleet: BackgroundFleet, client: httpx.Client, body: Any, status: int,
                                              message: str) -> None:
    fleet.add_node(name="dup")
    resp = client.post(f"{fleet.control_url}/nodes", json=body)
    assert resp.status_code == status
    assert message in resp.json()["error"]
    assert names(client, fleet) == ["dup"]


def test_invalid_json_unknown_node_path_and_method(fleet: BackgroundFleet, client: httpx.Client) -> None:
    api = fleet.control_url
    resp = client.post(f"{api}/nodes", content=b"{oops")
    assert resp.status_code == 400 and "not valid JSON" in resp.json()["error"]
    for method, path in (("GET", "/nodes/ghost"), ("DELETE", "/nodes/ghost"), ("POST", "/nodes/ghost/fail")):
        resp = client.request(method, f"{api}{path}", json={"mode": "error"})
        assert resp.status_code == 404 and resp.json()["error"] == "no node named 'ghost' in this fleet"
    assert client.get(f"{api}/elsewhere").status_code == 404
    resp = client.put(f"{api}/nodes", json={})
    assert resp.status_code == 405 and "use GET, POST" in resp.json()["error"]
    with pytest.raises(UnknownNode):
        fleet.fail("ghost", "error")


def test_slow_down_validates_and_applies(fleet: BackgroundFleet, client: httpx.Client) -> None:
    node = fleet.add_node()
    api = fleet.control_url
    for body, message in (({"factor": 0}, "factor must be above 0"), ({"factor": 5000}, "at most 1000"),
                          ({"factor": "fast"}, "factor must be a number"), ({}, "factor must be a number"),
                          ({"factor": True}, "factor must be a number")):
        resp = client.post(f"{api}/nodes/{node.name}/slow", json=body)
        assert resp.status_code == 400 and message in resp.json()["error"]
    assert fleet.node(node.name).slow == 1.0  # nothing applied
    resp = client.post(f"{api}/nodes/{node.name}/slow", json={"factor": 2.5})
    assert resp.status_code == 200 and resp.json()["slow"] == 2.5
    assert fleet.call(lambda f: f.node(node.name).engine.slow) == 2.5


def test_fail_modes_and_recover(fleet: BackgroundFleet, client: httpx.Client) -> None:
    node = fleet.add_node()
    api, url = fleet.control_url, f"{node.url}/v1/chat/completions"
    bad = client.post(f"{api}/nodes/{node.name}/fail", json={"mode": "explode"})
    assert bad.status_code == 400 and "mode must be one of refuse, error, hang" in bad.json()["error"]
    assert client.post(url, json=chat()).status_code == 200

    assert client.post(f"{api}/nodes/{node.name}/fail", json={"mode": "error"}).json()["state"] == "failed"
    resp = client.post(url, json=chat())
    assert resp.status_code == 500 and resp.json()["error"]["type"] == "internal_error"
    assert resp.headers["x-sim-node"] == node.name
    assert client.get(f"{node.url}/health").status_code == 500
    assert client.get(f"{node.url}/metrics").status_code == 200
    assert 'finished_reason="error"} 1.0' in client.get(f"{node.url}/metrics").text

    client.post(f"{api}/nodes/{node.name}/fail", json={"mode": "refuse"})
    with pytest.raises(httpx.ConnectError):
        client.post(url, json=chat())

    client.post(f"{api}/nodes/{node.name}/fail", json={"mode": "hang"})
    with pytest.raises(httpx.ReadTimeout):
        client.post(url, json=chat(), timeout=0.5)
    with pytest.raises(httpx.ReadTimeout):
        client.get(f"{node.url}/metrics", timeout=0.5)

    recovered = client.post(f"{api}/nodes/{node.name}/recover")
    assert recovered.status_code == 200 and recovered.json()["state"] == "up"
    assert client.post(url, json=chat()).status_code == 200


def test_refuse_cuts_requests_in_flight_and_recover_listens_on_the_same_port(fleet: BackgroundFleet,
                                                                             client: httpx.Client) -> None:
    node = fleet.add_node()
    fleet.slow_down(node.name, 1000.0)
    with client.stream("POST", f"{node.url}/v1/chat/completions", json=chat(stream=True, max_tokens=500)) as resp:
        lines = resp.iter_lines()
        assert next(lines).startswith("data: ")  # the role chunk: the request is running
        assert fleet.node(node.name).running == 1
        fleet.fail(node.name, "refuse")
        with pytest.raises(httpx.HTTPError):
            list(lines)
    assert fleet.call(lambda f: f.node(node.name).running) == 0  # its slot and KV are free again
    fleet.recover(node.name)
    fleet.slow_down(node.name, 1.0)
    assert client.post(f"{node.url}/v1/chat/completions", json=chat()).status_code == 200
    assert fleet.node(node.name).port == node.port


def test_a_client_that_disconnects_mid_stream_frees_its_slot(fleet: BackgroundFleet, client: httpx.Client) -> None:
    node = fleet.add_node()
    fleet.slow_down(node.name, 1000.0)
    with client.stream("POST", f"{node.url}/v1/completions",
                       json={"model": "sim-llm", "prompt": "x", "max_tokens": 500, "stream": True}) as resp:
        next(resp.iter_lines())
        assert fleet.node(node.name).running == 1
    deadline = time.monotonic() + 10
    while fleet.call(lambda f: f.node(node.name).running) != 0:
        assert time.monotonic() < deadline, "the engine kept decoding for a client that left"
        time.sleep(0.05)
    assert 'finished_reason="abort"} 1.0' in client.get(f"{node.url}/metrics").text


def test_a_mixed_fleet_cycles_profiles_and_head_works(client: httpx.Client) -> None:
    with BackgroundFleet(pool="mix", profile="mixed", gpus=1, control_port=0) as fleet:
        for _ in range(4):
            assert client.post(f"{fleet.control_url}/nodes").status_code == 201
        assert client.post(f"{fleet.control_url}/nodes", json={"profile": "l40s"}).status_code == 201
        nodes = client.get(f"{fleet.control_url}/nodes").json()["nodes"]
        assert [n["profile"] for n in nodes] == ["h100", "a100", "l40s", "h100", "l40s"]
        head = client.head(f"{nodes[0]['url']}/v1/models")
        assert head.status_code == 200 and head.content == b"" and head.headers["x-sim-node"] == nodes[0]["name"]
        assert int(head.headers["content-length"]) > 0


def test_base_port_gives_consecutive_ports_and_skips_taken_ones(client: httpx.Client) -> None:
    import socket

    from tests.conftest import free_port

    with socket.socket() as taken:
        for _ in range(50):  # a free port whose neighbour is free too (other processes hold ports at random)
            base = free_port()
            try:
                taken.bind(("127.0.0.1", base + 1))  # now "another process" holds the second port
                break
            except OSError:
                continue
        with BackgroundFleet(pool="bp", gpus=1, base_port=base) as fleet:
            ports = [fleet.add_node().port for _ in range(3)]
            assert ports[0] == base and base + 1 not in ports and ports == sorted(ports)
            assert all(client.get(f"http://127.0.0.1:{p}/health").status_code == 200 for p in ports)
