"""The one small interface every cloud provider implements, and the declarative config fields they validate.

The controller only ever talks to a pool's provider through `Provider`: read the size, set the desired size, list
the instances, remove one. Every method makes real network calls with timeouts and raises `ProviderError` for
anything that went wrong, saying whether retrying can help (`permanent=False`: the controller retries with
backoff) or not (`permanent=True`: an operator must fix config, credentials or permissions; the message says what).
"""

from __future__ import annotations

import math
import re
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar


class ProviderError(Exception):
    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent

    def __repr__(self) -> str:
        return f"ProviderError({self.message!r}, permanent={self.permanent})"


@dataclass(frozen=True)
class Size:
    desired: int
    actual: int  # instances running/ready as the provider sees them


@dataclass(frozen=True)
class Instance:
    id: str  # what remove_instance takes
    node: str  # the Switchyard node name this instance reports as
    state: str  # the provider's word for it (booting/up, Pending/InService, Creating/Succeeded, ...)


@dataclass(frozen=True)
class RolloutStatus:
    """Where a provider's own rollout of a deployment stands."""

    done: bool
    failed: str = ""  # why it stopped, when it did
    progress: str = ""  # e.g. "2/6 updated, 5 available"


class Provider(ABC):
    kind: ClassVar[str]
    max_size: int | None = None  # what the provider allows, when it knows (some learn it on their first read)
    # True: the provider rolls a deployment out itself (apply_deployment + deployment_status: a Kubernetes rolling
    # update, an AWS instance refresh, an Azure rolling upgrade); False: the controller restarts instances batch by
    # batch (restart_instances).
    rolls_out_itself: ClassVar[bool] = False
    # The Instance.state words of an instance that serves again after a restart, and of one that failed.
    serving_states: ClassVar[tuple[str, ...]] = ("up",)
    failed_states: ClassVar[tuple[str, ...]] = ("failed",)

    @abstractmethod
    def current_size(self) -> Size: ...

    @abstractmethod
    def set_desired_size(self, n: int) -> str:
        """Ask for n instances; returns the provider's request id (or a generated one). Setting the same n twice is
        harmless."""

    @abstractmethod
    def list_instances(self) -> list[Instance]: ...

    @abstractmethod
    def remove_instance(self, instance_id: str) -> str:
        """Remove this instance and lower the desired size by one. An instance that is already gone (or going) is
        not an error: nothing else changes and the returned id says so."""

    def restart_instances(self, instance_ids: list[str], entry: dict[str, Any], revision: int | None) -> str:
        """Restart these instances running the deployment pool entry `entry` (control/policy/deployment.py) from
        now on; returns a request id at once, the instances show as booting until they serve. Only a provider
        whose rollout the controller drives batch by batch implements it (local, today)."""
        raise ProviderError(f"the {self.kind} provider cannot restart single instances with a new deployment",
                            permanent=True)

    def apply_deployment(self, entry: dict[str, Any], revision: int | None) -> str:
        """Render the deployment pool entry into the provider's template and start its rolling update with the
        entry's strategy; returns the request id (what deployment_status takes)."""
        raise ProviderError(f"the {self.kind} provider cannot apply a deployment", permanent=True)

    def deployment_status(self, request_id: str) -> RolloutStatus:
        raise ProviderError(f"the {self.kind} provider cannot report a rollout", permanent=True)

    # -- helpers for implementations ------------------------------------------------------------------------

    def _check_size(self, n: int) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ProviderError(f"the desired size must be a whole number, 0 or more; got {n!r}", permanent=True)


def request_id(prefix: str, note: str = "") -> str:
    """A generated request id for providers (or calls) that have none of their own: unique, and greppable."""
    return f"{prefix}-{note + '-' if note else ''}{uuid.uuid4().hex[:8]}"


# -- config fields ------------------------------------------------------------------------------------------

Check = Callable[[Any], str | None]  # returns what is wrong with a value, or None


@dataclass(frozen=True)
class Field:
    """One key of a provider's config (stored in the database per pool, so never a secret)."""

    name: str
    help: str  # what the value is: the message for a missing required key is "required: <help>"
    type: str = "string"  # "string" or "number"
    required: bool = False
    default: Any = None
    check: Check | None = None

    def clean(self, value: Any) -> tuple[Any, str | None]:
        """(the cleaned value, None) or (None, what is wrong)."""
        if self.type == "number":
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                return None, f"must be a number, got {value!r}"
            value = float(value)
        elif not isinstance(value, str):
            return None, f"must be a string, got {value!r}"
        else:
            value = value.strip()
        problem = self.check(value) if self.check is not None else None
        return (None, problem) if problem else (value, None)


def pattern(regex: str, what: str) -> Check:
    compiled = re.compile(regex)

    def check(value: Any) -> str | None:
        return None if compiled.fullmatch(value) else f"{what}, got {value!r}"

    return check


def between(low: float, high: float, unit: str = "seconds", *, low_allowed: bool = False) -> Check:
    def check(value: Any) -> str | None:
        if (low <= value if low_allowed else low < value) and value <= high:
            return None
        bounds = f"from {low:g} to {high:g}" if low_allowed else f"above {low:g} and at most {high:g}"
        return f"must be {bounds} {unit}, got {value:g}"

    return check


def http_url(value: Any) -> str | None:
    match = re.fullmatch(r"https?://([^\s/?#]+)(/[^\s?#]*)?", value)
    if match is None:
        return f"must be an http:// or https:// URL, got {value!r}"
    if "@" in match.group(1):  # user:password@host would store a credential in the database
        return "must not hold credentials (user:password@); they come from the environment or a secret file"
    return None


def timeout_field(default: float) -> Field:
    return Field("timeout_s", "seconds to wait for each call to the provider", "number", default=default,
                 check=between(0, 120))


def read_secret_file(path: str, env: str, what: str) -> str:
    """A credential kept in a file (named by the environment variable `env`); a missing, unreadable or empty file
    is a permanent ProviderError saying which file and which variable."""
    try:
        with open(path, encoding="utf-8") as f:
            value = f.read().strip()
    except OSError as exc:
        raise ProviderError(f"cannot read the {what} file {path} ({env}): {exc.strerror}", permanent=True) from None
    if not value:
        raise ProviderError(f"the {what} file {path} ({env}) is empty", permanent=True)
    return value
