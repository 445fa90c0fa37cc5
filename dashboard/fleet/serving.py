"""The `serving` block of an ingest batch: what the node's inference server runs, as its agent advertises it
(model, max model length, quantization ...). Kept in the node's latest snapshot, where the gateway reads
max_model_len to skip nodes whose context is too short for a request, and the pool page shows what runs."""

from __future__ import annotations

from typing import Any

# key -> (types allowed, check of the value or None, what it must be)
_INTS = {"tensor_parallel_size": (1, 64), "pipeline_parallel_size": (1, 64), "max_model_len": (1, 1 << 24),
         "revision": (1, 2**62)}
_CHOICES = {"engine": ("vllm", "sglang"), "quantization": (None, "fp8", "awq", "gptq"),
            "kv_cache_dtype": ("auto", "fp8", "fp8_e4m3", "fp8_e5m2")}


def check(doc: Any, add: Any) -> dict[str, Any] | None:
    """The block, cleaned (unknown keys dropped: newer agents may say more), or None after `add(path, message)`
    for each bad field."""
    if doc is None:
        return None
    if not isinstance(doc, dict):
        add("serving", "must be an object")
        return None
    out: dict[str, Any] = {}
    bad = False
    model = doc.get("model")
    if model is not None:
        if not isinstance(model, str) or not 0 < len(model) <= 200:
            add("serving.model", "must be a model name (1-200 characters)")
            bad = True
        else:
            out["model"] = model
    for key, (low, high) in _INTS.items():
        v = doc.get(key)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
            add(f"serving.{key}", f"{v!r} is not a whole number {low}-{high}")
            bad = True
        else:
            out[key] = v
    for key, choices in _CHOICES.items():
        if key not in doc:
            continue
        if doc[key] not in choices:
            add(f"serving.{key}", f"{doc[key]!r} is not one of {', '.join(str(c) for c in choices)}")
            bad = True
        else:
            out[key] = doc[key]
    if "prefix_caching" in doc:
        if not isinstance(doc["prefix_caching"], bool):
            add("serving.prefix_caching", "must be true or false")
            bad = True
        else:
            out["prefix_caching"] = doc["prefix_caching"]
    return None if bad else out
