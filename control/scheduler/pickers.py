"""Cache-aware picks: the prefix_affinity term on top of the weighted score, and SGLang's cache_aware policy as a
baseline. Both read the scheduler's prefix index (prefix_index.py); neither changes the heap.

`with_affinity` (the `highest` picker with a prefix_affinity scorer): the heap top is the best node without
affinity; only nodes that hold some of the prompt's leading blocks can gain, so those few (at most
prefix_index.MAX_MATCHES + MAX_SHALLOW) are compared with the top by the score their heap entry was made with
(`Node.base`, i.e. `Scheduler.base_score`) + weight x matched share. A node's expected_wait and burst terms
are in its base score, so a node whose queue costs more than the affinity is worth loses the request to an idle
one: a hot prefix spreads to a second node instead of herding onto the first.

`cache_aware` (SGLang router's policy, their documented defaults): when the gateway's in-flight counts are
imbalanced (max - min > balance_abs_threshold and max > balance_rel_threshold x min) the node with the fewest in
flight; otherwise the node with the longest prefix match when it covers at least cache_threshold of the prompt's
blocks, else the node whose index holds the fewest blocks (SGLang sends unmatched prompts to the smallest tree, to
spread new prefixes). It walks the group's members: O(nodes) per request, fine for a baseline.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from control.scheduler.prefix_index import Keys

if TYPE_CHECKING:
    from control.scheduler.core import Group, Node, Pick, Scheduler


def with_affinity(sched: Scheduler, group: Group, best: Node, exclude: frozenset[str] | set[str],
                  prefix: Keys, stream: bool = False) -> Pick:
    """`stream`: `best` is the top of the stream heap, so every node is compared by the score its stream-heap entry
    was made with (`Node.sbase`: base plus the expected_ttft term)."""
    if stream:
        return _with_affinity(sched, group, best, exclude, prefix, lambda n: n.sbase)
    return _with_affinity(sched, group, best, exclude, prefix, lambda n: n.base)


def _with_affinity(sched: Scheduler, group: Group, best: Node, exclude: frozenset[str] | set[str],
                   prefix: Keys, base: Callable[[Node], float]) -> Pick:
    from control.scheduler.core import Pick

    index = sched.prefix
    deepest, deep, shallow = index.lookup(prefix)
    if not deepest:
        return Pick(best, "ok")
    cfg = sched.config
    per_block = cfg.weights["prefix_affinity"][0] / len(prefix)
    least = cfg.prefix_min_match
    # base(node) is the score the heap ranked the node by (set when its entry was made), so comparing holders costs
    # a few attribute reads each, not a re-score.
    if best.name in deep:
        count = deepest
    elif best.name in shallow:
        count = index.depth(best.name, prefix, deepest)
    else:
        count = 0
    top = per_block * count if count >= least else 0.0
    best_score = base(best) + top
    nodes = sched.nodes
    if deepest >= least:
        gain = per_block * deepest
        for name in deep:
            node = nodes.get(name)
            if node is None or base(node) + gain <= best_score or node is best or name in exclude \
                    or not node.listed or group not in node.groups:
                continue
            best, best_score, top = node, base(node) + gain, gain
    # A shallow holder can win only if its score beats the best so far with an affinity below the deepest match:
    # its own depth is looked up only then.
    bound = per_block * (deepest - 1)
    for name in shallow:
        node = nodes.get(name)
        if node is None or base(node) + bound <= best_score or node is best or name in exclude \
                or not node.listed or group not in node.groups:
            continue
        count = index.depth(name, prefix, deepest)
        gain = per_block * count
        if count >= least and base(node) + gain > best_score:
            best, best_score, top = node, base(node) + gain, gain
    sched.last_affinity = top
    return Pick(best, "ok")


# Past the SLO (core.Scheduler._pick_past_slo), a node holding the prompt's prefix is taken over the one with the
# fewest requests in flight while it has at most this many more: it skips the cached part of the prefill, about what
# one more request ahead of it costs, and a request that misses the SLO anyway should not also lose its cache hit.
PAST_SLO_HOLDER_SLACK = 1


def past_slo_holder(sched: Scheduler, group: Group, fewest: Node, prefix: Keys) -> Node:
    """The node for a request past the SLO: among the deepest holders of its prefix (at most
    prefix_index.MAX_MATCHES), the one with the fewest in flight when that is within PAST_SLO_HOLDER_SLACK of
    `fewest`'s; else `fewest`. Keeping such a request on its prefix's node also keeps the index's write a refresh of
    blocks the node already holds rather than a whole prompt's worth of new ones."""
    deepest, deep, _ = sched.prefix.lookup(prefix)
    if deepest < sched.config.prefix_min_match:
        return fewest
    nodes = sched.nodes
    best, limit = None, fewest.in_flight + PAST_SLO_HOLDER_SLACK
    for name in deep:
        node = nodes.get(name)
        if node is None or node.in_flight > limit or not node.listed or group not in node.groups:
            continue
        if best is None or node.in_flight < best.in_flight:
            best = node
    if best is None:
        return fewest
    sched.last_affinity = sched.config.weights["prefix_affinity"][0] * deepest / len(prefix)
    return best


def cache_aware(sched: Scheduler, group: Group, exclude: frozenset[str] | set[str], prefix: Keys) -> Pick:
    from control.scheduler.core import Pick

    cfg = sched.config
    members = [n for n in group.members if n.listed and n.name not in exclude]
    if not members:
        return sched._none_left(group, exclude)
    rng = sched.rng
    loads = [n.in_flight for n in members]
    lo, hi = min(loads), max(loads)
    if hi - lo > cfg.balance_abs and hi > cfg.balance_rel * lo:
        return Pick(min(members, key=lambda n: (n.in_flight, rng.random())), "ok")
    if prefix:
        matches = sched.prefix.matches(prefix, (n.name for n in members))
        if matches:
            name, count = max(matches.items(), key=lambda kv: (kv[1], rng.random()))
            if count / len(prefix) >= cfg.cache_threshold:
                sched.last_affinity = count / len(prefix)
                return Pick(sched.nodes[name], "ok")
    size = sched.prefix.size
    return Pick(min(members, key=lambda n: (size(n.name), n.in_flight, rng.random())), "ok")
