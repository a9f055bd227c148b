"""How an engine is set up (`EngineConfig`, and what each setting cannot go with), and what one of
its steps reports (`StepStats`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from service.engine.scheduler import SchedulerConfig


@dataclass(frozen=True)
class EngineConfig:
    kv_cache_mb: float = 256.0  # memory budget of the paged KV cache
    block_size: int = 16  # positions per cache block
    device: str = "cpu"
    dtype: str = "float32"  # float32 on CPU; float16 / bfloat16 on CUDA
    num_threads: int | None = None  # torch intra-op threads (process-wide); None: leave as is
    max_input_tokens: int | None = None  # longer inputs are refused (RequestTooLong)
    prepack_weights: bool = False  # CPU fp32: oneDNN-packed Linear weights (model/cpu_kernels.py)
    # "int8": int8 Linear layers on the CPU (model/cpu_kernels.py), instead of packed float32 ones.
    # Faster, ~1% error per layer: the tokens may differ from float32's.
    quantize: Literal["int8"] | None = None
    # torch.compile the model's serving forward (dynamic shapes). Same tokens; on the 2-core CPU
    # of docs/benchmarks.md it is no faster than eager and compiles for 5-35 s, so it is off by
    # default (for CUDA).
    compile: bool = False
    # CPU float32: decode attention reads the paged cache in place with a small C kernel, compiled
    # on first use (model/paged_kernel.py); without a C compiler it gathers, as on CUDA.
    attention_kernel: bool = True
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)


def device_problem(device: str) -> str | None:
    """Why the engine cannot run on `device` here ("cpu", "cuda", "cuda:N"), or None."""
    try:
        parsed = torch.device(device)
    except RuntimeError:
        return f"{device!r} is not a device: cpu, cuda or cuda:N"
    if parsed.type not in ("cpu", "cuda"):
        return f"{device!r}: only cpu and cuda are supported"
    if parsed.type == "cuda" and not torch.cuda.is_available():
        return "no CUDA device here (torch.cuda.is_available() is False)"
    if parsed.type == "cuda" and (parsed.index or 0) >= torch.cuda.device_count():
        return f"{device!r}: there are {torch.cuda.device_count()} CUDA devices"
    return None


def quantize_problem(quantize: str | None, device: str, dtype: str, compile: bool) -> str | None:
    """Why `quantize` cannot be used with these settings, or None."""
    if quantize not in (None, "int8"):
        return f"{quantize!r}: the only quantization is int8"
    if quantize and (torch.device(device).type != "cpu" or dtype != "float32"):
        return f"int8 is for the CPU in float32, not {device} in {dtype}"
    if quantize and compile:
        # Compiled, the other ops round differently, and int8 rounding turns ~1e-7 into whole
        # quantization steps: a tiny model's greedy tokens differed from eager's at near-ties.
        return "int8 does not go with compile (its tokens would differ from eager int8's)"
    return None


@dataclass(frozen=True)
class StepStats:
    """What one step did; the HTTP layer turns these into metrics."""

    num_running: int
    num_waiting: int
    batch_size: int  # rows run this step (beams of prefilled and decoding requests)
    num_prefill_tokens: int
    num_decode_tokens: int
    blocks_used: int
    blocks_total: int
    num_preempted: int  # this step
    num_preemptions_total: int
    duration_s: float
