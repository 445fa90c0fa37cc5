"""The on-disk FIFO: order, acknowledgement, restarts, torn writes, the size bound."""

from __future__ import annotations

import tempfile
from collections import deque
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.spool import Spool


def sample(seq: int, pad: int = 0) -> dict:
    return {"seq": seq, "pad": "x" * pad}


def seqs(spool: Spool, n: int = 10_000) -> list[int]:
    return [s["seq"] for s in spool.peek(n)]


def test_fifo_peek_and_ack(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    for i in range(1, 6):
        spool.append(sample(i))
    assert len(spool) == 5
    assert seqs(spool, 3) == [1, 2, 3]
    assert seqs(spool, 3) == [1, 2, 3]  # peek does not consume
    spool.ack(2)
    assert len(spool) == 3 and seqs(spool) == [3, 4, 5]
    spool.ack(3)
    assert len(spool) == 0 and spool.peek(5) == []
    spool.append(sample(6))
    assert seqs(spool) == [6]
    with pytest.raises(ValueError):
        spool.ack(2)


def test_survives_a_restart_without_losing_or_replaying(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    for i in range(1, 11):
        spool.append(sample(i))
    spool.ack(4)
    again = Spool(tmp_path)
    assert len(again) == 6 and seqs(again) == [5, 6, 7, 8, 9, 10]
    again.append(sample(11))
    assert seqs(Spool(tmp_path)) == [5, 6, 7, 8, 9, 10, 11]


def test_segments_roll_over_and_acknowledged_ones_are_deleted(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_bytes=200)
    for i in range(1, 41):
        spool.append(sample(i, pad=20))
    files = sorted(tmp_path.glob("*.jsonl"))
    assert len(files) > 5
    spool.ack(30)
    assert len(sorted(tmp_path.glob("*.jsonl"))) < len(files)
    assert seqs(spool) == list(range(31, 41))
    assert seqs(Spool(tmp_path, segment_bytes=200)) == list(range(31, 41))
    spool.ack(10)
    assert len(spool) == 0 and len(list(tmp_path.glob("*.jsonl"))) <= 1


def test_a_torn_last_line_is_cut_off(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    for i in range(1, 4):
        spool.append(sample(i))
    segment = sorted(tmp_path.glob("*.jsonl"))[-1]
    with open(segment, "ab") as f:
        f.write(b'{"seq": 4, "pa')  # the process died mid-write
    again = Spool(tmp_path)
    assert seqs(again) == [1, 2, 3]
    again.append(sample(4))
    assert seqs(Spool(tmp_path)) == [1, 2, 3, 4]


def test_bound_drops_the_oldest_and_counts_them(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    line = len(b'{"seq":1,"pad":""}\n') + 100
    spool = Spool(tmp_path, max_bytes=10 * line + 5, segment_bytes=3 * line)
    for i in range(1, 26):
        spool.append(sample(i, pad=100 - len(str(i)) + 1))
    assert spool.pending_bytes <= 10 * line + 5
    kept = seqs(spool)
    assert kept == list(range(25 - len(kept) + 1, 26))  # the newest, in order
    assert spool.dropped == 25 - len(kept) and spool.dropped >= 14
    assert any("dropped" in r.getMessage() for r in caplog.records)
    assert seqs(Spool(tmp_path, max_bytes=10 * line + 5, segment_bytes=3 * line)) == kept


def test_a_bound_smaller_than_one_sample_keeps_the_newest(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=10)
    for i in range(1, 4):
        spool.append(sample(i, pad=50))
    assert seqs(spool) == [3]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.one_of(
    st.tuples(st.just("append"), st.integers(0, 300)),
    st.tuples(st.just("ack"), st.integers(1, 7)),
    st.tuples(st.just("restart"), st.just(0)),
), max_size=60))
def test_matches_a_queue_model_across_restarts(ops: list[tuple[str, int]]) -> None:
    with tempfile.TemporaryDirectory() as d:
        spool = Spool(d, segment_bytes=512)
        model: deque[int] = deque()
        seq = 0
        for op, arg in ops:
            if op == "append":
                seq += 1
                spool.append(sample(seq, pad=arg))
                model.append(seq)
            elif op == "ack":
                n = min(arg, len(model))
                spool.ack(n)
                for _ in range(n):
                    model.popleft()
            else:
                spool = Spool(d, segment_bytes=512)
            assert len(spool) == len(model)
            assert seqs(spool) == list(model)
