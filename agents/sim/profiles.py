"""Hardware profiles of simulated nodes: how fast a node serves, how big its KV cache is, what its GPUs report.

The numbers are plausible for a node serving one mid-size model with tensor parallelism over all of its GPUs; they
are not measurements. What matters for the benchmarks that route over a mixed fleet is that the profiles differ the
way real hardware does: an H100 node prefills and decodes fastest and holds the most sequences, an L40S node is
slowest, holds the fewest sequences and has the smallest KV cache. Every figure is per node (all of its GPUs
together) except the `gpu_*` fields, which are per GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1024**2
GIB = 1024**3


@dataclass(frozen=True)
class Profile:
    name: str
    # Serving performance (model seconds).
    max_seqs: int  # continuous batching limit: sequences decoded together; the rest wait
    prefill_tps: float  # prompt tokens prefilled per second
    decode_s: float  # seconds per decode step at batch size 1
    decode_growth: float  # each extra sequence in the batch makes a step this fraction slower
    kv_tokens: int  # KV cache capacity in tokens (prompt + generated of every running sequence)
    max_model_len: int  # longest prompt + completion a request may ask for
    # GPU (per GPU, as NVML reports it).
    gpu_name: str
    fb_total_bytes: int
    fb_reserved_bytes: int
    weights_bytes: int  # model weights resident on each GPU
    power_max_w: float  # TDP: upper end of the power limit constraints
    power_min_w: float  # lower end of the power limit constraints
    power_default_w: float
    idle_w: float
    sm_clock_max_mhz: float
    sm_clock_idle_mhz: float
    mem_clock_mhz: float
    has_hbm_temp: bool  # HBM boards report a memory temperature, GDDR boards do not
    has_nvlink: bool
    has_gpm: bool  # GPM (SM/tensor/DRAM activity) exists on Hopper and later only
    ambient_c: float = 28.0
    heat_c_per_w: float = 0.08  # steady-state temperature rise above ambient per watt drawn

    def decode_step_s(self, batch: int) -> float:
        """Seconds for one decode step (every sequence in the batch gets one token) at `batch` sequences."""
        return self.decode_s * (1.0 + self.decode_growth * max(0, batch - 1))


PROFILES: dict[str, Profile] = {
    "h100": Profile(
        name="h100", max_seqs=64, prefill_tps=16_000.0, decode_s=0.012, decode_growth=0.012, kv_tokens=160_000,
        max_model_len=32_768, gpu_name="NVIDIA H100 80GB HBM3", fb_total_bytes=81_559 * MIB,
        fb_reserved_bytes=477 * MIB, weights_bytes=40 * GIB, power_max_w=700.0, power_min_w=200.0,
        power_default_w=700.0, idle_w=70.0, sm_clock_max_mhz=1980.0, sm_clock_idle_mhz=345.0,
        mem_clock_mhz=2619.0, has_hbm_temp=True, has_nvlink=True, has_gpm=True, heat_c_per_w=0.08,
    ),
    "a100": Profile(
        name="a100", max_seqs=48, prefill_tps=8_000.0, decode_s=0.018, decode_growth=0.016, kv_tokens=96_000,
        max_model_len=32_768, gpu_name="NVIDIA A100-SXM4-80GB", fb_total_bytes=81_920 * MIB,
        fb_reserved_bytes=605 * MIB, weights_bytes=40 * GIB, power_max_w=400.0, power_min_w=100.0,
        power_default_w=400.0, idle_w=55.0, sm_clock_max_mhz=1410.0, sm_clock_idle_mhz=210.0,
        mem_clock_mhz=1593.0, has_hbm_temp=True, has_nvlink=True, has_gpm=False, heat_c_per_w=0.13,
    ),
    "l40s": Profile(
        name="l40s", max_seqs=24, prefill_tps=4_000.0, decode_s=0.030, decode_growth=0.030, kv_tokens=40_000,
        max_model_len=16_384, gpu_name="NVIDIA L40S", fb_total_bytes=46_068 * MIB,
        fb_reserved_bytes=439 * MIB, weights_bytes=20 * GIB, power_max_w=350.0, power_min_w=100.0,
        power_default_w=350.0, idle_w=35.0, sm_clock_max_mhz=2520.0, sm_clock_idle_mhz=210.0,
        mem_clock_mhz=9001.0, has_hbm_temp=False, has_nvlink=False, has_gpm=False, heat_c_per_w=0.15,
    ),
}

# `mixed` is not a profile of its own: a fleet started with it cycles through these.
MIXED: tuple[str, ...] = ("h100", "a100", "l40s")
PROFILE_CHOICES: tuple[str, ...] = (*PROFILES, "mixed")


def get(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; known: {', '.join(PROFILES)}") from None


def for_index(name: str, index: int) -> str:
    """The profile of the `index`-th node of a fleet started with profile `name` (which may be `mixed`)."""
    if name == "mixed":
        return MIXED[index % len(MIXED)]
    get(name)
    return name
