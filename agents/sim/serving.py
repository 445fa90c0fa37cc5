"""What a simulated node runs (the `deployment` policy's pool entry) and how it changes the node's performance.

A hardware profile's figures are those of the node serving its model with tensor parallelism over all of its GPUs
in bf16 (profiles.py). A `Serving` reshapes them, by these stated rules:

* Tensor parallelism splits each token's compute over TP GPUs, and every extra GPU adds an all-reduce:
  step time ∝ (1 + TP_COMM_OVERHEAD x (TP - 1)) / TP, relative to TP = the node's GPU count. So TP 4 on an
  8-GPU node decodes 1.70x slower than TP 8, and TP 1 5.93x slower (TP_COMM_OVERHEAD 0.05).
* Pipeline parallelism spreads the weights over PP stages (more memory for the KV cache) and costs
  PP_HOP_OVERHEAD of step time per extra stage (the hand-off between stages).
* FP8 weights take 1 byte a parameter instead of 2 (the freed memory becomes KV cache) and decode
  FP8_DECODE_SPEEDUP times faster (decode is bound by reading the weights); FP8 KV cache doubles the tokens held.
* The KV cache is what the used GPUs have left after the weights, within gpu_memory_utilization, in proportion to
  the profile's own KV cache for its own free memory.
* max_model_len bounds requests (prompt + completion), as vLLM's does.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from agents.sim.profiles import Profile

TP_COMM_OVERHEAD = 0.05
PP_HOP_OVERHEAD = 0.03
FP8_DECODE_SPEEDUP = 1.3
BYTES_PER_PARAM = {None: 2.0, "fp8": 1.0, "awq": 0.5, "gptq": 0.5}
BASE_MEMORY_SHARE = 0.9  # the profile's KV cache is for vLLM's default gpu_memory_utilization
FIELDS = ("model", "engine", "tensor_parallel_size", "pipeline_parallel_size", "quantization", "kv_cache_dtype",
          "max_model_len", "gpu_memory_utilization", "prefix_caching", "params_b", "revision")


class ServingError(ValueError):
    pass


@dataclass(frozen=True)
class Serving:
    model: str
    engine: str = "vllm"
    tensor_parallel_size: int | None = None  # None: all of the node's GPUs
    pipeline_parallel_size: int = 1
    quantization: str | None = None
    kv_cache_dtype: str = "auto"
    max_model_len: int | None = None  # None: the profile's
    gpu_memory_utilization: float = BASE_MEMORY_SHARE
    prefix_caching: bool = True
    params_b: float | None = None  # None: the profile's own model size
    revision: int | None = None  # the policy revision it came from, when the controller says

    @classmethod
    def parse(cls, doc: Any) -> Serving:
        """From a control-API body (a deployment pool entry; unknown keys of the policy are ignored)."""
        if not isinstance(doc, dict):
            raise ServingError("serving must be a JSON object")
        model = doc.get("model")
        if not isinstance(model, str) or not 0 < len(model) <= 200:
            raise ServingError(f"serving.model must be a model name, got {model!r}")
        out: dict[str, Any] = {"model": model}

        def whole(key: str, low: int, high: int) -> None:
            v = doc.get(key)
            if v is None:
                return
            if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
                raise ServingError(f"serving.{key} must be a whole number {low}-{high}, got {v!r}")
            out[key] = v

        whole("tensor_parallel_size", 1, 64)
        whole("pipeline_parallel_size", 1, 64)
        whole("max_model_len", 16, 1_048_576)
        whole("revision", 1, 2**62)
        for key, choices in (("engine", ("vllm", "sglang")), ("quantization", (None, "fp8", "awq", "gptq")),
                             ("kv_cache_dtype", ("auto", "fp8", "fp8_e4m3", "fp8_e5m2"))):
            if key in doc:
                if doc[key] not in choices:
                    raise ServingError(f"serving.{key} must be one of {choices}, got {doc[key]!r}")
                out[key] = doc[key]
        for key, low, high in (("gpu_memory_utilization", 0.1, 0.99), ("params_b", 0.001, 10_000)):
            v = doc.get(key)
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or not low <= v <= high:
                raise ServingError(f"serving.{key} must be a number {low:g}-{high:g}, got {v!r}")
            out[key] = float(v)
        if "prefix_caching" in doc:
            if not isinstance(doc["prefix_caching"], bool):
                raise ServingError("serving.prefix_caching must be true or false")
            out["prefix_caching"] = doc["prefix_caching"]
        return cls(**out)

    def describe(self, gpus: int, profile: Profile) -> dict[str, Any]:
        """What the node advertises in its samples and its control-API entry."""
        return {"model": self.model, "engine": self.engine,
                "tensor_parallel_size": self.tensor_parallel_size or gpus,
                "pipeline_parallel_size": self.pipeline_parallel_size, "quantization": self.quantization,
                "kv_cache_dtype": self.kv_cache_dtype, "max_model_len": profile.max_model_len,
                "prefix_caching": self.prefix_caching, "revision": self.revision}


def _tp_time(tp: int) -> float:
    return (1.0 + TP_COMM_OVERHEAD * (tp - 1)) / tp


def shape(base: Profile, s: Serving, gpus: int) -> Profile:
    """The profile of a node with `gpus` GPUs of `base` hardware running `s`; ServingError when it cannot run."""
    tp = s.tensor_parallel_size or gpus
    pp = s.pipeline_parallel_size
    if tp * pp > gpus:
        raise ServingError(f"TP {tp} x PP {pp} = {tp * pp} GPUs, but the node has {gpus}")
    time_factor = _tp_time(tp) / _tp_time(gpus) * (1.0 + PP_HOP_OVERHEAD * (pp - 1))
    decode_factor = time_factor / (FP8_DECODE_SPEEDUP if s.quantization == "fp8" else 1.0)
    # Memory: per GPU, weights then KV within the memory share; the base is the profile's bf16 weights over all
    # GPUs at vLLM's default share.
    usable = base.fb_total_bytes - base.fb_reserved_bytes
    base_weights_total = base.weights_bytes * gpus
    total_weights = (s.params_b * 1e9 * BYTES_PER_PARAM[None] if s.params_b else base_weights_total) \
        * BYTES_PER_PARAM[s.quantization] / BYTES_PER_PARAM[None]
    weights = total_weights / (tp * pp)
    free = usable * s.gpu_memory_utilization - weights
    if free <= 0:
        raise ServingError(f"the weights ({weights / 1e9:.1f} GB per GPU) leave no room for a KV cache within "
                           f"{s.gpu_memory_utilization:g} of {usable / 1e9:.1f} GB")
    base_free = (usable * BASE_MEMORY_SHARE - base.weights_bytes) * gpus
    kv_scale = free * tp * pp / base_free * (2.0 if s.kv_cache_dtype != "auto" else 1.0)
    return dataclasses.replace(
        base, decode_s=base.decode_s * decode_factor, prefill_tps=base.prefill_tps / time_factor,
        kv_tokens=max(1, int(base.kv_tokens * kv_scale)), max_model_len=s.max_model_len or base.max_model_len,
        weights_bytes=int(weights))
