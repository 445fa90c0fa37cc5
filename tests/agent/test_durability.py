"""What survives a power loss: every sample the agent has taken, and a sequence that never goes back.

A power loss keeps only what was fsynced: a file's bytes up to its last fsync, and a directory entry only if the
directory was fsynced after the entry appeared. `PowerLoss` records every os.fsync and then does that to the
state directory, so these tests fail on code that writes without fsyncing, whatever the page cache of this
machine would have kept.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from agents.push import Pusher
from agents.spool import Spool
from tests.agent.test_push import IngestServer


class PowerLoss:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.synced_size: dict[int, int] = {}  # inode -> its size at its last fsync
        self.synced_names: dict[str, set[str]] = {}  # directory -> the names in it at its last fsync
        self.calls: list[str] = []  # the path of each fsync, in order
        real = os.fsync

        def fsync(fd: int) -> None:
            real(fd)
            path = os.readlink(f"/proc/self/fd/{fd}")
            st = os.fstat(fd)
            self.calls.append(path)
            if os.path.isdir(path):
                self.synced_names[path] = set(os.listdir(path))
            else:
                self.synced_size[st.st_ino] = st.st_size

        monkeypatch.setattr(os, "fsync", fsync)

    def strike(self, root: Path) -> None:
        """Cut everything under `root` (itself taken as durable) back to what was fsynced."""
        for dirpath, dirnames, filenames in os.walk(root.resolve(), topdown=False):
            durable = self.synced_names.get(dirpath, set())
            for name in dirnames:
                if name not in durable:
                    shutil.rmtree(os.path.join(dirpath, name))
            for name in filenames:
                path = os.path.join(dirpath, name)
                if name not in durable:
                    os.unlink(path)
                else:
                    os.truncate(path, self.synced_size.get(os.stat(path).st_ino, 0))


def die(pusher: Pusher) -> None:
    """The process ends without close(): only its flock goes, as the kernel releases it."""
    os.close(pusher._lock_fd)
    pusher._lock_fd = -1


@pytest.fixture
def power(monkeypatch: pytest.MonkeyPatch) -> PowerLoss:
    return PowerLoss(monkeypatch)





def test_every_collected_sample_survives_a_power_loss(server: IngestServer, make: Callable[..., Pusher],
                                                      tmp_path: Path, power: PowerLoss) -> None:
    (tmp_path / "state").mkdir()
    first = make(server.url)
    for _ in range(3):
        first.collect_once()
    assert first.flush() and server.seqs == [1, 2, 3]
    server.stop()
    taken = [first.collect_once()["seq"] for _ in range(4)]  # buffered during an outage
    assert not first.flush()
    die(first)
    power.strike(tmp_path / "state")

    server.start()
    second = make(server.url)
    assert second.once()
    # The four buffered samples arrive, and the new one gets a number no sample ever had (a reused one would be
    # dropped by the server as a duplicate).
    assert server.seqs == [1, 2, 3, *taken, 8]


def test_the_sequence_never_goes_back_after_a_power_loss(server: IngestServer, make: Callable[..., Pusher],
                                                         tmp_path: Path, power: PowerLoss) -> None:
    (tmp_path / "state").mkdir()
    first = make(server.url)
    for _ in range(5):
        assert first.once()
    die(first)
    power.strike(tmp_path / "state")

    second = make(server.url)
    assert second.once()
    assert server.seqs == [1, 2, 3, 4, 5, 6]


def test_one_fsync_per_append_and_the_directory_when_a_segment_is_created(tmp_path: Path,
                                                                          power: PowerLoss) -> None:
    spool = Spool(tmp_path / "spool", segment_bytes=200)
    power.calls.clear()
    spool.append({"seq": 1})
    segment = str(tmp_path / "spool" / "000000000001.jsonl")
    # The new segment's bytes, then the directory entry that names it.
    assert power.calls == [segment, str(tmp_path / "spool")]
    power.calls.clear()
    spool.append({"seq": 2})
    assert power.calls == [segment]  # one fsync per append, nothing else
    power.calls.clear()
    spool.append({"seq": 3, "pad": "x" * 300})  # fills the segment
    spool.append({"seq": 4})  # the next one starts a new segment
    assert power.calls == [segment, str(tmp_path / "spool" / "000000000002.jsonl"), str(tmp_path / "spool")]


def test_a_new_spool_directory_is_made_durable(tmp_path: Path, power: PowerLoss) -> None:
    spool = Spool(tmp_path / "a" / "spool")
    spool.append({"seq": 1})
    power.strike(tmp_path)
    assert [s["seq"] for s in Spool(tmp_path / "a" / "spool").peek(10)] == [1]


def test_a_clean_stop_leaves_the_sequence_in_the_seq_file(server: IngestServer, make: Callable[..., Pusher],
                                                          tmp_path: Path) -> None:
    """An older agent (or one whose spool was deleted by hand) reads only the seq file: it must be current."""
    pusher = make(server.url)
    for _ in range(3):
        pusher.collect_once()
    pusher.close()
    assert (tmp_path / "state" / "seq").read_text() == "3"
