"""The gateway's approximate prefix-cache index: which prompt blocks it recently sent to which node.

An engine with prefix caching (vLLM's automatic prefix caching, SGLang's radix cache) skips the prefill of every
cached block of a prompt, so a request whose prefix a node already holds starts sooner there. The gateway cannot see
the nodes' caches (that is the "precise" mode, fed by the engines' KV events); it remembers what it sent, as
llm-d's prefix-cache scorer and SGLang's router do:

* A prompt's text is cut into fixed-size blocks of characters (`block_chars`) and each block gets a chained key:
  key(i) = hash(key(i-1), block i), so equal keys mean equal prefixes up to that block and a lookup walks the keys
  in order until the first block the node lacks. A partial last block is ignored (engines cache whole blocks only).
  The hash is Python's own (SipHash over the block's characters): fast enough for a 2,000-token prompt per request
  and stable within the gateway's process, which is the only place the keys live.
* Per node, a bounded LRU of keys (`capacity` blocks): old prefixes fall out as an engine's cache would evict them.
  Beside it, key -> the nodes holding it, so a lookup costs the holders of the prompt's leading blocks, not the
  fleet's size.
* A node that is removed, restarts or fails is forgotten (its cache is gone).
* Precise mode (`prefix.source: kv_events`, control/scheduler/kv_events.py): the nodes' own KV-cache events add
  (`add`) and remove (`remove`) blocks instead of the gateway's sends; the keys are the same chained hashes, made
  from the blocks' text the events carry, so a prompt is looked up the same way in either mode.

Each gateway keeps its own index; with several gateways each sees only its share of the traffic (docs/gateway.md).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Collection, Iterable
from itertools import chain, islice
from typing import Any

Keys = tuple[int, ...]
# Nodes holding a shallower match than the deepest are scored too while there are at most this many (a prefix sent
# to most of a large fleet is no reason to prefer any node of it, and would make each lookup cost the fleet).
MAX_SHALLOW = 8
# At most this many of the deepest holders are returned: each is scored in full by the picker, and a prefix held by
# more nodes than this gives the load terms enough choice already (set order, so not always the same ones).
MAX_MATCHES = 16


def prompt_text(body: dict[str, Any]) -> str:
    """The text the node's prompt is made of, in order: the chat messages (role and text) or the completion
    prompt. The exact template does not matter, only that equal prompts give equal text and a shared prefix of
    messages a shared prefix of text."""
    messages = body.get("messages")
    if isinstance(messages, list):
        parts = []
        for m in messages:
            if not isinstance(m, dict):
                continue
            content = m.get("content")
            if isinstance(content, list):
                content = "".join(p.get("text", "") for p in content
                                  if isinstance(p, dict) and isinstance(p.get("text"), str))
            parts.append(f"{m.get('role', '')}: {content if isinstance(content, str) else ''}")
        return "\n".join(parts)
    prompt = body.get("prompt")
    if isinstance(prompt, list):
        return "".join(p for p in prompt if isinstance(p, str))
    return prompt if isinstance(prompt, str) else ""


def block_keys(text: str, block_chars: int, max_blocks: int) -> Keys:
    """Chained keys of the text's leading whole blocks (at most max_blocks)."""
    n = min(len(text) // block_chars, max_blocks)
    keys = []
    key = 0
    for i in range(n):
        key = hash((key, text[i * block_chars:(i + 1) * block_chars]))
        keys.append(key)
    return tuple(keys)


def _names(held: str | dict[str, None]) -> Collection[str]:
    return (held,) if held.__class__ is str else held  # type: ignore[return-value]


class PrefixIndex:
    """Per node, the block keys recently sent there (a bounded LRU), and per key the nodes holding it."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.nodes: dict[str, OrderedDict[int, None]] = {}
        # key -> its holder: the node's name while one node holds it (most blocks: a prompt's own tail), a dict of
        # names (not a set: a dict of strings is not tracked by the garbage collector) once several do. A one-entry
        # dict per block was 184 of the index's 359 bytes per block (1,000 nodes x 10,000 blocks: 3.4 GiB).
        self.holders: dict[int, str | dict[str, None]] = {}

    def resize(self, capacity: int) -> None:
        self.capacity = capacity
        for name in list(self.nodes):
            self._trim(name)

    def add(self, node: str, keys: Keys) -> None:
        """The prompt with these keys was sent to the node: it will hold them, most recently used (the first
        block least recently: a walk over the prompt leaves them in that order, and evicts the first first).

        Runs on every request, so the blocks the node already holds (a shared prefix: most of a long prompt) are
        moved to the end by one C-level pass that stops at the first block it lacks; only the rest (usually the
        prompt's own tail) is walked in Python."""
        lru = self.nodes.get(node)
        if lru is None:
            lru = self.nodes[node] = OrderedDict()
        rest = iter(keys)
        try:
            deque(map(lru.move_to_end, rest), 0)
        except KeyError as lacking:
            holders = self.holders
            for key in chain(lacking.args, rest):
                if key in lru:  # a later block can outlive an earlier one (evicted first)
                    lru.move_to_end(key)
                    continue
                lru[key] = None
                held = holders.get(key)
                if held is None:
                    holders[key] = node
                elif held.__class__ is str:
                    if held != node:
                        holders[key] = {held: None, node: None}  # type: ignore[dict-item]
                else:
                    held[node] = None  # type: ignore[index]
            self._trim(node)

    def _trim(self, node: str) -> None:
        lru = self.nodes[node]
        while len(lru) > self.capacity:
            key, _ = lru.popitem(last=False)
            self._drop(key, node)

    def _drop(self, key: int, node: str) -> None:
        held = self.holders.get(key)
        if held is None:
            return
        if held.__class__ is str:
            if held == node:
                del self.holders[key]
            return
        held.pop(node, None)  # type: ignore[union-attr]
        if len(held) == 1:
            self.holders[key] = next(iter(held))
        elif not held:
            del self.holders[key]

    def remove(self, node: str, keys: Iterable[int]) -> None:
        """The node no longer holds these blocks (its engine evicted them: a BlockRemoved event)."""
        lru = self.nodes.get(node)
        if not lru:
            return
        for key in keys:
            if lru.pop(key, 0) is None:  # the values are None: 0 means it was not there
                self._drop(key, node)

    def forget(self, node: str) -> None:
        """The node's cache is gone (removed, restarted, failed): nothing of it is assumed any more."""
        lru = self.nodes.pop(node, None)
        if lru:
            for key in lru:
                self._drop(key, node)

    def lookup(self, keys: Keys) -> tuple[int, Collection[str], Collection[str]]:
        """(deepest, deep, shallow): how many of the prompt's leading blocks the best-placed nodes hold, those nodes
        (at most MAX_MATCHES), and, while there are few (MAX_SHALLOW), the other nodes holding at least the first
        block, whose own depth (below `deepest`) `depth` tells. (0, (), ()) when no node holds the first block.

        Chained keys make holding monotone along the prompt (a node holding block i was sent blocks 0..i), so the
        deepest block anyone holds is found by binary search over the keys: O(log blocks), never a walk over the
        blocks or the fleet. The shallow holders' depths are left to the caller, which needs only those that could
        still win."""
        holders = self.holders
        if not keys:
            return 0, (), ()
        first = holders.get(keys[0])
        if first is None:
            return 0, (), ()
        lo, hi = 1, len(keys)  # blocks held by someone: at least lo, at most hi
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if keys[mid - 1] in holders:
                lo = mid
            else:
                hi = mid - 1
        deep = _names(holders[keys[lo - 1]])
        if len(deep) > MAX_MATCHES:
            deep = tuple(islice(deep, MAX_MATCHES))
        first = _names(first)
        if len(first) > len(deep) and len(first) <= MAX_SHALLOW:
            return lo, deep, [name for name in first if name not in deep]
        return lo, deep, ()

    def depth(self, node: str, keys: Keys, below: int) -> int:
        """How many of the prompt's leading blocks the node holds, knowing it holds the first and fewer than
        `below` (binary search in its LRU)."""
        lru = self.nodes[node]
        a, b = 1, below - 1
        while a < b:
            mid = (a + b + 1) // 2
            if keys[mid - 1] in lru:
                a = mid
            else:
                b = mid - 1
        return a

    def matches(self, keys: Keys, among: Iterable[str] | None = None) -> dict[str, int]:
        """Node -> how many of the prompt's leading blocks it holds, for the nodes holding the most of them (and,
        while there are few, every node holding at least the first block): `lookup` with every depth filled in."""
        lo, deep, shallow = self.lookup(keys)
        out = dict.fromkeys(deep, lo)
        for name in shallow:
            out[name] = self.depth(name, keys, lo)
        if among is not None:
            wanted = set(among)
            return {n: c for n, c in out.items() if n in wanted}
        return out

    def size(self, node: str) -> int:
        lru = self.nodes.get(node)
        return len(lru) if lru else 0
