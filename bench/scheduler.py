"""Decision time of the scheduler core at 100 / 1,000 / 10,000 nodes (target: p99 < 100 us at 1,000).

One decision = pick the best node for the model + record the send (what the gateway does per request before
it proxies). A steady state is simulated: every request finishes a few decisions later (a finish re-lists the
node too, so it is timed separately and reported). Also timed: scoring the whole fleet from scratch (start-up, a
policy change) and the once-a-second refresh (registry + new samples from a fifth of the nodes), which runs on the
gateway's event loop.

    .venv/bin/python bench/scheduler.py [--decisions 20000] [--sizes 100,1000,10000] [--affinity]

`--slo S` gives the policy slo.latency_s = S (default: none, as the default policy) and prints how many picks went
past it (to the fewest in flight, or a holder of the prompt's prefix within one request of it).

`--answers 64,192` gives the picks those answer lengths (max_tokens) in turn, so that with `--slo` the answer-length
rules run: a long answer past the SLO, and within it `_long_fit`, which looks for the best node where the answer's own
slow case makes the SLO. `--worst-long-walk` makes every node's long-answer tail so large that no node fits: each long
answer within the SLO then looks at all LONG_FIT_SCAN heap entries before it settles for the top (the worst case;
use it with a large `--slo`, e.g. 1000, so that picks are within the SLO).

`--index-memory N` instead fills a prefix index as N nodes' worth of the default policy's prefix.index_blocks
(10,000 blocks each, 31-block prompts no other node holds: the worst case, one holder per block) and prints its
memory (the process's resident growth), bytes per block and how long a full garbage collection then takes (the
gateway freezes its start-up heap, but the per-node tables are made later, so every full collection walks them).

`--affinity` adds the prefix_affinity scorer (weight 2) and gives every request a 2,000-token prompt (8,000
characters: one of 200 shared system prompts of 1,800 tokens plus its own 200-token question); a decision then also
cuts the prompt into blocks and hashes them (what the gateway does per request), looks the blocks up in the prefix
index and records the send there. The same run without the scorer is printed beside it (the ratio is the cost).
Each send also passes the prompt's estimated length (length.need_tokens, as the proxy does), which the node's
prefill backlog counts (expected_ttft).

`--streamed F` makes that share of the picks streamed ones (the stream heap, with the expected_ttft term and the
prefill backlog; bench/routing.py's mix streams 0.3), and their finishes report a first token, so that the nodes'
prefill rates are learned during the run.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections import deque
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tqdm import tqdm  # noqa: E402

from bench.benchlib import percentile  # noqa: E402
from control.policy.defaults import default_document  # noqa: E402
from control.policy.schemas import validate  # noqa: E402
from control.scheduler.config import Config  # noqa: E402
from control.scheduler.core import Metrics, NodeSpec, Scheduler  # noqa: E402
from control.scheduler.length import need_tokens  # noqa: E402
from control.scheduler.prefix_index import block_keys, prompt_text  # noqa: E402

CPU_CLOCK = False
PAST_SLO: list[Scheduler] = []  # the schedulers run, for the count of picks past the SLO
SLO_S = 0.0  # --slo: the policy's slo.latency_s (0: none, as the default)
ANSWERS: list[int] = []  # --answers: max_tokens of the picks, in turn (empty: none given)
WORST_LONG_WALK = False  # --worst-long-walk: no node fits a long answer, so _long_fit walks its whole bound
STREAMED = 0.0  # --streamed: the share of picks that are streamed


def with_slo(doc: dict) -> Config:
    if SLO_S:
        doc["slo"]["latency_s"] = SLO_S
    return Config.from_document(validate("scheduler", doc))


def affinity_config() -> Config:
    doc = default_document("scheduler")
    doc["scorers"] = [s for s in doc["scorers"] if s["metric"] != "prefix_affinity"]
    doc["scorers"].append({"metric": "prefix_affinity", "weight": 2.0, "invert": False})
    return with_slo(doc)


def prompts(rng: random.Random, n: int = 2000) -> list[dict[str, object]]:
    systems = [f"[system {g}] " + "".join(rng.choice("abcdefgh ") for _ in range(7200)) for g in range(200)]
    return [{"messages": [{"role": "system", "content": rng.choice(systems)},
                          {"role": "user", "content": f"[q {i}] " + "x" * 790}]} for i in range(n)]


def fleet(n: int, rng: random.Random, now: float) -> tuple[list[NodeSpec], dict[str, Metrics]]:
    specs = [NodeSpec(f"gpu-{i:05d}", f"pool-{i % 8}", "active", f"http://10.0.{i // 250}.{i % 250}:8000",
                      ("deepseek-r1",)) for i in range(n)]
    samples = {s.name: Metrics(now - rng.random() * 5, 1, rng.uniform(10, 95), rng.uniform(5, 80),
                               rng.uniform(0.1, 5), rng.uniform(0.05, 0.5), rng.randint(0, 30), rng.randint(0, 20),
                               rng.uniform(5, 90)) for s in specs}
    return specs, samples


def run(n: int, decisions: int, concurrency: int,
        affinity: bool | None = None) -> tuple[list[float], list[float], float, float]:
    """affinity None: the default policy, no prompts; False: the default policy with the prompts' keys computed
    (but no scorer to read them); True: the prefix_affinity scorer."""
    rng = random.Random(n)
    now = time.time()
    specs, samples = fleet(n, rng, now)
    sched = Scheduler(affinity_config() if affinity else with_slo(default_document("scheduler")), rng)
    PAST_SLO.append(sched)
    bodies = prompts(random.Random(1)) if affinity is not None else []
    cfg = sched.config
    t0 = time.perf_counter()
    sched.update(now, specs=specs, samples=samples)
    refresh_ms = (time.perf_counter() - t0) * 1000
    if WORST_LONG_WALK:
        for node in sched.nodes.values():  # a tail no request's ratio can bring down within the run
            node.long_mean = node.long_tail = 1e30
    pick_ns: list[float] = []
    finish_ns: list[float] = []
    in_flight: deque = deque()
    # --cpu-clock: this thread's CPU time, so that a decision preempted by another process on a loaded machine is
    # not counted as slow (wall time is the default: it is what a request sees).
    clock = time.thread_time_ns if CPU_CLOCK else time.perf_counter_ns
    tokens = [need_tokens(b) - 1 for b in bodies]  # the prompt's share of the estimate (no max_tokens: + 1)
    streamed = [rng.random() < STREAMED for _ in range(1000)]
    for rid in tqdm(range(decisions), desc=f"{n} nodes", unit="dec", leave=False, mininterval=0.5):
        body = bodies[rid % len(bodies)] if bodies else None
        answer = ANSWERS[rid % len(ANSWERS)] if ANSWERS else 0
        stream = streamed[rid % 1000]
        t = clock()
        if body is None:
            choice = sched.pick("deepseek-r1", answer=answer, stream=stream)
            sched.sent(choice.node, rid, now)
        else:
            keys = block_keys(prompt_text(body), cfg.prefix_block_chars, cfg.prefix_max_blocks) if affinity else ()
            choice = sched.pick("deepseek-r1", prefix=keys, answer=answer, stream=stream)
            sched.sent(choice.node, rid, now, keys, tokens[rid % len(tokens)])
        pick_ns.append(clock() - t)
        in_flight.append((choice.node, rid, stream))
        if len(in_flight) > concurrency:
            node, old, was_streamed = in_flight.popleft()
            t = clock()
            sched.finished(node, old, 0.1, stream=was_streamed)
            finish_ns.append(clock() - t)
    # What the gateway does every second: the registry again, and new samples from a fifth of the nodes (5 s interval).
    fresh = {name: Metrics(now + 1, 2, m.gpu_util_pct, m.cpu_util_pct, m.net_rtt_ms, m.ttft_p50_s, m.running,
                           m.waiting, m.kv_cache_pct) for name, m in list(samples.items())[: max(1, n // 5)]}
    t0 = time.perf_counter()
    sched.update(now + 1, specs=specs, samples=fresh)
    sched.tick(now + 1)
    second_ms = (time.perf_counter() - t0) * 1000
    return pick_ns, finish_ns, refresh_ms, second_ms


def index_memory(nodes: int) -> None:
    import gc

    from control.scheduler.prefix_index import PrefixIndex

    def rss_mib() -> float:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    capacity = Config.from_document(validate("scheduler", default_document("scheduler"))).prefix_index_blocks
    rng = random.Random(nodes)
    gc.collect()
    gc.freeze()  # as the gateway does at start-up: what is left for the collector is what the index adds
    before = rss_mib()
    index = PrefixIndex(capacity)
    for n in tqdm(range(nodes), desc="filling", unit="node", leave=False, mininterval=0.5):
        name = f"node-{n:05d}"
        for _ in range(capacity // 31 + 1):
            index.add(name, tuple(rng.getrandbits(63) for _ in range(31)))
    grown = rss_mib() - before
    blocks = sum(index.size(f"node-{n:05d}") for n in range(nodes))
    pauses = []
    for _ in range(3):
        t = time.perf_counter()
        gc.collect()
        pauses.append((time.perf_counter() - t) * 1000)
    print(f"{nodes} nodes x {capacity} blocks = {blocks:,} blocks: {grown:,.0f} MiB resident "
          f"({grown * 2**20 / blocks:.0f} B/block); a full collection then takes {min(pauses):.1f}-{max(pauses):.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--decisions", type=int, default=20000, help="decisions timed per fleet size")
    parser.add_argument("--sizes", default="100,1000,10000", help="fleet sizes, comma-separated")
    parser.add_argument("--concurrency", type=int, default=200, help="requests in flight in the simulated steady state")
    parser.add_argument("--affinity", action="store_true",
                        help="2,000-token prompts with the prefix_affinity scorer, beside the same without it")
    parser.add_argument("--cpu-clock", action="store_true",
                        help="time decisions in this thread's CPU time instead of wall time (a loaded machine)")
    parser.add_argument("--slo", type=float, default=0.0,
                        help="the policy's slo.latency_s in seconds (default: none, as the default policy); a small "
                             "value sends most picks down the past-the-SLO path")
    parser.add_argument("--answers", default="", metavar="N,N",
                        help="answer lengths (max_tokens) the picks ask for, in turn (default: none given)")
    parser.add_argument("--streamed", type=float, default=0.0, metavar="F",
                        help="the share of picks that are streamed (0-1; default 0: none)")
    parser.add_argument("--worst-long-walk", action="store_true",
                        help="no node fits a long answer: each long answer within the SLO looks at all LONG_FIT_SCAN heap "
                             "entries (the worst case of the long-answer rule; use with a large --slo)")
    parser.add_argument("--index-memory", type=int, default=0, metavar="N",
                        help="instead: the prefix index's memory and full-collection pause for N nodes, each with the "
                             "default prefix.index_blocks of blocks only it holds")
    args = parser.parse_args()
    if args.index_memory:
        index_memory(args.index_memory)
        return
    global CPU_CLOCK, SLO_S, ANSWERS, WORST_LONG_WALK, STREAMED
    if not 0 <= args.streamed <= 1:
        parser.error(f"--streamed: a share between 0 and 1, e.g. 0.3 (got {args.streamed:g})")
    STREAMED = args.streamed
    CPU_CLOCK = args.cpu_clock
    SLO_S = args.slo
    try:
        ANSWERS = [int(x) for x in args.answers.split(",") if x.strip()]
    except ValueError:
        parser.error(f"--answers: comma-separated whole numbers, e.g. 64,192 (got {args.answers!r})")
    if any(a < 1 for a in ANSWERS):
        parser.error("--answers: every answer length must be at least 1")
    WORST_LONG_WALK = args.worst_long_walk
    if args.affinity:
        print(f"one decision, {'thread CPU' if CPU_CLOCK else 'wall'} time: with affinity = the prompt's text from the "
              "body + its block keys (hashing) + pick + recording the send in the prefix index; without = pick + "
              "record, same bodies, no keys")
        print(f"{'nodes':>7} {'affinity p50':>13} {'p99':>9} {'without p50':>12} {'p99':>9} {'ratio p99':>10}")
        for n in (int(x) for x in args.sizes.split(",")):
            on = [v / 1000 for v in run(n, args.decisions, args.concurrency, affinity=True)[0]]
            off = [v / 1000 for v in run(n, args.decisions, args.concurrency, affinity=False)[0]]
            p99 = percentile(on, 0.99)
            print(f"{n:>7} {percentile(on, 0.5):>11.1f}us {p99:>7.1f}us {percentile(off, 0.5):>10.1f}us "
                  f"{percentile(off, 0.99):>7.1f}us {p99 / percentile(off, 0.99):>9.2f}x"
                  + (f"   target p99 < 100 us: {'met' if p99 < 100 else 'NOT met'}" if n == 1000 else ""))
        slo_line()
        return
    print(f"{'nodes':>7} {'decide p50':>11} {'decide p99':>11} {'finish p50':>11} {'finish p99':>11} "
          f"{'full re-score':>14} {'1 s refresh':>12}")
    for n in (int(x) for x in args.sizes.split(",")):
        picks, finishes, refresh_ms, second_ms = run(n, args.decisions, args.concurrency)
        us = [v / 1000 for v in picks]
        fus = [v / 1000 for v in finishes]
        print(f"{n:>7} {percentile(us, 0.5):>9.1f}us {percentile(us, 0.99):>9.1f}us "
              f"{percentile(fus, 0.5):>9.1f}us {percentile(fus, 0.99):>9.1f}us {refresh_ms:>12.1f}ms {second_ms:>10.1f}ms")
    slo_line()


def slo_line() -> None:
    if SLO_S:
        past = sum(x.counters.extra.get("past_slo", 0) for x in PAST_SLO)
        total = sum(x.counters.decisions for x in PAST_SLO)
        print(f"slo.latency_s {SLO_S:g} s: {past} of {total} picks went past the SLO (to the fewest in flight, or "
              "a holder of the prompt's prefix within one request of it)")
        if ANSWERS:
            long_past = sum(x.counters.extra.get("past_slo_long", 0) for x in PAST_SLO)
            fit = sum(x.counters.extra.get("long_fit", 0) for x in PAST_SLO)
            print(f"answers {','.join(map(str, ANSWERS))}: {long_past} long answers past the SLO took the best node; "
                  f"{fit} long answers went to another node than the score's pick (_long_fit)"
                  + ("; every node's long tail set out of reach (--worst-long-walk)" if WORST_LONG_WALK else ""))


if __name__ == "__main__":
    main()
