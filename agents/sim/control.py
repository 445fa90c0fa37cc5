"""The fleet's control API: JSON over HTTP, bound to 127.0.0.1 by default (the `local` cloud provider drives it).

    GET    /healthz                      {"ok": true, "nodes": n}
    GET    /nodes                        {"pool", "model", "nodes": [{name, url, profile, state, ...}]}
    POST   /nodes {"profile"?, "name"?, "boot_delay_s"?}   201 {"name", "url", "state"}
    GET    /nodes/<name>                 the node
    DELETE /nodes/<name>                 200 {"name", "state": "removed"}
    POST   /nodes/<name>/slow {"factor"} 200 the node (factor 1 = normal speed, 2 = twice as slow)
    POST   /nodes/<name>/fail {"mode"}   200 the node (mode refuse | error | hang)
    POST   /nodes/<name>/recover         200 the node
    POST   /nodes/<name>/restart {"serving"?, "boot_delay_s"?}  200 the node, "booting" (a deployment rollout)
    GET    /serving                      {"serving": what new nodes run, or null}

`serving` is a deployment policy's pool entry (agents/sim/serving.py reads the fields it models); POST /nodes
takes one too.

Errors are `{"error": "<what is wrong and what to send>"}` with 400 (bad input), 404 (unknown node or path),
405 (wrong method) or 409 (a node of that name exists).
"""

from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING, Any

from agents.sim import profiles
from agents.sim.fleet import MAX_BOOT_DELAY_S, MAX_SLOW_FACTOR, UnknownNode
from agents.sim.http import HttpServer, Request, Response, json_response
from agents.sim.node import FAIL_MODES
from agents.sim.serving import Serving, ServingError
from agents.spool import loads

if TYPE_CHECKING:
    from agents.sim.fleet import SimFleet

DEFAULT_PORT = 8399


class BadInput(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _body(req: Request, allowed: set[str]) -> dict[str, Any]:
    if not req.body.strip():
        return {}
    try:
        doc = loads(req.body)
    except ValueError:
        raise BadInput("the body is not valid JSON; send a JSON object") from None
    if not isinstance(doc, dict):
        raise BadInput("the body must be a JSON object")
    unknown = sorted(set(doc) - allowed)
    if unknown:
        raise BadInput(f"unknown field(s) {', '.join(map(repr, unknown))}; allowed: "
                       f"{', '.join(sorted(allowed)) or 'none'}")
    return doc


def _number(doc: dict[str, Any], key: str) -> float:
    value = doc.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadInput(f"{key} must be a number, got {value!r}")
    return float(value)


class ControlApi:
    def __init__(self, fleet: SimFleet, host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> None:
        self.fleet = fleet
        self.server = HttpServer(self.handle, host=host, port=port, name="control")
        shown = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
        self.url = f"http://{shown}:{self.server.port}"

    async def start(self) -> None:
        await self.server.start()

    async def close(self) -> None:
        await self.server.close()

    async def handle(self, req: Request) -> Response:
        try:
            return await self._route(req)
        except BadInput as exc:
            return json_response(exc.status, {"error": str(exc)})
        except UnknownNode as exc:
            return json_response(404, {"error": str(exc)})
        except ServingError as exc:
            return json_response(400, {"error": str(exc)})

    async def _route(self, req: Request) -> Response:
        parts = [p for p in req.path.split("/") if p]
        m = req.method
        if parts == ["healthz"]:
            self._method(m, "GET")
            return json_response(200, {"ok": True, "nodes": len(self.fleet.nodes)})
        if parts == ["nodes"]:
            if m == "GET":
                return json_response(200, {"pool": self.fleet.pool, "model": self.fleet.model,
                                           "nodes": [n.describe() for n in self.fleet.nodes]})
            self._method(m, "GET, POST")
            return await self._add(req)
        if parts == ["serving"]:
            self._method(m, "GET")
            s = self.fleet.serving
            return json_response(200, {"serving": None if s is None else s.__dict__})
        if len(parts) == 3 and parts[0] == "nodes" and parts[2] == "restart":
            self._method(m, "POST")
            doc = _body(req, {"serving", "boot_delay_s"})
            serving = Serving.parse(doc["serving"]) if doc.get("serving") is not None else None
            delay = _number(doc, "boot_delay_s") if doc.get("boot_delay_s") is not None else 0.0
            try:
                node = self.fleet.restart_node(parts[1], serving, delay)
            except ServingError:
                raise
            except ValueError as exc:
                raise BadInput(str(exc), 409 if "booting" in str(exc) else 400) from None
            return json_response(200, node.describe())
        if len(parts) == 2 and parts[0] == "nodes":
            name = parts[1]
            if m == "GET":
                return json_response(200, self.fleet.node(name).describe())
            self._method(m, "GET, DELETE")
            await self.fleet.remove_node(name)
            return json_response(200, {"name": name, "state": "removed"})
        if len(parts) == 3 and parts[0] == "nodes" and parts[2] in ("slow", "fail", "recover"):
            self._method(m, "POST")
            name, action = parts[1], parts[2]
            node = self.fleet.node(name)
            if action == "slow":
                doc = _body(req, {"factor"})
                factor = _number(doc, "factor")
                if not 0 < factor <= MAX_SLOW_FACTOR:
                    raise BadInput(f"factor must be above 0 and at most {MAX_SLOW_FACTOR:g} (1 = normal speed, "
                                   f"2 = twice as slow), got {factor:g}")
                self.fleet.slow_down(name, factor)
            elif action == "fail":
                doc = _body(req, {"mode"})
                mode = doc.get("mode")
                if mode not in FAIL_MODES:
                    raise BadInput(f"mode must be one of {', '.join(FAIL_MODES)}, got {mode!r}")
                await self.fleet.fail(name, mode)
            else:
                _body(req, set())
                await self.fleet.recover(name)
            return json_response(200, node.describe())
        raise BadInput(f"no route {req.method} {req.path}; see GET /nodes", 404)

    @staticmethod
    def _method(method: str, allowed: str) -> None:
        if method not in allowed.split(", "):
            raise BadInput(f"method {method} not allowed here; use {allowed}", 405)

    async def _add(self, req: Request) -> Response:
        doc = _body(req, {"profile", "name", "boot_delay_s", "serving"})
        serving = Serving.parse(doc["serving"]) if doc.get("serving") is not None else None
        profile = doc.get("profile")
        if profile is not None and profile not in profiles.PROFILE_CHOICES:
            raise BadInput(f"profile must be one of {', '.join(profiles.PROFILE_CHOICES)}, got {profile!r}")
        name = doc.get("name")
        if name is not None and not isinstance(name, str):
            raise BadInput(f"name must be a string, got {name!r}")
        delay = _number(doc, "boot_delay_s") if doc.get("boot_delay_s") is not None else 0.0
        if not 0 <= delay <= MAX_BOOT_DELAY_S:
            raise BadInput(f"boot_delay_s must be 0-{MAX_BOOT_DELAY_S:g} seconds, got {delay:g}")
        if name is not None and name in {n.name for n in self.fleet.nodes}:
            raise BadInput(f"a node named {name!r} already exists", 409)
        try:
            node = await self.fleet.add_node(name=name, profile=profile, boot_delay_s=delay, serving=serving)
        except ServingError:
            raise
        except ValueError as exc:
            raise BadInput(str(exc)) from None
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the register callback's error (say, the name taken in another pool)
            raise BadInput(f"could not register node: {exc}", 409) from None
        return json_response(201, {"name": node.name, "url": node.url, "state": node.state})
