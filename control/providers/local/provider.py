"""Scale the simulated fleet through its control API: GET/POST /nodes, DELETE /nodes/<name>.

desired = every node the fleet has (booting ones included: they were asked for), actual = nodes in state "up"
(booted and not failed). Scaling in removes booting nodes first (they serve nothing yet), then failed ones, then
the newest: the same order a ReplicaSet uses (not ready before ready, newest first).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

from control.providers.base import Instance, Provider, ProviderError, Size, request_id

UP = "up"
# Scale-in order: lower goes first; within a rank the newest (listed last) goes first.
REMOVE_RANK = {"booting": 0, "failed": 1, UP: 2}


class LocalProvider(Provider):
    kind = "local"

    def __init__(self, url: str = "http://127.0.0.1:8399", profile: str | None = None, boot_delay_s: float = 30.0,
                 timeout_s: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.profile = profile
        self.boot_delay_s = boot_delay_s
        self.timeout_s = timeout_s
        self.max_size = None  # the simulated fleet has no limit of its own

    # -- HTTP -----------------------------------------------------------------------------------------------

    def _call(self, method: str, path: str, what: str, body: dict[str, Any] | None = None,
              ok: tuple[int, ...] = (200,)) -> httpx.Response:
        try:
            # A client per call: the provider is used from the controller's worker, rarely; nothing to keep warm.
            with httpx.Client(timeout=self.timeout_s) as client:
                resp = client.request(method, f"{self.url}{path}", json=body)
        except httpx.TimeoutException:
            raise ProviderError(f"the simulated fleet's control API at {self.url} did not answer {what} within "
                                f"{self.timeout_s:g} s; is it overloaded?") from None
        except httpx.HTTPError as exc:
            raise ProviderError(f"cannot reach the simulated fleet's control API at {self.url} to {what} ({exc}); "
                                "is `manage.py simfleet` running there?") from None
        if resp.status_code in ok:
            return resp
        try:
            reason = str(resp.json().get("error") or resp.text)
        except (ValueError, AttributeError):
            reason = resp.text[:200] or resp.reason_phrase
        # 409 (a name taken, a registration race) and 5xx can pass; other 4xx are our request or config at fault.
        permanent = 400 <= resp.status_code < 500 and resp.status_code not in (408, 409, 429)
        hint = "; check the pool's provider config" if permanent else ""
        raise ProviderError(f"the simulated fleet refused to {what}: {resp.status_code} {reason}{hint}",
                            permanent=permanent)

    def _nodes(self) -> list[dict[str, Any]]:
        doc = self._call("GET", "/nodes", "list its nodes").json()
        nodes = doc.get("nodes") if isinstance(doc, dict) else None
        if not isinstance(nodes, list):
            raise ProviderError(f"{self.url}/nodes did not answer with a node list; is this a simulated fleet's "
                                "control API? check the pool's provider url", permanent=True)
        return nodes

    # -- the interface --------------------------------------------------------------------------------------

    def current_size(self) -> Size:
        nodes = self._nodes()
        return Size(desired=len(nodes), actual=sum(1 for n in nodes if n.get("state") == UP))

    def list_instances(self) -> list[Instance]:
        return [Instance(id=n["name"], node=n["name"], state=str(n.get("state"))) for n in self._nodes()]

    def set_desired_size(self, n: int) -> str:
        self._check_size(n)
        rid = request_id("local")
        nodes = self._nodes()
        body: dict[str, Any] = {"boot_delay_s": self.boot_delay_s}
        if self.profile is not None:
            body["profile"] = self.profile
        for _ in range(n - len(nodes)):
            self._call("POST", "/nodes", "add a node", body, ok=(201,))
        if n < len(nodes):
            order = sorted(enumerate(nodes), key=lambda i_n: (REMOVE_RANK.get(i_n[1].get("state"), 0), -i_n[0]))
            for _, node in order[:len(nodes) - n]:
                self._delete(node["name"])
        return rid

    def remove_instance(self, instance_id: str) -> str:
        # The fleet has no desired count apart from its nodes, so removing the node lowers desired by one.
        return request_id("local") if self._delete(instance_id) else request_id("local", "already-gone")

    def restart_instances(self, instance_ids: list[str], entry: dict[str, Any], revision: int | None) -> str:
        """POST /nodes/<name>/restart with the entry as the node's `serving`: the fleet stops the node's server,
        applies the configuration and serves again after the provider's boot delay."""
        serving = {**entry, "revision": revision}
        for name in instance_ids:
            self._call("POST", f"/nodes/{quote(name, safe='')}/restart", f"restart node {name}",
                       {"serving": serving, "boot_delay_s": self.boot_delay_s})
        return request_id("local", "restart")

    def _delete(self, name: str) -> bool:
        """Whether the node was there (a 404 means another caller or a crash removed it first: the goal is met)."""
        resp = self._call("DELETE", f"/nodes/{quote(name, safe='')}", f"remove node {name}", ok=(200, 404))
        return resp.status_code == 200


PROVIDER = LocalProvider
