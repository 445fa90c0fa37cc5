"""KV-cache events of a simulated node, published as vLLM publishes them (vllm/distributed/kv_events.py).

Started with `--kv-events-config` (the same JSON as vLLM's: `enable_kv_cache_events`, `publisher: "zmq"`,
`endpoint`, `topic`, `hwm` ...), each node's engine reports what its prefix cache does:

* `BlockStored` when blocks enter the cache (a prefill computed them),
* `BlockRemoved` when blocks are evicted (running sequences needed the memory),
* `AllBlocksCleared` when the cache is emptied (the server restarted or its cache was reset).

The wire format is vLLM's (msgspec structs with `array_like=True, tag=True`, as llm-d's kv-cache manager decodes
them): one ZMQ PUB multipart message per engine step that changed the cache, frames (topic, sequence number as 8
bytes big-endian, msgpack payload); the payload is `[ts, [event, ...], data_parallel_rank]` and each event an array
whose first element is its tag:

    ["BlockStored", block_hashes, parent_block_hash, token_ids, block_size, lora_id, medium]
    ["BlockRemoved", block_hashes, medium]
    ["AllBlocksCleared"]

Where the simulator differs (docs/gateway.md, "Precise mode"): its "tokens" are the characters of the prompt text
(a block is 64 characters, so `block_size` is 64 and `token_ids` are the characters' code points: a consumer
rebuilds the block's text from them; a real vLLM sends its tokenizer's ids), a block hash is the first 8 bytes of
the block's chained BLAKE2b key as an unsigned integer (vLLM sends its own chained hashes, an int or bytes), there
is no replay socket (`replay_endpoint` is refused), and the default topic names the node and its model,
`kv@<node>@<model>` (vLLM's default is empty; llm-d's deployments set this form so that the subscriber knows which
pod an event is from). As in vLLM, an endpoint with a wildcard (`tcp://*:5557`) or an ipc/inproc one is bound,
any other is connected to (a subscriber that binds, as llm-d's does, takes every node's events on one socket).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

# The fields of vLLM's KVEventsConfig, with its defaults (topic aside: see the module's docstring).
DEFAULT_TOPIC = "kv@{node}@{model}"
MEDIUM = "GPU"
KNOWN = ("enable_kv_cache_events", "publisher", "endpoint", "replay_endpoint", "buffer_steps", "hwm",
         "max_queue_size", "topic")


@dataclass(frozen=True)
class KVEventsConfig:
    enable_kv_cache_events: bool = False
    publisher: str = "null"
    endpoint: str = "tcp://*:5557"
    hwm: int = 100_000
    topic: str = DEFAULT_TOPIC

    @property
    def enabled(self) -> bool:
        return self.enable_kv_cache_events and self.publisher == "zmq"

    @classmethod
    def parse(cls, text: str) -> KVEventsConfig:
        """vLLM's `--kv-events-config` JSON -> the config; ValueError naming the field that is wrong."""
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"--kv-events-config: not JSON ({exc})") from None
        if not isinstance(doc, dict):
            raise ValueError("--kv-events-config: must be a JSON object")
        if unknown := sorted(set(doc) - set(KNOWN)):
            raise ValueError(f"--kv-events-config: unknown field(s) {', '.join(unknown)}; known: {', '.join(KNOWN)}")
        enable = doc.get("enable_kv_cache_events", False)
        if not isinstance(enable, bool):
            raise ValueError("--kv-events-config: enable_kv_cache_events must be true or false")
        publisher = doc.get("publisher", "zmq" if enable else "null")
        if publisher not in ("zmq", "null"):
            raise ValueError(f"--kv-events-config: publisher must be \"zmq\" or \"null\", got {publisher!r}")
        if doc.get("replay_endpoint") is not None:
            raise ValueError("--kv-events-config: replay_endpoint is not supported by the simulator (no replay "
                             "socket; a subscriber that misses events resets that node's index)")
        endpoint = doc.get("endpoint", cls.endpoint)
        if not isinstance(endpoint, str) or not endpoint.startswith(("tcp://", "ipc://", "inproc://")):
            raise ValueError(f"--kv-events-config: endpoint must be a tcp://, ipc:// or inproc:// address, got "
                             f"{endpoint!r}")
        topic = doc.get("topic") or DEFAULT_TOPIC
        if not isinstance(topic, str) or len(topic) > 512:
            raise ValueError("--kv-events-config: topic must be a string of at most 512 characters")
        for name in ("hwm", "buffer_steps", "max_queue_size"):
            value = doc.get(name, 1)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 10_000_000:
                raise ValueError(f"--kv-events-config: {name} must be an integer 1-10000000, got {value!r}")
        return cls(enable, publisher, endpoint, int(doc.get("hwm", cls.hwm)), topic)


def binds(endpoint: str) -> bool:
    """vLLM's rule: bind a wildcard, ipc or inproc address; connect to anything else."""
    return "*" in endpoint or "::" in endpoint or endpoint.startswith(("ipc://", "inproc://"))


def wire_hash(key: bytes) -> int:
    """The engine's 16-byte block key as the unsigned 64-bit integer the events carry."""
    return int.from_bytes(key[:8], "big")


def block_stored(keys: list[bytes], parent: bytes | None, text: str, block_size: int) -> list[Any]:
    return ["BlockStored", [wire_hash(k) for k in keys], None if parent is None else wire_hash(parent),
            [ord(c) for c in text], block_size, None, MEDIUM]


def block_removed(keys: list[bytes]) -> list[Any]:
    return ["BlockRemoved", [wire_hash(k) for k in keys], MEDIUM]


def all_blocks_cleared() -> list[Any]:
    return ["AllBlocksCleared"]


class Publisher:
    """One node's PUB socket. `publish` is called on the node's event loop at the end of an engine step; a PUB
    send never blocks (past the high-water mark ZMQ drops, and the subscriber sees the gap in the sequence)."""

    def __init__(self, config: KVEventsConfig, node: str, model: str) -> None:
        try:
            import msgpack
            import zmq
        except ImportError as exc:  # the base install (the node agent) does not carry them
            raise RuntimeError("KV events need pyzmq and msgpack: pip install 'switchyard[kv-events]'") from exc
        self._packb = msgpack.packb
        self._noblock = zmq.NOBLOCK
        self._again = zmq.Again
        self.topic = config.topic.replace("{node}", node).replace("{model}", model).encode()
        self.endpoint = config.endpoint
        self._sock = zmq.Context.instance().socket(zmq.PUB)
        self._sock.setsockopt(zmq.SNDHWM, config.hwm)
        self._sock.setsockopt(zmq.LINGER, 0)
        if binds(config.endpoint):
            self._sock.bind(config.endpoint)
        else:
            self._sock.connect(config.endpoint)
        self.seq = 0
        self.sent = 0
        self.dropped = 0

    def publish(self, events: list[list[Any]]) -> None:
        payload = self._packb([time.time(), events, 0], use_bin_type=True)
        seq = self.seq
        self.seq += 1  # a batch ZMQ dropped still takes its number: the subscriber must see the gap
        try:
            self._sock.send_multipart((self.topic, seq.to_bytes(8, "big"), payload), flags=self._noblock)
            self.sent += 1
        except self._again:
            self.dropped += 1

    def close(self) -> None:
        self._sock.close(linger=0)
