"""A bounded on-disk FIFO of samples: the agent's buffer for when the server is down.

Samples are JSON lines appended to segment files (`000000000001.jsonl`, ...). An append is fsynced before it
returns (and the directory too when it created a segment file), so a sample the spool took survives a power loss,
not only a crash. Progress is a separate `ack` file (segment id + byte offset) replaced atomically, so a crash after
a push but before its ack replays those samples (the server counts them as duplicates) and a crash mid-append
leaves a torn last line that the next start cuts off. Nothing is ever reordered. When the buffer outgrows its bound
the oldest samples are dropped and counted.

The newest line ever appended stays on disk after it is acknowledged (the newest segment file is never deleted),
so `newest` tells a restarted agent the last sequence number it handed out.

Not thread-safe: one push loop owns a spool.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

try:
    import orjson

    def dumps(obj: Any) -> bytes:
        return orjson.dumps(obj)

    def loads(data: bytes | str) -> Any:
        return orjson.loads(data)

except ImportError:  # orjson is optional on an agent host

    def dumps(obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()

    def loads(data: bytes | str) -> Any:
        return json.loads(data)


SEGMENT_BYTES = 4 * 1024 * 1024
ACK_FILE = "ack"


def fsync_dir(path: Path) -> None:
    """Make the entries of directory `path` (a file created or renamed in it) survive a power loss."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: Path) -> None:
    """`mkdir -p` whose result survives a power loss: each directory it creates is fsynced into its parent."""
    if path.is_dir():
        return
    make_dirs(path.parent)
    try:
        path.mkdir()
    except FileExistsError:
        if not path.is_dir():
            raise
        return
    fsync_dir(path.parent)


def atomic_write(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that a crash leaves either the old or the new content, never a mix."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@dataclass
class _Segment:
    id: int
    path: Path
    size: int
    lines: int


# A read position: (index into the segment list, byte offset in that segment, lines consumed in that segment).
_Position = tuple[int, int, int]


class Spool:
    def __init__(self, directory: Path | str, max_bytes: int = 64 * 1024 * 1024,
                 segment_bytes: int = SEGMENT_BYTES) -> None:
        self.dir = Path(directory)
        make_dirs(self.dir)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.dropped = 0
        self._segments: list[_Segment] = []
        self._head_offset = 0
        self._head_lines = 0
        self.newest: bytes | None = None  # the newest line ever appended, acknowledged or not
        self._load()

    # -- startup ---------------------------------------------------------------------------------------------

    def _path(self, seg_id: int) -> Path:
        return self.dir / f"{seg_id:012d}.jsonl"

    def _load(self) -> None:
        ack_seg, ack_offset = self._read_ack()
        ids = sorted(int(p.stem) for p in self.dir.glob("*.jsonl") if p.stem.isdigit())
        for seg_id in ids:
            path = self._path(seg_id)
            if seg_id < ack_seg:
                path.unlink(missing_ok=True)  # fully acknowledged before a crash interrupted its removal
                continue
            data = path.read_bytes()
            if data and not data.endswith(b"\n"):
                keep = data.rfind(b"\n") + 1
                log.warning("spool %s: cutting off a torn last line (%d bytes) left by a crash", path.name,
                            len(data) - keep)
                with open(path, "r+b") as f:
                    f.truncate(keep)
                data = data[:keep]
            if seg_id == ack_seg and not self._segments:
                offset = min(ack_offset, len(data))
                if offset and data[offset - 1:offset] != b"\n":  # never start mid-line, whatever the ack file says
                    offset = data.find(b"\n", offset) + 1 or len(data)
                self._head_offset, self._head_lines = offset, data.count(b"\n", 0, offset)
            if data:
                self.newest = data[data.rfind(b"\n", 0, len(data) - 1) + 1:]
            self._segments.append(_Segment(seg_id, path, len(data), data.count(b"\n")))

    def _read_ack(self) -> tuple[int, int]:
        try:
            doc = loads((self.dir / ACK_FILE).read_bytes())
            return int(doc["segment"]), int(doc["offset"])
        except FileNotFoundError:
            return 0, 0
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("spool ack file unreadable (%s); replaying from the oldest segment", exc)
            return 0, 0

    # -- queue operations ------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return sum(s.lines for s in self._segments) - self._head_lines

    @property
    def pending_bytes(self) -> int:
        return sum(s.size for s in self._segments) - self._head_offset

    def append(self, sample: dict[str, Any]) -> None:
        """Add `sample` at the tail; it is on stable storage when this returns (one fsync, two when a segment
        file is started)."""
        line = dumps(sample) + b"\n"
        if not self._segments or self._segments[-1].size >= self.segment_bytes:
            seg_id = self._segments[-1].id + 1 if self._segments else 1
            self._segments.append(_Segment(seg_id, self._path(seg_id), 0, 0))
        seg = self._segments[-1]
        with open(seg.path, "ab") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        if seg.size == 0:  # a new segment file: its name must be durable too
            fsync_dir(self.dir)
        seg.size += len(line)
        seg.lines += 1
        self.newest = line
        self._enforce_bound()

    def peek_raw(self, n: int) -> list[bytes]:
        """The oldest `n` samples (or fewer) as their JSON lines, without removing them."""
        return self._read(n)[0]

    def peek(self, n: int) -> list[dict[str, Any]]:
        return [loads(line) for line in self.peek_raw(n)]

    def ack(self, n: int) -> None:
        """Remove the oldest `n` samples, durably."""
        lines, position = self._read(n)
        if len(lines) < n:
            raise ValueError(f"cannot ack {n} samples: the spool holds {len(lines)}")
        self._commit(position)

    # -- internals -------------------------------------------------------------------------------------------

    def _scan(self) -> Iterator[tuple[bytes, _Position]]:
        """Lines from the head on, each with the position just after it."""
        for idx in range(len(self._segments)):
            seg = self._segments[idx]
            offset, lines = (self._head_offset, self._head_lines) if idx == 0 else (0, 0)
            if offset >= seg.size:
                continue
            with open(seg.path, "rb") as f:
                f.seek(offset)
                for line in f:
                    offset += len(line)
                    lines += 1
                    # A used-up segment is left behind, so that the commit deletes it.
                    at_end = offset >= seg.size and idx + 1 < len(self._segments)
                    yield line, ((idx + 1, 0, 0) if at_end else (idx, offset, lines))

    def _read(self, n: int) -> tuple[list[bytes], _Position]:
        out: list[bytes] = []
        position: _Position = (0, self._head_offset, self._head_lines)
        if n <= 0:
            return out, position
        for line, after in self._scan():
            out.append(line)
            position = after
            if len(out) >= n:
                break
        return out, position

    def _commit(self, position: _Position) -> None:
        idx, offset, lines = position
        if not self._segments:
            return
        head = self._segments[idx]
        atomic_write(self.dir / ACK_FILE, dumps({"segment": head.id, "offset": offset}))
        for seg in self._segments[:idx]:  # after the ack is durable, so a crash here only leaves extra files
            seg.path.unlink(missing_ok=True)
        self._segments = self._segments[idx:]
        self._head_offset, self._head_lines = offset, lines

    def _enforce_bound(self) -> None:
        excess = self.pending_bytes - self.max_bytes
        keep_newest = len(self) - 1  # a bound smaller than one sample still buffers the latest state
        if excess <= 0 or keep_newest <= 0:
            return
        drop, freed = 0, 0
        position: _Position | None = None
        for line, after in self._scan():
            freed += len(line)
            drop += 1
            position = after
            if freed >= excess or drop >= keep_newest:
                break
        if position is not None and drop:
            self._commit(position)
            self.dropped += drop
            log.warning("spool over its %.1f MiB bound: dropped the %d oldest sample(s) (%d dropped since start)",
                        self.max_bytes / 2**20, drop, self.dropped)
