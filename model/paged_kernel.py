"""The CPU decode-attention kernel (`csrc/paged_attention.c`): attention read straight from the
paged KV cache, instead of gathering each row's keys into a padded batch first.

It is compiled on first use with the machine's C compiler (`cc`, for this CPU) into a cache
directory and loaded with ctypes. Where there is no compiler, or it fails, `load()` returns None
and the model keeps the gather path (`model.paged.read_slots` + SDPA), which computes the same.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
from torch import Tensor

log = logging.getLogger(__name__)

SOURCE = Path(__file__).parent / "csrc" / "paged_attention.c"
FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC"]


def _cpu_id() -> str:
    """What -march=native depends on, so that a cache shared between machines stays right."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    return "".join(sorted({line for line in lines if line.startswith(("model name", "flags"))}))


def _cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "attnserve" / "kernels"


def _build() -> Path | None:
    source = SOURCE.read_bytes()
    key = hashlib.sha256(source + " ".join(FLAGS).encode() + _cpu_id().encode()).hexdigest()
    target = _cache_dir() / f"paged_attention-{key[:16]}.so"
    if target.exists():
        return target
    compiler = shutil.which(os.environ.get("CC") or "cc")
    if compiler is None:
        log.warning("no C compiler: decode attention gathers the KV cache (slower on the CPU)")
        return None
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = Path(tmp) / target.name
        result = subprocess.run(
            [compiler, *FLAGS, str(SOURCE), "-o", str(built), "-lm"],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            log.warning("the decode-attention kernel did not compile: %s", result.stderr.strip())
            return None
        built.replace(target)  # atomic: a concurrent build finds a whole file or none
    return target


class PagedAttention:
    """The loaded kernel; `__call__` computes one decode step's attention for a layer."""

    def __init__(self, path: Path):
        self.lib = ctypes.CDLL(str(path))
        p, i = ctypes.c_void_p, ctypes.c_int64
        self.lib.paged_attention.argtypes = [p, i, p, p, p, p, i, i, i, i, ctypes.c_float, p]
        self.lib.paged_attention.restype = None

    def __call__(
        self,
        q: Tensor,  # (B, H, 1, Dh), rows may be strided (a view of the fused QKV projection)
        pool: Tensor,  # (slots, 2, H, Dh)
        slots: Tensor,  # (R, T) int64
        lengths: Tensor,  # (R,) int64: row r attends to its first lengths[r] slots
        kv_rows: Tensor | None = None,  # (B,) int64: row b reads slots[kv_rows[b]]; None: b
    ) -> Tensor:  # (B, H, 1, Dh)
        B, H, _, D = q.shape
        assert q.dtype == pool.dtype == torch.float32 and q.device.type == "cpu"
        assert q.stride(1) == D and q.stride(3) == 1 and pool.is_contiguous()
        assert slots.is_contiguous() and lengths.is_contiguous()
        out = torch.empty(B, 1, H, D)
        self.lib.paged_attention(
            q.data_ptr(), q.stride(0), pool.data_ptr(), slots.data_ptr(), lengths.data_ptr(),
            None if kv_rows is None else kv_rows.data_ptr(),
            B, slots.shape[1], H, D, D**-0.5, out.data_ptr(),
        )  # fmt: skip
        return out.transpose(1, 2)


def load() -> PagedAttention | None:
    """The kernel, or None where it cannot be built here."""
    try:
        path = _build()
        return None if path is None else PagedAttention(path)
    except OSError as error:  # an unwritable cache, a library that will not load
        log.warning("the decode-attention kernel is unavailable: %s", error)
        return None
