"""The `deployment` policy kind: what each pool runs (engine, model, parallelism, quantization, limits, extra engine
args) and how a change is rolled out (max_surge, max_unavailable, drain timeout).

Two levels of checking:

* the schema (pydantic, no I/O): types, ranges, and `extra_args` (one argv item each, no shell metacharacters,
  known flags type-checked, flags the policy owns refused with the field to use instead);
* the pool fit (`check_fit`, reads the database and the latest samples): TP x PP must fit the GPUs of the pool's
  nodes, and the model must fit their memory by the estimate below, the arithmetic in the error.

Memory estimate, per GPU (decimal GB, as model sizes are quoted):

    weights = params_b x bytes per parameter (bf16 2, fp8 1, awq/gptq 0.5) / (TP x PP)
    usable  = GPU memory x gpu_memory_utilization
    reserve = KV_RESERVE_SHARE x usable   (the least KV cache worth serving with)
    fits when weights + reserve <= usable

`engine_args()` renders an entry into the engine's command line (vLLM or SGLang flags); every provider uses it.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from core.diffing import error_path

NAME = r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$"
PoolName = Annotated[str, Field(pattern=NAME)]

BYTES_PER_PARAM: dict[str | None, float] = {None: 2.0, "fp8": 1.0, "awq": 0.5, "gptq": 0.5}
DTYPE_WORD: dict[str | None, str] = {None: "bf16", "fp8": "fp8", "awq": "int4 (awq)", "gptq": "int4 (gptq)"}
KV_RESERVE_SHARE = 0.10
# Characters a shell would act on. Arguments are passed as argv items (never through a shell) by every provider,
# but a user-data script (AWS) and an operator copying a command line would; refusing them keeps that safe.
SHELL_META = re.compile(r"[\s;&|$`<>\\'\"(){}\[\]*?!#~^]")
FLAG = re.compile(r"^--[a-z0-9][a-z0-9-]{0,63}$")

# Flags set by the policy's own fields: in extra_args they would contradict (or silently override) the field.
OWNED_FLAGS: dict[str, str] = {
    "--model": "model", "--model-path": "model", "--tensor-parallel-size": "tensor_parallel_size",
    "--tp": "tensor_parallel_size", "--tp-size": "tensor_parallel_size",
    "--pipeline-parallel-size": "pipeline_parallel_size", "--pp": "pipeline_parallel_size",
    "--pp-size": "pipeline_parallel_size", "--quantization": "quantization", "-q": "quantization",
    "--kv-cache-dtype": "kv_cache_dtype", "--max-model-len": "max_model_len", "--context-length": "max_model_len",
    "--gpu-memory-utilization": "gpu_memory_utilization", "--mem-fraction-static": "gpu_memory_utilization",
    "--enable-prefix-caching": "prefix_caching", "--no-enable-prefix-caching": "prefix_caching",
    "--disable-radix-cache": "prefix_caching", "--port": "(the provider sets the port)",
    "--host": "(the provider sets the host)",
}
# Flags whose value is a credential (vLLM --api-key, --hf-token, SGLang --api-key, ...).
SECRET_FLAG = re.compile(r"key|token|secret|password|credential", re.IGNORECASE)
# Known flags of vLLM and SGLang and the type of their value ("flag" takes none).
KNOWN_FLAGS: dict[str, str | tuple[str, ...]] = {
    "--max-num-seqs": "int", "--max-num-batched-tokens": "int", "--max-running-requests": "int",
    "--chunked-prefill-size": "int", "--block-size": ("8", "16", "32", "64", "128"), "--seed": "int",
    "--swap-space": "number", "--cpu-offload-gb": "number", "--max-logprobs": "int",
    "--dtype": ("auto", "half", "float16", "bfloat16", "float", "float32"), "--served-model-name": "str",
    "--enable-chunked-prefill": "flag", "--enforce-eager": "flag", "--trust-remote-code": "flag",
    "--disable-log-requests": "flag", "--disable-log-stats": "flag", "--enable-expert-parallel": "flag",
    "--data-parallel-size": "int", "--scheduling-policy": ("fcfs", "priority"),
    "--load-format": ("auto", "pt", "safetensors", "npcache", "dummy", "runai_streamer"),
}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=False)


class Strategy(Strict):
    max_surge: int = Field(1, ge=0, le=1000, description="nodes added above the pool's size during the update "
                                                         "(Kubernetes maxSurge; AWS max healthy 100 + surge share)")
    max_unavailable: int = Field(1, ge=0, le=1000, description="nodes out of service at once: the batch size of "
                                                               "the local rollout, Kubernetes maxUnavailable, the "
                                                               "AWS min healthy percentage, the Azure batch")
    drain_timeout_s: int = Field(300, ge=0, le=86_400, description="longest wait for a draining node's in-flight "
                                                                   "requests before it is restarted anyway")

    @model_validator(mode="after")
    def _progress(self) -> Strategy:
        if self.max_surge == 0 and self.max_unavailable == 0:
            raise ValueError("max_surge and max_unavailable are both 0: no node could ever be replaced; set "
                             "max_unavailable 1 (one node at a time) or max_surge 1")
        return self


def _check_extra_args(args: list[str]) -> list[str]:
    i = 0
    while i < len(args):
        token = args[i]
        if SHELL_META.search(token):
            bad = SHELL_META.search(token).group(0)  # type: ignore[union-attr]
            raise ValueError(f"[{i}] {token!r} holds {bad!r}: no whitespace or shell metacharacters (each list item "
                             "is one argument)")
        flag, eq, inline = token.partition("=")
        if not FLAG.match(flag):
            raise ValueError(f"[{i}] {token!r} is not a --flag (a value must follow its flag)")
        if flag in OWNED_FLAGS:
            raise ValueError(f"[{i}] {flag} is set by the field {OWNED_FLAGS[flag]}, not in extra_args")
        if SECRET_FLAG.search(flag):
            # A policy document is readable by every viewer and kept in the audit log: no credential belongs here.
            raise ValueError(f"[{i}] {flag} would put a credential in the policy, which every viewer can read; "
                             "give the engine its key through the provider (a Kubernetes Secret as an environment "
                             "variable, the instance's secret store)")
        kind = KNOWN_FLAGS.get(flag)
        has_next = i + 1 < len(args) and not args[i + 1].startswith("--")
        if kind == "flag":
            if eq or has_next:
                raise ValueError(f"[{i}] {flag} takes no value")
            i += 1
            continue
        if eq:
            value, used = inline, 1
        elif has_next:
            value, used = args[i + 1], 2
            if SHELL_META.search(value):
                raise ValueError(f"[{i + 1}] {value!r}: no whitespace or shell metacharacters")
        elif kind is not None:
            raise ValueError(f"[{i}] {flag} needs a value")
        else:
            i += 1  # an unknown flag without a value: a switch
            continue
        problem = _type_problem(kind, value)
        if problem:
            raise ValueError(f"[{i}] {flag} {problem}, got {value!r}")
        i += used
    return args


def _type_problem(kind: str | tuple[str, ...] | None, value: str) -> str | None:
    if kind is None or kind == "str":
        return None if value else "needs a value"
    if isinstance(kind, tuple):
        return None if value in kind else f"must be one of {', '.join(kind)}"
    try:
        number = int(value) if kind == "int" else float(value)
    except ValueError:
        return f"must be {'a whole number' if kind == 'int' else 'a number'}"
    return None if number >= 0 and number == number and number != float("inf") else "must be 0 or more"


class PoolDeployment(Strict):
    engine: Literal["vllm", "sglang"] = "vllm"
    image: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9._/:@-]{0,254}$",
                              description="container image (or engine version) to run; null keeps the provider "
                                          "template's own")
    model: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$", description="the model (Hugging Face id or "
                                                                                    "local path under the model dir)")
    params_b: float = Field(gt=0, le=10_000, description="the model's parameter count in billions (the memory "
                                                         "estimate uses it)")
    tensor_parallel_size: int = Field(1, ge=1, le=64, description="GPUs a layer is split across (one node)")
    pipeline_parallel_size: int = Field(1, ge=1, le=64, description="stages the layers are split into")
    quantization: Literal["fp8", "awq", "gptq"] | None = Field(
        None, description="weights dtype: null = bf16 (2 bytes a parameter), fp8 (1), awq/gptq (4-bit, 0.5)")
    kv_cache_dtype: Literal["auto", "fp8", "fp8_e4m3", "fp8_e5m2"] = Field(
        "auto", description="auto = the model's dtype; fp8 halves the bytes per cached token")
    max_model_len: int = Field(32_768, ge=256, le=1_048_576, description="longest prompt + completion a request "
                                                                        "may ask for; the gateway routes longer "
                                                                        "requests elsewhere")
    gpu_memory_utilization: float = Field(0.9, gt=0.1, le=0.99, description="share of each GPU's memory the "
                                                                            "engine may take")
    prefix_caching: bool = True
    extra_args: list[str] = Field(default_factory=list, max_length=64,
                                  description="more engine arguments, one argv item each (e.g. \"--max-num-seqs\", "
                                              "\"256\"); no shell metacharacters; known flags are type-checked")
    strategy: Strategy = Field(default_factory=Strategy)
    gpus_per_node: int | None = Field(None, ge=1, le=64, description="only for a pool no node reports from yet: "
                                                                     "its GPUs per node (reported GPUs win)")
    gpu_memory_gb: float | None = Field(None, gt=0, le=10_000, description="only for a pool no node reports from "
                                                                           "yet: memory of one GPU in GB")

    @field_validator("extra_args")
    @classmethod
    def _args(cls, args: list[str]) -> list[str]:
        return _check_extra_args(args)


class Deployment(Strict):
    pools: dict[PoolName, PoolDeployment] = Field(
        default_factory=dict, max_length=1000,
        description="what each pool runs; a pool not listed runs whatever its provider's template holds")


# --- rendering -------------------------------------------------------------------------------------------------


def engine_args(entry: dict[str, Any]) -> list[str]:
    """The engine's arguments for a (validated) pool entry, as argv items after the server entry point."""
    tp, pp = str(entry["tensor_parallel_size"]), str(entry["pipeline_parallel_size"])
    if entry["engine"] == "sglang":
        args = ["--model-path", entry["model"], "--tp-size", tp, "--pp-size", pp,
                "--context-length", str(entry["max_model_len"]),
                "--mem-fraction-static", f"{entry['gpu_memory_utilization']:g}"]
        if entry["quantization"]:
            args += ["--quantization", entry["quantization"]]
        if entry["kv_cache_dtype"] != "auto":
            args += ["--kv-cache-dtype", "fp8_e5m2" if entry["kv_cache_dtype"] == "fp8" else entry["kv_cache_dtype"]]
        if not entry["prefix_caching"]:
            args.append("--disable-radix-cache")
    else:
        args = ["--model", entry["model"], "--tensor-parallel-size", tp, "--pipeline-parallel-size", pp,
                "--max-model-len", str(entry["max_model_len"]),
                "--gpu-memory-utilization", f"{entry['gpu_memory_utilization']:g}"]
        if entry["quantization"]:
            args += ["--quantization", entry["quantization"]]
        if entry["kv_cache_dtype"] != "auto":
            args += ["--kv-cache-dtype", entry["kv_cache_dtype"]]
        args.append("--enable-prefix-caching" if entry["prefix_caching"] else "--no-enable-prefix-caching")
    return args + list(entry["extra_args"])


def command(entry: dict[str, Any]) -> list[str]:
    """The whole command line of the engine's OpenAI server."""
    head = ["python3", "-m", "sglang.launch_server"] if entry["engine"] == "sglang" else \
        ["python3", "-m", "vllm.entrypoints.openai.api_server"]
    return head + engine_args(entry)


# --- pool fit --------------------------------------------------------------------------------------------------

# Whether a provider can run one engine across several nodes (pipeline stages on different nodes). None of them
# can today: each runs every node (pod, instance, VM) as an independent replica.
MULTI_NODE_PP: dict[str, str | None] = {
    "local": None, "kubernetes": None, "aws": None, "azure": None,
}
WHY_NOT_MULTI_NODE: dict[str, str] = {
    "local": "the local provider runs each simulated node as its own engine",
    "kubernetes": "the kubernetes provider scales a Deployment whose pods are independent replicas (multi-node "
                  "needs a LeaderWorkerSet)",
    "aws": "the aws provider's Auto Scaling group instances are independent replicas",
    "azure": "the azure provider's scale-set VMs are independent replicas",
    "": "the pool has no provider",
}


class Hardware:
    """What the fit check knows of a pool's nodes."""

    def __init__(self, gpus_per_node: int | None, gpu_memory_gb: float | None, gpu_name: str, provider: str,
                 source: str) -> None:
        self.gpus_per_node, self.gpu_memory_gb = gpus_per_node, gpu_memory_gb
        self.gpu_name, self.provider, self.source = gpu_name, provider, source


def fit_problems(pool: str, entry: dict[str, Any], hw: Hardware) -> dict[str, str]:
    """What does not fit (path -> message with the arithmetic); pure, for tests and the advisor."""
    out: dict[str, str] = {}
    where = ("pools", pool)
    tp, pp = entry["tensor_parallel_size"], entry["pipeline_parallel_size"]
    gpus = entry.get("gpus_per_node") if hw.gpus_per_node is None else hw.gpus_per_node
    mem = entry.get("gpu_memory_gb") if hw.gpu_memory_gb is None else hw.gpu_memory_gb
    if gpus is None or mem is None:
        missing = " and ".join(n for n, v in (("gpus_per_node", gpus), ("gpu_memory_gb", mem)) if v is None)
        out[error_path((*where, "gpus_per_node" if gpus is None else "gpu_memory_gb"))] = (
            f"no node of pool {pool!r} reports its GPUs yet, so the fit cannot be checked: state {missing} in the "
            "entry (what the pool's nodes will have)")
        return out
    multi = MULTI_NODE_PP.get(hw.provider)
    if tp > gpus:
        out[error_path((*where, "tensor_parallel_size"))] = (
            f"tensor_parallel_size {tp} needs {tp} GPUs in one node, but pool {pool!r}'s nodes have {gpus} GPUs "
            f"each ({hw.source})")
    elif tp * pp > gpus and multi is None:
        why = WHY_NOT_MULTI_NODE.get(hw.provider, f"provider {hw.provider}")
        out[error_path((*where, "pipeline_parallel_size"))] = (
            f"tensor_parallel_size {tp} × pipeline_parallel_size {pp} = {tp * pp} GPUs, but pool {pool!r}'s nodes "
            f"have {gpus} GPUs each ({hw.source}); pipeline parallelism across nodes is not supported by its "
            f"provider ({why}): use at most {gpus // tp} stage(s) of TP {tp}")
    shards = tp * pp
    bpp = BYTES_PER_PARAM[entry["quantization"]]
    weights_total = entry["params_b"] * bpp
    per_gpu = weights_total / shards
    usable = mem * entry["gpu_memory_utilization"]
    reserve = KV_RESERVE_SHARE * usable
    if per_gpu + reserve > usable:
        need_shards = next((s for s in range(shards, 4097) if weights_total / s + reserve <= usable), None)
        hint = (f"; it needs TP × PP of at least {need_shards} at this dtype" if need_shards else "") + (
            "; fp8 quantization halves the weights" if entry["quantization"] is None else "")
        out[error_path((*where, "model"))] = (
            f"{entry['model']} does not fit the GPUs' memory: {entry['params_b']:g} B params × {bpp:g} bytes "
            f"({DTYPE_WORD[entry['quantization']]}) = {weights_total:.1f} GB of weights / (TP {tp} × PP {pp}) = "
            f"{per_gpu:.1f} GB per GPU + KV reserve {reserve:.1f} GB ({KV_RESERVE_SHARE:.0%} of usable) = "
            f"{per_gpu + reserve:.1f} GB > {usable:.1f} GB usable ({mem:.1f} GB {hw.gpu_name or 'GPU'} × "
            f"gpu_memory_utilization {entry['gpu_memory_utilization']:g}){hint}")
    return out


_GB_IN_NAME = re.compile(r"(\d+)\s*GB", re.IGNORECASE)


def pool_hardware(pool_name: str) -> Hardware | None:
    """The pool's GPUs per node (fewest over its nodes) and memory per GPU (least; from the latest samples, else
    the GPU's name), and its provider kind; None when no such pool exists."""
    from django.db.models import Count

    from control.controller.models import PoolProvider
    from dashboard.fleet.models import GPU, Node, Pool
    from dashboard.metrics.latest import latest_of

    pool = Pool.objects.filter(name=pool_name).first()
    if pool is None:
        return None
    binding = PoolProvider.objects.filter(pool=pool).first()
    provider = binding.kind if binding else ""
    nodes = list(Node.objects.filter(pool=pool).exclude(state=Node.State.REMOVED).values_list("name", flat=True))
    counts = GPU.objects.filter(node__name__in=nodes).values("node").annotate(n=Count("id")).values_list("n",
                                                                                                      flat=True)
    gpus = min(counts) if counts else None
    names = list(GPU.objects.filter(node__name__in=nodes).order_by().values_list("name", flat=True).distinct())
    memory: float | None = None
    try:
        snaps = latest_of(nodes)
    except Exception:  # noqa: BLE001 - Redis down: the GPU names still tell the memory
        snaps = {}
    totals = [g["fb_total_bytes"] for s in snaps.values() for g in s.get("gpus") or []
              if isinstance(g, dict) and isinstance(g.get("fb_total_bytes"), int | float)]
    if totals:
        memory = min(totals) / 1e9
    else:
        sizes = [int(m.group(1)) for n in names if (m := _GB_IN_NAME.search(n or ""))]
        memory = float(min(sizes)) if sizes else None
    source = f"{len(nodes)} node(s) reporting" if gpus is not None else "stated in the entry"
    return Hardware(gpus, memory, names[0] if len(names) == 1 else "", provider, source)


def check_fit(document: dict[str, Any]) -> dict[str, str]:
    """Every pool entry of a validated document against its pool: path -> problem (empty when all fit)."""
    out: dict[str, str] = {}
    for pool, entry in document["pools"].items():
        hw = pool_hardware(pool)
        if hw is None:
            out[error_path(("pools", pool))] = f"no pool named {pool!r}; create it (or a node in it) first"
            continue
        out.update(fit_problems(pool, entry, hw))
    return out
