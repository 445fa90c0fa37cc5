"""A sim node speaks the OpenAI API: response shapes streamed and not, determinism, errors, the node header."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from agents.collectors.inference import parse_prometheus
from agents.sim.background import BackgroundFleet
from tests.sim.conftest import MODEL, chat, sse_events


def stream(client: httpx.Client, url: str, body: dict[str, Any]) -> tuple[httpx.Response, list[Any], bool]:
    """POST with stream: true; the response, the JSON events and whether [DONE] ended it."""
    with client.stream("POST", url, json={**body, "stream": True}) as resp:
        lines = list(resp.iter_lines())
    events = sse_events(lines)
    done = bool(events) and events[-1] == "[DONE]"
    return resp, [json.loads(e) for e in events if e != "[DONE]"], done


def test_chat_completion_has_the_openai_shape(fleet: BackgroundFleet, client: httpx.Client) -> None:
    node = fleet.add_node(profile="h100")
    resp = client.post(f"{node.url}/v1/chat/completions", json=chat(max_tokens=12, ignore_eos=True))
    assert resp.status_code == 200
    assert resp.headers["x-sim-node"] == node.name
    doc = resp.json()
    assert doc["object"] == "chat.completion" and doc["id"].startswith("chatcmpl-") and doc["model"] == MODEL
    assert isinstance(doc["created"], int)
    [choice] = doc["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "length"
    assert choice["message"]["role"] == "assistant"
    assert len(choice["message"]["content"].split()) == 12
    # "Hello there, how are you?" is 25 characters: ceil(25 / 4) = 7 tokens, plus 4 for the message.
    assert doc["usage"] == {"prompt_tokens": 11, "completion_tokens": 12, "total_tokens": 23}


def test_text_completion_has_the_openai_shape(fleet: BackgroundFleet, client: httpx.Client) -> None:
    node = fleet.add_node()
    resp = client.post(f"{node.url}/v1/completions", json={"model": MODEL, "prompt": "x" * 40, "max_tokens": 5,
                                                           "ignore_eos": True})
    doc = resp.json()
    assert resp.status_code == 200 and resp.headers["x-sim-node"] == node.name
    assert doc["object"] == "text_completion" and doc["id"].startswith("cmpl-")
    assert doc["choices"][0]["finish_reason"] == "length" and len(doc["choices"][0]["text"].split()) == 5
    assert doc["usage"] == {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}


def test_chat_stream_sends_one_chunk_per_token_then_finish_and_done(fleet: BackgroundFleet,
                                                                    client: httpx.Client) -> None:
    node = fleet.add_node()
    resp, events, done = stream(client, f"{node.url}/v1/chat/completions",
                                chat(max_tokens=6, ignore_eos=True, stream_options={"include_usage": True}))
    assert resp.status_code == 200 and resp.headers["content-type"] == "text/event-stream"
    assert resp.headers["x-sim-node"] == node.name
    assert done
    assert {e["object"] for e in events} == {"chat.completion.chunk"}
    assert len({e["id"] for e in events}) == 1
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    tokens = [e["choices"][0]["delta"]["content"] for e in events[1:-2]]
    assert len(tokens) == 6 and all(e["choices"][0]["finish_reason"] is None for e in events[1:-2])
    assert events[-2]["choices"][0]["finish_reason"] == "length" and events[-2]["choices"][0]["delta"] == {}
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 6


def test_completion_stream_chunks_are_text_completion_objects(fleet: BackgroundFleet, client: httpx.Client) -> None:
    node = fleet.add_node()
    resp, events, done = stream(client, f"{node.url}/v1/completions",
                                {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 4, "ignore_eos": True})
    assert resp.status_code == 200 and done
    assert {e["object"] for e in events} == {"text_completion"}
    assert [e["choices"][0]["finish_reason"] for e in events] == [None, None, None, None, "length"]
    assert "usage" not in events[0]  # only with stream_options.include_usage


def test_temperature_zero_is_deterministic_and_stream_matches(fleet: BackgroundFleet, client: httpx.Client) -> None:
    node = fleet.add_node()
    body = chat("Tell me about routing", temperature=0, max_tokens=40)
    url = f"{node.url}/v1/chat/completions"
    first = client.post(url, json=body).json()["choices"][0]["message"]["content"]
    second = client.post(url, json=body).json()["choices"][0]["message"]["content"]
    _, events, _ = stream(client, url, body)
    streamed = "".join(e["choices"][0]["delta"].get("content") or "" for e in events)
    assert first == second == streamed
    other = client.post(url, json=chat("Tell me about caching", temperature=0, max_tokens=40)).json()
    assert other["choices"][0]["message"]["content"] != first
    # Another node serving the same model answers the same deterministic request the same way.
    node2 = fleet.add_node(profile="l40s")
    assert client.post(f"{node2.url}/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"] \
        == first


def test_temperature_above_zero_varies(fleet: BackgroundFleet, client: httpx.Client) -> None:
    node = fleet.add_node()
    texts = {client.post(f"{node.url}/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 20,
                                                             "temperature": 0.8, "ignore_eos": True}
                         ).json()["choices"][0]["text"] for _ in range(3)}
    assert len(texts) > 1


def test_models_health_and_unknown_path(fleet: BackgroundFleet, client: httpx.Client) -> None:
    node = fleet.add_node(profile="a100")
    models = client.get(f"{node.url}/v1/models")
    assert models.status_code == 200 and models.headers["x-sim-node"] == node.name
    assert [m["id"] for m in models.json()["data"]] == [MODEL] and models.json()["object"] == "list"
    assert client.get(f"{node.url}/health").status_code == 200
    missing = client.get(f"{node.url}/v1/embeddings")
    assert missing.status_code == 404 and missing.headers["x-sim-node"] == node.name
    assert "/v1/chat/completions" in missing.json()["error"]["message"]
    wrong = client.get(f"{node.url}/v1/chat/completions")
    assert wrong.status_code == 405 and "POST" in wrong.json()["error"]["message"]


BAD: list[tuple[str, Any, str | None, str]] = [
    ("/v1/chat/completions", b"{not json", None, "could not parse the JSON body"),
    ("/v1/chat/completions", [1, 2], None, "must be a JSON object"),
    ("/v1/chat/completions", {"model": MODEL}, "messages", "Missing required parameter: 'messages'"),
    ("/v1/chat/completions", {"model": MODEL, "messages": []}, "messages", "non-empty array"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]},
     "messages[0].role", "must be one of"),
    ("/v1/completions", {"model": MODEL}, "prompt", "Missing required parameter: 'prompt'"),
    ("/v1/completions", {"model": MODEL, "prompt": {"a": 1}}, "prompt", "'prompt' must be a string"),
    ("/v1/completions", {"prompt": "x"}, "model", "you must provide a model"),
    ("/v1/completions", {"model": "gpt-9", "prompt": "x"}, "model", "The model `gpt-9` does not exist"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 0}, "max_tokens", "between 1 and 4096, got 0"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 4097}, "max_tokens",
     "between 1 and 4096, got 4097"),
    ("/v1/chat/completions", {**chat(), "max_completion_tokens": 5000}, "max_completion_tokens", "between 1 and 4096"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": "ten"}, "max_tokens", "must be an integer"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "temperature": 3}, "temperature", "between 0 and 2"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "stream": "yes"}, "stream", "must be a boolean"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "n": 2}, "n", "n must be 1"),
    ("/v1/completions", {"model": MODEL, "prompt": "word " * 70_000, "max_tokens": 10}, "prompt",
     "maximum context length is 32768 tokens"),
]


@pytest.mark.parametrize(("path", "body", "param", "message"), BAD)
def test_bad_requests_get_openai_errors_and_nothing_runs(fleet: BackgroundFleet, client: httpx.Client, path: str,
                                                         body: Any, param: str | None, message: str) -> None:
    node = fleet.add_node()
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    resp = client.post(f"{node.url}{path}", content=raw, headers={"content-type": "application/json"})
    assert resp.status_code == 400
    assert resp.headers["x-sim-node"] == node.name
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error" and err["param"] == param
    assert message in err["message"]
    metrics = parse_prometheus(client.get(f"{node.url}/metrics").text)
    assert metrics["vllm:prompt_tokens_total"][0][1] == 0  # nothing reached the engine
    assert metrics["vllm:time_to_first_token_seconds_count"][0][1] == 0
