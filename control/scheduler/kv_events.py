"""Precise prefix routing: the nodes' own KV-cache events keep the gateway's prefix index (`prefix.source:
kv_events`), so that it holds what each engine really caches, not what the gateway sent there.

The engines publish vLLM's events (vllm/distributed/kv_events.py; the simulator too, agents/sim/kv_events.py):
ZMQ PUB multipart (topic, 8-byte big-endian sequence number, msgpack payload), the payload an array-like
`[ts, events, data_parallel_rank?]`, each event a tagged array (`["BlockStored", block_hashes, parent_block_hash,
token_ids, block_size, lora_id, medium, ...]`, `["BlockRemoved", block_hashes, medium, ...]`,
`["AllBlocksCleared"]`). As llm-d's kv-cache manager does, the gateway takes them all on one SUB socket, bound to the
address(es) of its SWITCHYARD_GATEWAY_KV_EVENTS setting (the engines connect to it), and reads the publisher from
the topic, `kv@<node>@<model>`: `<node>` is the Switchyard node's name.

Two halves, so that no request ever waits on ZMQ:

* `Subscriber`, a daemon thread: receives, decodes, checks every field, and turns each event into operations on the
  index in the gateway's own keys (the chained hash of prefix_index.block_keys over the block's text, rebuilt from
  the event's token ids, which are the simulator's characters; its parent's key is looked up by the engine's parent
  hash). It keeps per publisher the last sequence number and the engine hash -> gateway key map, which nothing else
  touches.
* `Applier.drain`, on the gateway's event loop (scheduled with call_soon_threadsafe, at most one pending): applies
  the decoded operations to the prefix index of every scheduler core whose policy reads events (the stable one and
  a canary's). Only dictionary updates run there, at most MAX_OPS_PER_DRAIN operations per turn.

What is assumed when events are missing (docs/gateway.md, "Precise mode"):

* Before a node's first event the gateway records what it sends there (as with `prefix.source: sent`); from its
  first event on, only its events change its index (what was recorded before stays until its blocks are evicted:
  their BlockStored/BlockRemoved events name the same keys).
* A gap in a node's sequence numbers (a dropped message, or a restarted publisher whose numbers start again) clears
  that node's index, and for GAP_FALLBACK_S the gateway records its sends there again while it applies the node's
  new events: blocks the node cached before the gap and still holds are unknown after it, and a prompt sent there
  brings them back into the index. There is no replay request (vLLM's optional replay socket).
* AllBlocksCleared (the engine restarted or reset its cache) clears the node's index; a node that is removed,
  restarts or fails is forgotten as in the approximate mode (core.py).
* Events whose block size is not the policy's `prefix.block_chars` cannot be keyed like prompts: they are counted
  (`size_mismatch` in the gateway state) and dropped, and the node stays indexed by what was sent.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

TOPIC_PREFIX = "kv@"
GAP_FALLBACK_S = 10.0  # after a gap, a node's sends are recorded again for this long (wall seconds)
MAX_OPS_PER_DRAIN = 2_000  # operations applied per turn of the event loop; the rest on the next turn
MAX_KEYS_PER_NODE = 2_000_000  # engine hash -> key map entries per node; past it the map is dropped (as a gap)
POLL_MS = 200
MAX_UNICODE = 0x10FFFF

# ("store" | "remove", node, keys) | ("clear" | "gap" | "join", node, ())
Op = tuple[str, str, tuple[int, ...]]


class BadEvent(ValueError):
    """A message that is not vLLM's KV event format (which field, and why)."""


@dataclass(frozen=True)
class Stored:
    hashes: list[Hashable]
    parent: Hashable | None
    token_ids: list[int]
    block_size: int


@dataclass(frozen=True)
class Removed:
    hashes: list[Hashable]


@dataclass(frozen=True)
class Cleared:
    pass


Event = Stored | Removed | Cleared


def _hash(value: Any, where: str) -> Hashable:
    # vLLM sends its block hashes as integers (up to 0.10) or bytes (later versions); either is only a name here.
    if isinstance(value, bool) or not isinstance(value, int | bytes):
        raise BadEvent(f"{where}: a block hash must be an integer or bytes, got {type(value).__name__}")
    return value


def decode(payload: bytes) -> list[Event]:
    """One message's payload -> its events; BadEvent naming the first field that is wrong."""
    import msgpack

    try:
        batch = msgpack.unpackb(payload, raw=False, strict_map_key=False, use_list=True)
    except Exception as exc:  # noqa: BLE001 - any decoding failure is the sender's fault
        raise BadEvent(f"payload: not msgpack ({exc})") from None
    if not isinstance(batch, list) or len(batch) < 2:
        raise BadEvent("payload: must be an array [ts, events, data_parallel_rank?]")
    ts, events = batch[0], batch[1]
    if isinstance(ts, bool) or not isinstance(ts, int | float):
        raise BadEvent("payload[0] (ts): must be a number")
    if not isinstance(events, list):
        raise BadEvent("payload[1] (events): must be an array")
    out: list[Event] = []
    for i, ev in enumerate(events):
        where = f"events[{i}]"
        if not isinstance(ev, list) or not ev or not isinstance(ev[0], str):
            raise BadEvent(f"{where}: must be a tagged array [\"BlockStored\" | \"BlockRemoved\" | "
                           "\"AllBlocksCleared\", ...]")
        tag = ev[0]
        if tag == "BlockStored":
            if len(ev) < 5:
                raise BadEvent(f"{where}: BlockStored needs block_hashes, parent_block_hash, token_ids, block_size")
            hashes, parent, tokens, size = ev[1], ev[2], ev[3], ev[4]
            if not isinstance(hashes, list) or not hashes:
                raise BadEvent(f"{where}.block_hashes: must be a non-empty array")
            hs = [_hash(h, f"{where}.block_hashes") for h in hashes]
            par = None if parent is None else _hash(parent, f"{where}.parent_block_hash")
            if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= 65_536:
                raise BadEvent(f"{where}.block_size: must be an integer 1-65536, got {size!r}")
            if not isinstance(tokens, list) or len(tokens) != size * len(hs):
                raise BadEvent(f"{where}.token_ids: must hold block_size x len(block_hashes) = {size * len(hs)} ids")
            if not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t <= MAX_UNICODE for t in tokens):
                raise BadEvent(f"{where}.token_ids: must be integers 0-{MAX_UNICODE}")
            out.append(Stored(hs, par, tokens, size))
        elif tag == "BlockRemoved":
            if len(ev) < 2 or not isinstance(ev[1], list):
                raise BadEvent(f"{where}.block_hashes: must be an array")
            out.append(Removed([_hash(h, f"{where}.block_hashes") for h in ev[1]]))
        elif tag == "AllBlocksCleared":
            out.append(Cleared())
        else:
            raise BadEvent(f"{where}: unknown event {tag[:40]!r}")
    return out


def node_of(topic: bytes) -> str | None:
    """`kv@<node>@<model>` -> the node's name (None when the topic does not have that form)."""
    try:
        text = topic.decode()
    except UnicodeDecodeError:
        return None
    parts = text.split("@")
    if len(parts) < 2 or parts[0] != TOPIC_PREFIX[:-1] or not parts[1]:
        return None
    return parts[1][:253]


CONNECT = "connect:"


def parse_endpoints(value: str) -> list[str]:
    """The gateway setting (comma-separated ZMQ addresses) -> its endpoints; ValueError naming a bad one.

    The gateway is the stable end: it binds each address and the engines' publishers connect to it (vLLM's
    publisher connects to any address without a wildcard). `connect:tcp://host:port` connects to an engine whose
    publisher binds instead."""
    out = []
    for item in (v.strip() for v in value.split(",")):
        if not item:
            continue
        if not item.removeprefix(CONNECT).startswith(("tcp://", "ipc://", "inproc://")):
            raise ValueError(f"SWITCHYARD_GATEWAY_KV_EVENTS: {item[:200]!r} is not a tcp://, ipc:// or inproc:// "
                             "address (optionally after connect:)")
        out.append(item)
    return out


@dataclass
class Stream:
    """What the subscriber knows of one publisher (one node)."""

    last_seq: int | None = None
    keys: dict[Hashable, int] = field(default_factory=dict)  # engine block hash -> the gateway's key
    block_size: int | None = None


class Translator:
    """Events of a publisher -> operations on the index, in the gateway's keys. Used by the subscriber thread only."""

    def __init__(self, block_chars: Callable[[], int]) -> None:
        self.streams: dict[str, Stream] = {}
        # The stable policy's prefix.block_chars, read once per message (an attribute read of the frozen config).
        self.block_chars = block_chars
        self.counts = {"messages": 0, "stored": 0, "removed": 0, "cleared": 0, "gaps": 0, "malformed": 0,
                       "unknown_parent": 0, "size_mismatch": 0, "bad_topic": 0}
        self.last_error = ""

    def message(self, topic: bytes, seq_bytes: bytes, payload: bytes) -> list[Op]:
        node = node_of(topic)
        if node is None:
            self.counts["bad_topic"] += 1
            self.last_error = f"topic {topic[:80]!r} is not kv@<node>@<model>"
            return []
        if len(seq_bytes) != 8:
            self.counts["malformed"] += 1
            self.last_error = f"{node}: the sequence frame must be 8 bytes, got {len(seq_bytes)}"
            return []
        self.counts["messages"] += 1
        seq = int.from_bytes(seq_bytes, "big")
        stream = self.streams.get(node)
        ops: list[Op] = []
        if stream is None:
            stream = self.streams[node] = Stream()
        if stream.last_seq is None:
            ops.append(("join", node, ()))
        elif seq != stream.last_seq + 1:
            # Missed messages, or a publisher that started again from 0: what the node holds is unknown now.
            self.counts["gaps"] += 1
            stream.keys.clear()
            ops.append(("gap", node, ()))
        stream.last_seq = seq
        try:
            events = decode(payload)
        except BadEvent as exc:
            self.counts["malformed"] += 1
            self.last_error = f"{node} seq {seq}: {exc}"
            return ops
        size = self.block_chars()
        for ev in events:
            if isinstance(ev, Stored):
                if ev.block_size != size:
                    self.counts["size_mismatch"] += 1
                    self.last_error = (f"{node}: block_size {ev.block_size} is not the policy's prefix.block_chars "
                                       f"{size}; its events are dropped")
                    continue
                if ev.parent is None:
                    key = 0  # block_keys' seed: the first block of a prompt
                else:
                    parent = stream.keys.get(ev.parent)
                    if parent is None:  # stored before we listened, or evicted: no prompt can reach these blocks
                        self.counts["unknown_parent"] += 1
                        continue
                    key = parent
                text = "".join(map(chr, ev.token_ids))
                keys = []
                for i, h in enumerate(ev.hashes):
                    key = hash((key, text[i * size:(i + 1) * size]))  # as prefix_index.block_keys
                    stream.keys[h] = key
                    keys.append(key)
                self.counts["stored"] += len(keys)
                ops.append(("store", node, tuple(keys)))
            elif isinstance(ev, Removed):
                gone = tuple(k for h in ev.hashes if (k := stream.keys.pop(h, None)) is not None)
                self.counts["removed"] += len(gone)
                if gone:
                    ops.append(("remove", node, gone))
            else:
                stream.keys.clear()
                self.counts["cleared"] += 1
                ops.append(("clear", node, ()))
        if len(stream.keys) > MAX_KEYS_PER_NODE:
            stream.keys.clear()
            self.counts["gaps"] += 1
            ops.append(("gap", node, ()))
        return ops


class Subscriber:
    """The daemon thread: SUB socket(s) -> Translator -> `deliver(ops)` (thread-safe; the Applier's)."""

    def __init__(self, endpoints: list[str], deliver: Callable[[list[Op]], None],
                 block_chars: Callable[[], int]) -> None:
        self.endpoints = endpoints
        self.deliver = deliver
        self.translator = Translator(block_chars)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kv-events", daemon=True)
        self.error = ""

    def start(self) -> None:
        import zmq

        # Sockets are made here, so that a bad address fails the gateway's start, not a thread later on.
        self._sock = zmq.Context.instance().socket(zmq.SUB)
        self._sock.setsockopt(zmq.RCVHWM, 100_000)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.SUBSCRIBE, TOPIC_PREFIX.encode())
        for ep in self.endpoints:
            if ep.startswith(CONNECT):
                self._sock.connect(ep.removeprefix(CONNECT))
            else:
                self._sock.bind(ep)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)

    def _run(self) -> None:
        import zmq

        sock = self._sock
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                if not poller.poll(POLL_MS):
                    continue
                ops: list[Op] = []
                for _ in range(1000):  # what has arrived, then hand it over
                    try:
                        frames = sock.recv_multipart(flags=zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    if len(frames) != 3:
                        self.translator.counts["malformed"] += 1
                        self.translator.last_error = f"a message of {len(frames)} frames, not 3"
                        continue
                    try:
                        ops.extend(self.translator.message(*frames))
                    except Exception as exc:  # noqa: BLE001 - one bad message must not end the thread
                        self.translator.counts["malformed"] += 1
                        self.translator.last_error = f"{type(exc).__name__}: {exc}"
                if ops:
                    self.deliver(ops)
        except Exception as exc:  # noqa: BLE001 - reported in the gateway's state; requests go on without events
            self.error = f"{type(exc).__name__}: {exc}"
            log.exception("kv-events subscriber stopped")
        finally:
            sock.close(linger=0)


class Applier:
    """The loop side: operations from the subscriber, applied to each scheduler core that reads events."""

    def __init__(self, loop: Any, targets: Callable[[], Iterable[Any]]) -> None:
        self.loop = loop
        self.targets = targets  # -> the Scheduler cores (the stable one, a canary's)
        self._queue: deque[Op] = deque()
        self._scheduled = False
        self.resync_at: dict[str, float] = {}  # node -> until when its sends are recorded again (after a gap)
        self.applied = 0
        self.unknown_node = 0

    def deliver(self, ops: list[Op]) -> None:
        """From the subscriber thread."""
        self._queue.extend(ops)
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon_threadsafe(self.drain)

    def drain(self) -> None:
        self._scheduled = False
        cores = [s for s in self.targets() if s.config.prefix_source == "kv_events"]
        now = time.monotonic()
        queue = self._queue
        for _ in range(min(len(queue), MAX_OPS_PER_DRAIN)):
            kind, node, keys = queue.popleft()
            self.applied += 1
            for sched in cores:
                apply(sched, kind, node, keys, now, self.resync_at)
                if node not in sched.nodes:
                    self.unknown_node += 1
        if queue and not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self.drain)


def apply(sched: Any, kind: str, node: str, keys: tuple[int, ...], now: float, resync_at: dict[str, float]) -> None:
    """One operation on one scheduler core's index (core.Scheduler: .prefix, .event_fed, .nodes)."""
    if kind == "gap":
        sched.prefix.forget(node)
        sched.event_fed.discard(node)
        resync_at[node] = now + GAP_FALLBACK_S
        return
    if node not in sched.nodes:  # not (or no longer) one of this gateway's nodes: nothing to route to
        return
    if kind == "store":
        sched.prefix.add(node, keys)
    elif kind == "remove":
        sched.prefix.remove(node, keys)
    elif kind == "clear":
        sched.prefix.forget(node)
    if node not in sched.event_fed and now >= resync_at.get(node, 0.0):
        sched.event_fed.add(node)


class KVEvents:
    """The gateway's precise-mode plumbing: one subscriber thread and its applier."""

    def __init__(self, endpoints: list[str], loop: Any, targets: Callable[[], Iterable[Any]],
                 block_chars: Callable[[], int]) -> None:
        self.applier = Applier(loop, targets)
        self.subscriber = Subscriber(endpoints, self.applier.deliver, block_chars)

    def start(self) -> None:
        self.subscriber.start()

    def stop(self) -> None:
        self.subscriber.stop()

    def state(self, cores: Iterable[Any]) -> dict[str, Any]:
        t = self.subscriber.translator
        fed: set[str] = set()
        for sched in cores:
            fed |= sched.event_fed
        return {"endpoints": self.subscriber.endpoints, "counts": dict(t.counts), "applied": self.applier.applied,
                "unknown_node": self.applier.unknown_node, "last_error": t.last_error,
                "error": self.subscriber.error, "event_fed": sorted(fed),
                "last_seq": {n: s.last_seq for n, s in list(t.streams.items())}}
