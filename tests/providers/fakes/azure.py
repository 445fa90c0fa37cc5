"""A small fake of Azure Resource Manager for tests and demos: the VM scale set endpoints the provider uses, over TLS.

    GET   /subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachineScaleSets/{vmss}
    PATCH  (same)                                      {"sku": {"capacity": n}}  -> 200 + Azure-AsyncOperation
    GET    (same)/virtualMachines                      the instances
    POST   (same)/delete                               {"instanceIds": [...]}    -> 202 + Azure-AsyncOperation
    GET   /subscriptions/{sub}/providers/Microsoft.Compute/locations/{loc}/operations/{id}   the operation's status

Every request needs `?api-version=` and `Authorization: Bearer <token>` and gets an `x-ms-request-id`. The fake
serves HTTPS (azure-core sends bearer tokens over TLS only) with a throwaway self-signed certificate made by
`self_signed_cert()`: point REQUESTS_CA_BUNDLE at it. Scaling in removes the highest instance ids (Azure's
default scale-in policy without zones). `fail(status)` makes matching requests fail; `hold_operations` keeps
operations InProgress; `fail_operations` makes them end Failed.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.providers.fakes.server import FakeServer

LOCATION = "eastus"
VMSS_PATH = re.compile(r"^/subscriptions/([^/]+)/resourceGroups/([^/]+)/providers/Microsoft\.Compute/"
                       r"virtualMachineScaleSets/([^/]+)(/virtualMachines|/delete|/manualupgrade)?$", re.IGNORECASE)
OPERATION_PATH = re.compile(r"^/subscriptions/([^/]+)/providers/Microsoft\.Compute/locations/([^/]+)/operations/"
                            r"([^/]+)$", re.IGNORECASE)
CODES = {400: "BadRequest", 401: "InvalidAuthenticationToken", 403: "AuthorizationFailed", 404: "ResourceNotFound",
         409: "Conflict", 429: "TooManyRequests", 500: "InternalServerError", 503: "ServiceUnavailable"}


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """(certificate, key) PEM files for 127.0.0.1 and localhost, valid for a day; the certificate is its own CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "switchyard test ARM")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "arm-cert.pem", directory / "arm-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@dataclass
class FakeVm:
    instance_id: int
    ready_at: float
    model: int = 0  # the scale-set model version it runs
    upgrading: bool = False
    failed: bool = False

    @property
    def state(self) -> str:
        if self.failed:
            return "Failed"
        if time.monotonic() >= self.ready_at:
            return "Succeeded"
        return "Updating" if self.upgrading else "Creating"


@dataclass
class Failure:
    status: int
    method: str | None
    path_contains: str | None
    code: str | None

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and (
            self.path_contains is None or self.path_contains in path)


class ArmError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or CODES.get(status, "Error")


class FakeArm(FakeServer):
    name = "fake-arm"

    def __init__(self, cert: Path, key: Path, subscription_id: str = "00000000-0000-0000-0000-000000000001",
                 resource_group: str = "gpu-rg", vmss: str = "gpuvmss", token: str = "test-token",
                 capacity: int = 0, ready_after_s: float = 0.0) -> None:
        self.cert, self.key = cert, key
        self.tls = (cert, key)
        self.subscription_id = subscription_id
        self.resource_group = resource_group
        self.vmss = vmss
        self.token = token
        self.ready_after_s = ready_after_s
        self.capacity = 0
        self.vms: dict[int, FakeVm] = {}
        self.failures: list[Failure] = []
        self.hold_operations = False
        self.fail_operations: tuple[str, str] | None = None  # (code, message) of operations that end Failed
        self.operations: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, for assertions
        self._next_id = 0
        self._lock = threading.Lock()
        # The scale set's model (user data) and its version; `manualupgrade` moves instances to it (they show
        # Updating for ready_after_s; with upgrade_fails they end Failed).
        self.user_data: str | None = None
        self.model = 0
        self.upgrade_fails = False
        self.upgrades: list[list[str]] = []  # instance ids of each manualupgrade call
        self._scale_to(capacity, ready_now=True)

    # -- test controls --------------------------------------------------------------------------------------

    def fail(self, status: int, method: str | None = None, path_contains: str | None = None,
             code: str | None = None) -> None:
        with self._lock:
            self.failures.append(Failure(status, method, path_contains, code))

    def heal(self) -> None:
        with self._lock:
            self.failures.clear()

    def instance_ids(self) -> list[str]:
        with self._lock:
            return [str(i) for i in sorted(self.vms)]

    # -- the model ------------------------------------------------------------------------------------------

    def _scale_to(self, capacity: int, ready_now: bool = False) -> None:
        self.capacity = capacity
        while len(self.vms) < capacity:
            now = time.monotonic()
            self.vms[self._next_id] = FakeVm(self._next_id, now if ready_now else now + self.ready_after_s,
                                             model=self.model)
            self._next_id += 1
        for instance_id in sorted(self.vms, reverse=True)[:max(0, len(self.vms) - capacity)]:
            del self.vms[instance_id]

    def _base(self) -> str:
        return (f"/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}/providers/"
                f"Microsoft.Compute/virtualMachineScaleSets/{self.vmss}")

    def _vmss_doc(self, state: str = "Succeeded") -> dict[str, Any]:
        return {"id": self._base(), "name": self.vmss, "type": "Microsoft.Compute/virtualMachineScaleSets",
                "location": LOCATION,
                "sku": {"name": "Standard_ND96isr_H100_v5", "tier": "Standard", "capacity": self.capacity},
                "properties": {"provisioningState": state, "singlePlacementGroup": False,
                               "orchestrationMode": "Uniform", "upgradePolicy": {"mode": "Manual"},
                               "virtualMachineProfile": {"userData": self.user_data}}}

    def _vm_doc(self, vm: FakeVm) -> dict[str, Any]:
        return {"id": f"{self._base()}/virtualMachines/{vm.instance_id}", "instanceId": str(vm.instance_id),
                "name": f"{self.vmss}_{vm.instance_id}", "location": LOCATION,
                "type": "Microsoft.Compute/virtualMachineScaleSets/virtualMachines",
                "properties": {"provisioningState": vm.state, "latestModelApplied": vm.model == self.model,
                               "osProfile": {"computerName": f"{self.vmss}{_base36(vm.instance_id)}"}}}

    def _operation(self, host: str) -> dict[str, str]:
        op = str(uuid.uuid4())
        self.operations[op] = {"name": op, "status": "InProgress", "polls": 0}
        url = (f"https://{host}/subscriptions/{self.subscription_id}/providers/Microsoft.Compute/locations/"
               f"{LOCATION}/operations/{op}?api-version=2025-04-01")
        return {"Azure-AsyncOperation": url}

    # -- HTTP -----------------------------------------------------------------------------------------------

    def _handle(self, req: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(req.path)
        headers: dict[str, str] = {}
        try:
            with self._lock:
                self.requests.append((req.command, parts.path))
                status, doc = self._route(req, parts.path, parse_qs(parts.query), headers)
        except ArmError as exc:
            status, doc = exc.status, {"error": {"code": exc.code, "message": str(exc)}}
        body = b"" if doc is None else json.dumps(doc).encode()
        req.send_response(status)
        req.send_header("Content-Type", "application/json; charset=utf-8")
        req.send_header("Content-Length", str(len(body)))
        req.send_header("x-ms-request-id", str(uuid.uuid4()))
        req.send_header("x-ms-correlation-request-id", str(uuid.uuid4()))
        for name, value in headers.items():
            req.send_header(name, value)
        req.end_headers()
        req.wfile.write(body)

    def _route(self, req: BaseHTTPRequestHandler, path: str, query: dict[str, list[str]],
               headers: dict[str, str]) -> tuple[int, Any]:
        if not query.get("api-version"):
            raise ArmError(400, "The api-version query parameter (?api-version=) is required for all requests.",
                           "MissingApiVersionParameter")
        if req.headers.get("Authorization") != f"Bearer {self.token}":
            raise ArmError(401, "The access token is invalid.")
        for failure in self.failures:
            if failure.matches(req.command, path):
                raise ArmError(failure.status, f"injected failure {failure.status} for {req.command} {path}",
                               failure.code)
        body: Any = None
        if req.command in ("PATCH", "POST", "PUT"):
            length = int(req.headers.get("Content-Length") or 0)
            try:
                body = json.loads(req.rfile.read(length) or b"{}")
            except ValueError:
                raise ArmError(400, "The request content was invalid and could not be deserialized.",
                               "InvalidRequestContent") from None
        if m := OPERATION_PATH.match(path):
            op = self.operations.get(m.group(3))
            if op is None:
                raise ArmError(404, f"operation {m.group(3)} not found")
            op["polls"] += 1
            if not self.hold_operations and op["status"] == "InProgress":
                op["status"] = "Failed" if self.fail_operations else "Succeeded"
            doc = {"name": op["name"], "status": op["status"], "startTime": "2025-01-01T00:00:00Z"}
            if op["status"] == "Failed" and self.fail_operations:
                doc["error"] = {"code": self.fail_operations[0], "message": self.fail_operations[1]}
            return 200, doc
        m = VMSS_PATH.match(path)
        if m is None:
            raise ArmError(404, f"the fake serves no {path}", "InvalidResourceType")
        sub, rg, name, sub_resource = m.groups()
        if (sub, rg.lower(), name.lower()) != (self.subscription_id, self.resource_group.lower(), self.vmss.lower()):
            raise ArmError(404, f"The Resource 'Microsoft.Compute/virtualMachineScaleSets/{name}' under resource "
                                f"group '{rg}' was not found.")
        host = req.headers.get("Host", "127.0.0.1")
        if sub_resource is None:
            if req.command == "GET":
                return 200, self._vmss_doc()
            if req.command == "PATCH":
                capacity = (body.get("sku") or {}).get("capacity")
                if capacity is not None:
                    if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 0:
                        raise ArmError(400, f"The value {capacity!r} of parameter 'sku.capacity' is invalid.",
                                       "InvalidParameter")
                    self._scale_to(capacity)
                profile = (body.get("properties") or {}).get("virtualMachineProfile") or {}
                if "userData" in profile and profile["userData"] != self.user_data:
                    self.user_data = profile["userData"]
                    self.model += 1
                headers.update(self._operation(host))
                return 200, self._vmss_doc("Updating")
            raise ArmError(405, f"the fake does not serve {req.command} on a scale set", "MethodNotAllowed")
        if sub_resource.lower() == "/virtualmachines":
            return 200, {"value": [self._vm_doc(vm) for _, vm in sorted(self.vms.items())]}
        if req.command != "POST":
            raise ArmError(405, "delete takes POST", "MethodNotAllowed")
        ids = body.get("instanceIds") or []
        for instance_id in ids:
            if not str(instance_id).isdigit() or int(instance_id) not in self.vms:
                raise ArmError(400, f"The provided instanceId {instance_id} is not an active Virtual Machine Scale "
                                    "Set VM instanceId.", "InvalidParameter")
        if sub_resource.lower() == "/manualupgrade":
            self.upgrades.append([str(i) for i in ids])
            for instance_id in ids:
                vm = self.vms[int(instance_id)]
                vm.model, vm.upgrading, vm.failed = self.model, True, self.upgrade_fails
                vm.ready_at = time.monotonic() + self.ready_after_s
            headers.update(self._operation(host))
            return 202, None
        for instance_id in ids:
            del self.vms[int(instance_id)]
        self.capacity = len(self.vms)  # deleting instances lowers the capacity with them
        headers.update(self._operation(host))
        return 202, None


def _base36(n: int) -> str:
    """Azure names a scale set's machines <prefix> + the instance id in base 36, six digits."""
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    for _ in range(6):
        n, r = divmod(n, 36)
        out = digits[r] + out
    return out
