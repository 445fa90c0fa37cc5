"""The push loop: collect a sample every interval, spool it, push the spool to the server in order.

Every sample goes through the on-disk spool, pushed or not, so the order on the server is the order of
collection and an outage, a crash, a power loss or a restart loses nothing but what the spool's bound drops. The
server's answer steers the loop: 200 acknowledges and carries what the controller wants of this node (`desired`);
a 400 that names samples by index (`samples[3].gpus[1].temp_c`) sends exactly those to a dead-letter file, with
the server's reason for each, once the rest of the push is stored; 413 halves the batch; any other 400 (about the
push as a whole), 401/403/429/5xx and network errors keep every sample and back off.
"""

from __future__ import annotations

import fcntl
import gzip
import itertools
import json
import logging
import math
import os
import random
import re
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx

from agents import __version__
from agents.catalogue import GPU_METRICS, HOST_METRICS, INFERENCE_METRICS, Metric
from agents.collectors.base import Backend, finite
from agents.spool import Spool, atomic_write, dumps, fsync_dir, loads, make_dirs

log = logging.getLogger(__name__)

AGENT = f"switchyard-agent/{__version__}"
INGEST_PATH = "/api/v1/ingest"
MAX_BATCH = 100
MAX_BACKOFF_S = 60.0
MAX_RETRY_AFTER_S = 3600.0  # a server asking for more than an hour is treated as asking for an hour
MODELS_REFRESH_S = 60.0
INTERVAL_RANGE = (1, 300)
NODE_STATES = frozenset({"active", "draining", "cordoned"})
GPU_ID_KEYS = ("index", "uuid", "name")
MAX_MODELS, MAX_MODEL_NAME = 64, 200  # what the server accepts
MAX_GPU_INDEX = 255  # what the server accepts as a GPU index


@dataclass
class PushConfig:
    server: str
    token: str = field(repr=False)  # never in a log line or a repr
    node: str
    state_dir: Path
    interval_s: int = 5
    endpoint: str | None = None
    buffer_max_mb: float = 64.0
    timeout_s: float = 10.0
    # Seconds between pushes; None: push after every sample. Samples are still collected (and spooled) every
    # interval: a push then carries several, which costs the server less per value than one push per sample.
    batch_interval_s: int | None = None


class StateDirBusy(RuntimeError):
    pass


def iso_now() -> str:
    now = datetime.now(UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def clamp_interval(value: float) -> int:
    return int(max(INTERVAL_RANGE[0], min(INTERVAL_RANGE[1], round(value))))


_out_of_range_warned: set[str] = set()


def _value(m: Metric, raw: Any) -> Any:
    value = finite(raw)
    if value is None:
        return None
    if not m.lo <= value <= m.hi:
        if not m.is_pct:
            # A reading outside the physical range is a glitch; sent as is, the server would refuse the whole batch.
            if m.name not in _out_of_range_warned:
                _out_of_range_warned.add(m.name)
                log.warning("%s reads %r, outside %s..%s; sending null", m.name, raw, m.lo, m.hi)
            return None
        value = max(m.lo, min(m.hi, value))  # rounding pushes percentages a hair past 100
    if m.integer:
        return int(round(value))
    return raw if isinstance(raw, int) and not isinstance(raw, bool) and value == raw else value


def _clean(metrics: tuple[Metric, ...], values: Any, ids: tuple[str, ...] = ()) -> dict[str, Any]:
    values = values if isinstance(values, dict) else {}
    out: dict[str, Any] = {k: values.get(k) for k in ids}
    out.update((m.name, _value(m, values.get(m.name))) for m in metrics)
    return out


def normalize(body: dict[str, Any]) -> dict[str, Any]:
    """A backend's sample body held to the catalogue: every name present, finite, in range, whole where whole."""
    return {
        "host": _clean(HOST_METRICS, body.get("host")),
        "gpus": [_clean(GPU_METRICS, g, GPU_ID_KEYS) for g in body.get("gpus") or []],
        "inference": _clean(INFERENCE_METRICS, body.get("inference")),
    }


def _retry_after(header: str | None) -> float | None:
    if not header:
        return None
    try:
        seconds = float(header)
    except ValueError:
        try:
            seconds = (parsedate_to_datetime(header) - datetime.now(UTC)).total_seconds()
        except (TypeError, ValueError):
            return None
    return max(0.0, min(MAX_RETRY_AFTER_S, seconds)) if math.isfinite(seconds) else None


# A field path of a 400 that points into one sample of the push: "samples[3]", "samples[3].gpus[1].temp_c".
_SAMPLE_PATH = re.compile(r"samples\[(\d{1,9})\](?=$|[.\[])")
MAX_TOLD = 64  # distinct refusals of a whole push remembered, so that each is logged once


def _named_samples(reply: dict[str, Any], count: int) -> dict[int, dict[str, str]]:
    """The samples of a `count`-sample push that a 400 names by index, each with the server's words about it.
    A path that names no sample of the push (`node`, `samples` itself, an index past the end) is not counted."""
    fields = reply.get("fields")
    named: dict[int, dict[str, str]] = {}
    if isinstance(fields, dict):
        for path, message in fields.items():
            m = _SAMPLE_PATH.match(path) if isinstance(path, str) else None
            if m is not None and int(m.group(1)) < count:
                named.setdefault(int(m.group(1)), {})[path] = str(message)
    return named


def _reply(resp: httpx.Response) -> dict[str, Any]:
    try:
        doc = resp.json()
    except ValueError:
        return {"error": resp.text[:500]}
    return doc if isinstance(doc, dict) else {"error": str(doc)[:500]}


def _said(reply: dict[str, Any], status: int) -> str:
    """The server's message on one line (a proxy's HTML page must not spill lines into the log), bounded."""
    return " ".join(str(reply.get("error") or f"HTTP {status}").split())[:500]


class Pusher:
    """Owns a state directory (spool, sequence number, dead letters) and pushes a backend's samples.

    `clock`, `sleep` and `rng` are injectable so that tests drive time instead of waiting for it.
    """

    def __init__(self, config: PushConfig, backend: Backend, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Any] | None = None, rng: random.Random | None = None) -> None:
        self.config = config
        self.backend = backend
        self._clock = clock
        self._stop = threading.Event()
        self._sleep = sleep if sleep is not None else self._stop.wait
        self._rng = rng if rng is not None else random.Random()
        self.state_dir = Path(config.state_dir)
        make_dirs(self.state_dir)
        self._lock_fd = self._lock()
        self.spool = Spool(self.state_dir / "spool", max_bytes=int(config.buffer_max_mb * 1024 * 1024))
        self.deadletter_path = self.state_dir / "deadletter.jsonl"
        self._seq_path = self.state_dir / "seq"
        self._seq = max(self._load_seq(), self._spooled_seq())
        self._url = config.server.rstrip("/") + INGEST_PATH
        self.headers = {
            "Authorization": f"Bearer {config.token}",
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
            "User-Agent": AGENT,
        }
        self._client = self._open_client()
        self.interval = clamp_interval(config.interval_s)
        self.batch_interval = config.batch_interval_s
        # What this agent did of the server's wishes, sent with every push: the interval it uses; per GPU the
        # power limit it set (after the board's clamping), the limit it was asked for, and the board's default.
        self.applied: dict[str, Any] = {"interval_s": self.interval, "power_limit_w": {}, "power_asked_w": {},
                                        "power_default_w": {}}
        self.state: str | None = None
        self.last_error: str | None = None
        self._failures = 0
        self._retry_at = -math.inf
        # Samples per push: halved after a 413 or a 400 on the `samples` list, back to MAX_BATCH once the spool is
        # drained (the backlog that met the limit is pushed in pieces that fit, not refused again and again).
        self._limit = MAX_BATCH
        # Spooled lines the server named as bad, with the status and reason: they go to the dead letters once the
        # rest of their push is stored, so that a sample is never dead-lettered while its good neighbours may
        # still be lost, nor twice.
        self._refused: dict[bytes, tuple[int, dict[str, Any]]] = {}
        self._told: set[str] = set()  # refusals of a whole push logged since the last accepted push
        self._rtt_ms: float | None = None
        self._models: list[str] | None = None
        self._models_at = -math.inf
        self._desired_power: dict[int, float] = {}  # the last wish per GPU: NVML is only called when it changes
        self._power_defaults: dict[int, float | None] = {}  # read once per GPU, when it is first seen
        self._capped_path = self.state_dir / "power-capped.json"
        self._capped: set[int] = self._load_capped()  # GPUs this agent capped: the only ones it ever uncaps
        self._restore_failed: set[int] = set()  # not retried on every push; a new wish for the GPU clears it

    def _open_client(self) -> Any:
        """The HTTP client pushes go through; a subclass that drives `flush_steps` itself may return None."""
        return httpx.Client(timeout=httpx.Timeout(self.config.timeout_s), headers=self.headers)

    @property
    def url(self) -> str:
        return self._url

    @property
    def retry_at(self) -> float:
        """Clock value before which a push is not retried after a failure (-inf when none failed)."""
        return self._retry_at

    # -- state directory -------------------------------------------------------------------------------------

    def _lock(self) -> int:
        # Two agents on one state directory would interleave sequence numbers and ack each other's samples.
        fd = os.open(self.state_dir / "agent.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StateDirBusy(f"another agent is already using the state directory {self.state_dir}") from None
        return fd

    def _load_seq(self) -> int:
        try:
            return int(self._seq_path.read_text().strip())
        except FileNotFoundError:
            return 0
        except ValueError:
            log.warning("%s is unreadable; sequence numbers restart at 1", self._seq_path)
            return 0

    def _spooled_seq(self) -> int:
        """The sequence number of the newest sample the spool ever took (0 when none or unreadable)."""
        if self.spool.newest is None:
            return 0
        try:
            seq = loads(self.spool.newest).get("seq")
        except (ValueError, AttributeError):
            return 0
        return seq if type(seq) is int and seq >= 0 else 0

    def _next_seq(self) -> int:
        # A sequence number handed out twice would make the server drop a sample as a duplicate. The spool is
        # what makes it durable: a number leaves this process only in a pushed sample, which is fsynced in the
        # spool first, and the spool keeps its newest line after it is acknowledged, so a restart continues above
        # it (`_spooled_seq`). The seq file is written on a clean stop, for an older agent and a spool deleted by
        # hand; writing it for every sample would double the fsyncs.
        self._seq += 1
        return self._seq

    @property
    def seq(self) -> int:
        return self._seq

    # -- collection ------------------------------------------------------------------------------------------

    def collect_once(self) -> dict[str, Any]:
        """Collect one sample and append it to the spool."""
        ts = iso_now()
        raw = self.backend.collect()
        host = dict(raw.get("host") or {}, net_rtt_ms=self._rtt_ms)
        sample = {"ts": ts, "seq": self._next_seq(), **normalize({**raw, "host": host})}
        self.spool.append(sample)
        self._refresh_models()
        self._read_power_defaults(sample["gpus"])
        return sample

    def _read_power_defaults(self, gpus: list[dict[str, Any]]) -> None:
        for g in gpus:
            index = g.get("index")
            if type(index) is int and index not in self._power_defaults:
                self._default_power(index)

    def _default_power(self, index: int) -> float | None:
        """GPU `index`'s default power limit, asked of the backend once (a board constant); None if unknown."""
        if index in self._power_defaults:
            return self._power_defaults[index]
        read = getattr(self.backend, "default_power_limit", None)
        watts = None
        if read is not None:
            try:
                watts = finite(read(index))
            except Exception:  # noqa: BLE001 - an unknown default only means caps cannot be lifted
                log.exception("reading GPU %d's default power limit failed", index)
        watts = watts if watts is not None and watts > 0 else None
        self._power_defaults[index] = watts
        if watts is not None:
            self.applied["power_default_w"][str(index)] = watts
        return watts

    def _refresh_models(self) -> None:
        if self._clock() - self._models_at < MODELS_REFRESH_S:
            return
        self._models_at = self._clock()
        models = self.backend.models()
        if models is not None:
            self._models = [m for m in models if isinstance(m, str) and 0 < len(m) <= MAX_MODEL_NAME][:MAX_MODELS]

    # -- pushing ---------------------------------------------------------------------------------------------

    def _payload(self, samples: list[Any]) -> bytes:
        doc: dict[str, Any] = {"node": self.config.node, "agent": AGENT}
        if self.config.endpoint:
            doc["endpoint"] = self.config.endpoint
        if self._models is not None:
            doc["models"] = self._models
        # What the inference server runs (model, max model length, quantization ...), where the backend knows.
        serving = getattr(self.backend, "serving", None)
        if callable(serving) and (block := serving()) is not None:
            doc["serving"] = block
        doc["applied"] = self.applied
        doc["samples"] = samples
        return gzip.compress(dumps(doc), compresslevel=6)

    def _next_batch(self, limit: int) -> tuple[list[tuple[bytes, Any]], bytes | None]:
        """Up to `limit` oldest samples with their spooled lines; or, when the oldest line is unreadable,
        ([], that line)."""
        batch: list[tuple[bytes, Any]] = []
        for raw in self.spool.peek_raw(limit):
            try:
                batch.append((raw, loads(raw)))
            except ValueError:
                if not batch:
                    return [], raw
                break  # pushed on its own next round, so that only it goes to the dead letters
        return batch, None

    def flush(self, deadline: float | None = None) -> bool:
        """Push spooled samples oldest first. True when the spool is empty; False after a failed push (the
        samples stay and a retry time is set) or when `deadline` (a clock value) passes."""
        steps = self.flush_steps(deadline)
        try:
            body = next(steps)
            while True:
                try:
                    resp = self._client.post(self._url, content=body)
                except httpx.HTTPError as exc:
                    body = steps.throw(exc)
                else:
                    body = steps.send(resp)
        except StopIteration as done:
            return bool(done.value)

    def flush_steps(self, deadline: float | None = None) -> Generator[bytes, httpx.Response, bool]:
        """`flush` without the I/O: yields each request body to POST to `url` and takes the response back (or
        the httpx.HTTPError the post raised, thrown in); returns what `flush` returns. An asynchronous pusher
        (the fleet simulator's) drives the same decisions with its own client."""
        while len(self.spool):
            if deadline is not None and self._clock() >= deadline:
                return False
            batch, unreadable = self._next_batch(self._limit)
            if unreadable is not None:
                self._dead_letter([unreadable.decode(errors="replace")], None, {"error": "unreadable spool line"})
                self.spool.ack(1)
                continue
            send = [(raw, sample) for raw, sample in batch if raw not in self._refused]
            if not send:
                self._settle(batch)
                continue
            try:
                started = time.perf_counter()
                resp = yield self._payload([sample for _, sample in send])
            except httpx.HTTPError as exc:
                self._fail(f"push to {self._url} failed: {type(exc).__name__}: {exc}")
                return False
            status = resp.status_code
            if status == 200:
                self._rtt_ms = round((time.perf_counter() - started) * 1000.0, 3)
                self._settle(batch)
                self._failures = 0
                self.last_error = None
                self._told.clear()
                self._apply(_reply(resp).get("desired"))
                continue
            reply = _reply(resp)
            said = _said(reply, status)
            if status == 400:
                # The server stores nothing of a push it refuses and names each bad field by its path. The samples
                # it names are set aside with its words about each; the rest of the push goes again at once.
                named = _named_samples(reply, len(send))
                for index, fields in named.items():
                    reason = {"error": "; ".join(f"{path}: {message}" for path, message in fields.items()),
                              "fields": fields}
                    self._refused[send[index][0]] = (status, reason)
                if named:
                    continue
                # A 400 that names no sample (the node, endpoint or models, the body, `samples` itself) says
                # nothing against any sample: all of them stay and the agent backs off. When it is about the list
                # itself, the next push is also smaller: a server older than the 413 says "too many samples" so.
                fields = reply.get("fields")
                if isinstance(fields, dict) and "samples" in fields:
                    self._limit = max(1, len(batch) // 2)
                told = said in self._told
                if not told:
                    if len(self._told) >= MAX_TOLD:
                        self._told.clear()
                    self._told.add(said)
                self._fail(f"server refused the push as a whole (400: {said}); nothing of it was stored",
                           level=logging.DEBUG if told else logging.ERROR)
                return False
            if status == 413:
                if len(send) > 1:
                    self._limit = max(1, len(batch) // 2)
                    log.warning("server says a %d-sample push is too large; retrying with %d", len(send),
                                self._limit)
                else:  # a single sample too large for the server: dead-lettered when its batch is settled
                    self._refused[send[0][0]] = (status, {"error": f"alone too large for the server: {said}"})
                continue
            if status == 401:
                self._fail(f"server rejected the token (401: {said}): the token is wrong or revoked; check "
                           "--token / SWITCHYARD_AGENT_TOKEN", level=logging.ERROR)
                return False
            if status == 403:
                self._fail(f"server refused this node's push (403: {said}): the token belongs to another node "
                           f"than {self.config.node!r}; check --node and --token", level=logging.ERROR)
                return False
            self._fail(f"server answered {status}: {said}", retry_after=_retry_after(resp.headers.get("Retry-After")))
            return False
        self._limit = MAX_BATCH
        self._refused.clear()
        return True

    def _settle(self, batch: list[tuple[bytes, Any]]) -> None:
        """The batch's good samples are stored: dead-letter the ones the server refused, then drop them all."""
        for raw, sample in batch:
            refused = self._refused.pop(raw, None)
            if refused is not None:
                status, reason = refused
                self._dead_letter([sample], status, reason)
                log.error("server refused sample seq %s: %s; moved to %s", sample.get("seq"), reason["error"],
                          self.deadletter_path)
        self.spool.ack(len(batch))

    def _fail(self, message: str, level: int = logging.WARNING, retry_after: float | None = None) -> None:
        """Keep the samples and schedule the next try: Retry-After when the server gave one, else exponential
        backoff with jitter (so a fleet does not return in lockstep after an outage), capped."""
        self._failures += 1
        if retry_after is not None and retry_after > 0:
            delay = retry_after
        else:
            base = min(MAX_BACKOFF_S, 2.0 ** (self._failures - 1))
            delay = base / 2 + self._rng.uniform(0.0, base / 2)
        self._retry_at = self._clock() + delay
        self.last_error = message
        log.log(level, "%s; %d sample(s) kept, next try in %.1f s", message, len(self.spool), delay)

    def _dead_letter(self, samples: list[Any], status: int | None, reason: Any) -> None:
        # Durable before the spool lets the samples go: a dead letter is the only copy left.
        at = iso_now()
        created = not self.deadletter_path.exists()
        with open(self.deadletter_path, "ab") as f:
            for sample in samples:
                f.write(dumps({"dead_at": at, "status": status, "reason": reason, "sample": sample}) + b"\n")
            f.flush()
            os.fsync(f.fileno())
        if created:
            fsync_dir(self.state_dir)

    # -- what the server wants -------------------------------------------------------------------------------

    def _apply(self, desired: Any) -> None:
        if not isinstance(desired, dict):
            return
        interval = finite(desired.get("interval_s"))
        if interval is not None and clamp_interval(interval) != self.interval:
            self.interval = clamp_interval(interval)
            self.applied["interval_s"] = self.interval
            log.info("server set the interval to %d s", self.interval)
        state = desired.get("state")
        if state in NODE_STATES and state != self.state:
            log.info("server set this node's state to %s", state)
            self.state = state
        limits = desired.get("power_limit_w")
        if isinstance(limits, dict):  # no block at all (an older server) says nothing about power
            self._apply_power(limits)

    def _apply_power(self, limits: dict[Any, Any]) -> None:
        """`limits` is the whole wish for this node: a GPU it names gets that cap; a GPU it leaves out, or names
        with null, is uncapped, which restores the board's default limit only on a GPU this agent capped (a card
        the controller never capped is never touched). A value that makes no sense leaves its GPU as it is."""
        wanted: dict[int, float] = {}
        unsure: set[int] = set()
        for key, raw in itertools.islice(limits.items(), MAX_GPU_INDEX + 1):
            key_s = str(key)
            index = int(key_s) if key_s.isdigit() and int(key_s) <= MAX_GPU_INDEX else None
            if index is not None and raw is None:
                continue
            watts = finite(raw)
            if index is None or watts is None or watts <= 0:
                log.warning("ignoring desired power limit %r: %r", key, raw)
                if index is not None:
                    unsure.add(index)
                continue
            wanted[index] = watts
        for index, watts in wanted.items():
            self._cap(index, watts)
        for index in sorted((set(self._desired_power) | self._capped) - set(wanted) - unsure):
            self._uncap(index)

    def _cap(self, index: int, watts: float) -> None:
        # Desired state comes with every answer; NVML is only asked again when the wish changes.
        if self._desired_power.get(index) == watts:
            return
        self._desired_power[index] = watts
        self._restore_failed.discard(index)
        applied = self.backend.set_power_limit(index, watts)
        if applied is None:
            log.warning("GPU %d: the power limit of %.1f W was not applied", index, watts)
            return
        self.applied["power_limit_w"][str(index)] = applied
        self.applied["power_asked_w"][str(index)] = watts
        self._set_capped(index, True)
        log.info("GPU %d power limit set to %.1f W (asked %.1f W)", index, applied, watts)

    def _uncap(self, index: int) -> None:
        self._desired_power.pop(index, None)
        if index not in self._capped or index in self._restore_failed:
            return
        default = self._default_power(index)
        applied = self.backend.set_power_limit(index, default) if default is not None else None
        if applied is None:
            self._restore_failed.add(index)
            log.warning("GPU %d: could not restore its default power limit (%s); it stays capped", index,
                        "the default is unknown" if default is None else f"setting {default:.1f} W failed")
            return
        self.applied["power_limit_w"].pop(str(index), None)
        self.applied["power_asked_w"].pop(str(index), None)
        self._set_capped(index, False)
        log.info("GPU %d uncapped: power limit restored to its default %.1f W", index, applied)

    def _load_capped(self) -> set[int]:
        # Persisted so that an agent restarted while a card is capped still lifts that cap when asked to.
        try:
            doc = json.loads(self._capped_path.read_text())
        except FileNotFoundError:
            return set()
        except ValueError:
            log.warning("%s is unreadable; no GPU is known to be capped by this agent", self._capped_path)
            return set()
        items = doc if isinstance(doc, list) else []
        return {i for i in items if type(i) is int and 0 <= i <= MAX_GPU_INDEX}

    def _set_capped(self, index: int, capped: bool) -> None:
        if (index in self._capped) == capped:
            return
        if capped:
            self._capped.add(index)
        else:
            self._capped.discard(index)
        atomic_write(self._capped_path, json.dumps(sorted(self._capped)).encode())

    # -- loop ------------------------------------------------------------------------------------------------

    def once(self) -> bool:
        """Collect one sample and push everything spooled; True when all of it reached the server."""
        self.collect_once()
        return self.flush()

    def run(self, max_iterations: int | None = None) -> None:
        """Collect every `interval` seconds and push between collections (every `batch_interval` seconds when
        set: the first sample at once, then what was spooled meanwhile), until stop() (or `max_iterations`)."""
        next_collect = self._clock()
        next_push = next_collect
        done = 0
        while not self._stop.is_set():
            now = self._clock()
            if now >= next_collect:
                try:
                    self.collect_once()
                except Exception:  # noqa: BLE001 - one bad reading must not end the agent
                    log.exception("collecting a sample failed")
                done += 1
                next_collect += self.interval
                if next_collect <= now:  # fell behind (a slow push): skip the missed ticks rather than burst
                    next_collect = now + self.interval
            if len(self.spool) and self._clock() >= max(self._retry_at, next_push):
                if self.batch_interval is not None:
                    # The server may set an interval longer than the batch interval: never push more often
                    # than samples are taken.
                    period = max(self.batch_interval, self.interval)
                    next_push += period
                    if next_push <= self._clock():
                        next_push = self._clock() + period
                self.flush(deadline=next_collect)
            if max_iterations is not None and done >= max_iterations:
                return
            wake = min(next_collect, max(self._retry_at, next_push)) if len(self.spool) else next_collect
            self._sleep(max(0.0, wake - self._clock()))

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        if self._lock_fd >= 0:
            try:
                atomic_write(self._seq_path, str(self._seq).encode())
            except OSError as exc:  # the spool still holds the number; a restart continues above it
                log.warning("could not write %s: %s", self._seq_path, exc)
        if self._client is not None:
            self._client.close()
        if self._lock_fd >= 0:  # twice would close whatever file later reused the descriptor number
            os.close(self._lock_fd)
            self._lock_fd = -1
