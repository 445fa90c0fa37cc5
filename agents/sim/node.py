"""One simulated node: an OpenAI-compatible inference server on its own port, backed by the engine, with a
virtual NVML and host reading the same state, and the failure modes a real node shows.

Failure modes: `refuse` (the server stops listening and cuts open connections: connection refused), `error`
(inference requests and /health answer 500; /metrics and /v1/models still answer), `hang` (every connection is
accepted and never answered). `recover` undoes any of them. Every response carries `X-Sim-Node: <name>`;
non-streamed completions also carry the model's own timings in model seconds (`X-Sim-TTFT-S`, `X-Sim-Queue-S`,
`X-Sim-E2E-S`) so tests can compare what the model computed rather than wall-clock times.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from agents.sim import openai, text
from agents.sim.engine import Engine, SimRequest
from agents.sim.http import HttpServer, Request, Response, json_response
from agents.sim.kv_events import KVEventsConfig, Publisher
from agents.sim.metrics import render
from agents.sim.profiles import Profile
from agents.sim.serving import Serving, shape
from agents.sim.vhost import VirtualHost
from agents.sim.vnvml import VirtualNvml
from agents.spool import dumps

log = logging.getLogger(__name__)

FAIL_MODES: tuple[str, ...] = ("refuse", "error", "hang")
STATES: tuple[str, ...] = ("booting", "up", "failed")


def _sse(doc: dict[str, Any]) -> bytes:
    return b"data: " + dumps(doc) + b"\n\n"


class SimNode:
    def __init__(self, name: str, profile: Profile, model: str = "sim-llm", gpus: int = 8, host: str = "127.0.0.1",
                 port: int = 0, time_scale: float = 1.0, seed: int | None = None,
                 advertise_host: str | None = None, serving: Serving | None = None,
                 kv_events: KVEventsConfig | None = None) -> None:
        self.name = name
        self.hardware = profile  # the profile before a deployment reshapes it
        self.serving_config: Serving | None = None
        self.restarts = 0
        self.spec = profile
        self.profile = profile.name  # "h100", "a100" or "l40s"
        self.model = model
        self.engine = Engine(profile, time_scale=time_scale)
        self.server = HttpServer(self.handle, host=host, port=port, name=name)
        self.server.extra_headers = [("x-sim-node", name)]
        self.port = self.server.port
        shown = advertise_host or ("127.0.0.1" if host in ("0.0.0.0", "", "::") else host)
        self.url = f"http://{shown}:{self.port}"
        self.gpu = VirtualNvml(profile, self.engine, gpus=gpus, seed=seed, alive=self._process_alive)
        self.host = VirtualHost(self.engine, seed=seed)
        self.failure: str | None = None
        self.booted = False
        self.slow = 1.0
        self.admin_state: str | None = None  # what Switchyard wants of the node (active/draining/cordoned)
        self.created = time.time()
        self.fingerprint = f"fp_sim_{profile.name}"
        self.metrics_style = "vllm"  # or "sglang": which server's /metrics names this node exposes
        self._released = asyncio.Event()  # set to let hung connections go (they are then dropped)
        if serving is not None:
            self._apply(serving)
        # vLLM's KV-cache events of this node's prefix cache (--kv-events-config), on a PUB socket of its own.
        self.kv_publisher: Publisher | None = None
        if kv_events is not None and kv_events.enabled:
            self.kv_publisher = Publisher(kv_events, name, self.model)
            self.engine.kv_events = self.kv_publisher.publish
            self.engine.reset_prefix_cache()  # a fresh server announces an empty cache, as after a restart

    def _apply(self, serving: Serving) -> None:
        """Run `serving` from now on (ServingError, changing nothing, when it cannot run on this node)."""
        spec = shape(self.hardware, serving, len(self.gpu.gpus))
        self.serving_config, self.spec, self.model = serving, spec, serving.model
        self.engine.profile = spec
        self.engine.prefix_caching = serving.prefix_caching
        self.gpu.profile = spec

    def advertised(self) -> dict[str, Any]:
        """What the node runs, as its agent advertises it (model, max model length, quantization ...)."""
        if self.serving_config is None:
            return {"model": self.model, "engine": "vllm", "tensor_parallel_size": len(self.gpu.gpus),
                    "pipeline_parallel_size": 1, "quantization": None, "kv_cache_dtype": "auto",
                    "max_model_len": self.spec.max_model_len, "prefix_caching": True, "revision": None}
        return self.serving_config.describe(len(self.gpu.gpus), self.spec)

    async def restart(self, serving: Serving | None, boot_delay_s: float = 0.0) -> None:
        """Restart the inference server (with `serving`, when given): it stops listening, the requests still in
        it are lost (a rollout drains the node first), and it serves again after the boot delay."""
        if serving is not None:
            shape(self.hardware, serving, len(self.gpu.gpus))  # refuse before stopping anything
        self.booted = False
        self.server.stop_now()
        await self.engine.close()
        self.engine.reset_prefix_cache()  # the new process starts with an empty cache (AllBlocksCleared)
        if serving is not None:
            self._apply(serving)
        self.restarts += 1
        if boot_delay_s > 0:
            await asyncio.sleep(boot_delay_s)
        if self.failure != "refuse":
            await self.server.start()
        self.booted = True

    # -- state ----------------------------------------------------------------------------------------------

    @property
    def state(self) -> str:
        if not self.booted:
            return "booting"
        return "failed" if self.failure is not None else "up"

    def serving(self) -> bool:
        """Whether the inference server process is there to answer (what a scrape of /metrics would find)."""
        return self.booted and self.failure not in ("refuse", "hang")

    def _process_alive(self) -> bool:
        """Whether the server process holds its GPUs (a hung one still does; a crashed one, `refuse`, does not)."""
        return self.booted and self.failure != "refuse"

    @property
    def running(self) -> int:
        return len(self.engine.running)

    @property
    def waiting(self) -> int:
        return len(self.engine.waiting)

    @property
    def kv_usage(self) -> float:
        return self.engine.kv_usage

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "url": self.url, "port": self.port, "profile": self.profile,
                "model": self.model, "gpus": len(self.gpu.gpus), "state": self.state, "failure": self.failure,
                "slow": self.slow, "admin_state": self.admin_state, "running": self.running,
                "waiting": self.waiting, "kv_usage_pct": round(100.0 * self.kv_usage, 1),
                "serving": self.advertised(), "restarts": self.restarts}

    # -- lifecycle ------------------------------------------------------------------------------------------

    async def boot(self) -> None:
        await self.server.start()
        self.booted = True

    async def close(self) -> None:
        self._released.set()
        await self.server.close()
        await self.engine.close()
        if self.kv_publisher is not None:
            self.kv_publisher.close()

    def slow_down(self, factor: float) -> None:
        if not (factor > 0 and factor < float("inf")):
            raise ValueError(f"slow-down factor must be a number above 0, got {factor!r}")
        self.slow = factor
        self.engine.slow = factor

    def fail(self, mode: str) -> asyncio.Task[None]:
        """Start failing in `mode` (at once). The returned task listens again when the node goes from `refuse`
        to another mode."""
        if mode not in FAIL_MODES:
            raise ValueError(f"unknown failure mode {mode!r}; use one of {', '.join(FAIL_MODES)}")
        if self.failure == "hang":
            self._released.set()
        self.failure = mode
        if mode == "refuse":
            # The server process is gone: nothing listens, open connections are cut, requests in flight are lost.
            self.server.stop_now()
            self.engine.abort_all()
        elif mode == "hang":
            self._released = asyncio.Event()
        return asyncio.get_running_loop().create_task(self._listen())

    async def recover(self) -> None:
        await self.recover_now()

    def recover_now(self) -> asyncio.Task[None]:
        """Undo a failure: cleared at once; listening again (after `refuse`) is the returned task's work."""
        mode, self.failure = self.failure, None
        if mode == "hang":
            self._released.set()
        return asyncio.get_running_loop().create_task(self._listen())

    async def _listen(self) -> None:
        if self.booted and not self.server.listening and self.failure != "refuse":
            await self.server.start()

    # -- HTTP -----------------------------------------------------------------------------------------------

    async def handle(self, req: Request) -> Response:
        if self.failure == "hang":
            await self._released.wait()
            raise ConnectionResetError("hung connection released")  # dropped without an answer
        path = req.path.rstrip("/") or "/"
        if path == "/v1/chat/completions" or path == "/v1/completions":
            if req.method != "POST":
                return self._error(405, f"{path} takes POST, not {req.method}", "method_not_allowed")
            return await self._complete(req, "chat" if path == "/v1/chat/completions" else "completion")
        if path == "/reset_prefix_cache" and req.method == "POST":  # vLLM's route of the same name
            self.engine.reset_prefix_cache()
            return Response(200, content_type="text/plain")
        if req.method not in ("GET", "HEAD"):
            return self._error(405, f"{path} takes GET, not {req.method}", "method_not_allowed")
        if path == "/metrics":
            return Response(200, render(self.engine, self.model, style=self.metrics_style).encode(),
                            content_type="text/plain; version=0.0.4; charset=utf-8")
        if path == "/health":
            if self.failure == "error":
                return self._error(500, "simulated failure: the engine is broken", "internal_error",
                                   type="internal_error")
            return Response(200, content_type="text/plain")
        if path == "/v1/models":
            return json_response(200, {"object": "list", "data": [{
                "id": self.model, "object": "model", "created": int(self.created), "owned_by": "switchyard-sim",
                "root": self.model, "parent": None, "max_model_len": self.spec.max_model_len}]})
        return self._error(404, f"no route {path}: this node serves /v1/chat/completions, /v1/completions, "
                                "/v1/models, /metrics and /health", "not_found", type="not_found_error")

    @staticmethod
    def _error(status: int, message: str, code: str | None, param: str | None = None,
               type: str = "invalid_request_error") -> Response:
        return json_response(status, {"error": {"message": message, "type": type, "param": param, "code": code}})

    async def _complete(self, req: Request, kind: str) -> Response:
        try:
            c = openai.parse(req.body, kind, self.model, self.spec.max_model_len)
        except openai.OpenAIError as exc:
            return json_response(exc.status, exc.body())
        if self.failure == "error":
            self.engine.record_error()
            return self._error(500, f"simulated failure on node {self.name}: the engine is broken",
                               "internal_error", type="internal_error")
        prompt: Any = c.messages if c.messages is not None else c.prompt
        rng = text.rng_for(c.model, prompt, c.max_tokens, c.seed, c.deterministic)
        n, finish = text.answer_length(rng, c.max_tokens, c.ignore_eos)
        tokens = text.words(rng, n)
        sim = SimRequest(prompt_tokens=c.prompt_tokens, target_tokens=n, finish_reason=finish,
                         prefix_text=text.prompt_text(c.messages, c.prompt),
                         stream=asyncio.Queue() if c.stream else None)
        rid, created = openai.new_id(kind), openai.now()
        self.engine.submit(sim)
        if c.stream:
            return Response(200, stream=self._stream(c, sim, tokens, rid, created), content_type="text/event-stream",
                            headers=[("cache-control", "no-cache")])
        try:
            await sim.done
        finally:
            self.engine.abort(sim)  # a no-op once finished; frees the slot when the client went away
        if sim.outcome == "abort":
            raise ConnectionResetError("request aborted")  # the server went down under it
        headers = [("x-sim-ttft-s", f"{sim.ttft:.6f}"), ("x-sim-queue-s", f"{sim.queue_time:.6f}"),
                   ("x-sim-e2e-s", f"{sim.e2e:.6f}")]
        return json_response(200, openai.response(c, rid, created, "".join(tokens), sim.finish_reason, n,
                                                  self.fingerprint), headers)

    async def _stream(self, c: openai.Completion, sim: SimRequest, tokens: list[str], rid: str,
                      created: int) -> AsyncIterator[bytes]:
        assert sim.stream is not None
        fp = self.fingerprint
        try:
            if c.kind == "chat":
                yield _sse(openai.chunk(c, rid, created, "", None, fp, first=True))
            # Every token's event is the same JSON but for the token: serialise it once around a marker and
            # splice each token in (a streamed token is the hot path of a loaded fleet).
            marker = "\u0000token\u0000"
            template = dumps(openai.chunk(c, rid, created, marker, None, fp))
            head, tail = template.split(dumps(marker), 1)
            head = b"data: " + head
            tail = tail + b"\n\n"
            sent, ended, queue = 0, False, sim.stream
            while not ended and (n := await queue.get()) is not None:
                # One SSE event per token; the tokens of one engine step go out in one write, and so do those of
                # every step that ended while the previous write waited (a busy process, a slow client: a real
                # server coalesces the same way). The events and their order are unchanged; only the writes are
                # fewer when the process is behind.
                while not queue.empty():
                    more = queue.get_nowait()
                    if more is None:
                        ended = True
                        break
                    n += more
                yield b"".join(head + dumps(w) + tail for w in tokens[sent:sent + n])
                sent += n
            if sim.outcome == "abort":
                raise ConnectionResetError("request aborted")
            end = [_sse(openai.chunk(c, rid, created, None if c.kind == "chat" else "", sim.finish_reason, fp))]
            if c.include_usage:
                end.append(_sse(openai.usage_chunk(c, rid, created, sent, fp)))
            yield b"".join([*end, b"data: [DONE]\n\n"])  # the same events, in one write
        finally:
            self.engine.abort(sim)
