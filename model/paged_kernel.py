"""The CPU decode-attention kernel (`csrc/paged_attention.c`): attention read straight from the
paged KV cache, instead of gathering each row's keys into a padded batch first.

`load()` finds it built next to its source (`python -m model.paged_kernel` builds it there, as
the Docker image does), or builds it on first use with the machine's C compiler (`cc`, or $CC)
into a cache directory, and loads it with ctypes. Where there is no compiler, or the build fails,
`load()` returns None and the model keeps the gather path (`model.paged.read_slots` + SDPA), which
computes the same.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch import Tensor

log = logging.getLogger(__name__)

SOURCE = Path(__file__).parent / "csrc" / "paged_attention.c"
PREBUILT = SOURCE.with_suffix(".so")
# Portable: the source compiles its hot loop for AVX2 as well and picks at load time.
FLAGS = ["-O3", "-fopenmp", "-shared", "-fPIC"]


def build(target: Path) -> bool:
    """Compile the kernel into `target`; False (and a warning) where it cannot be built."""
    compiler = shutil.which(os.environ.get("CC") or "cc")
    if compiler is None:
        log.warning("no C compiler: decode attention gathers the KV cache (slower on the CPU)")
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = Path(tmp) / target.name
        command = [compiler, *FLAGS, str(SOURCE), "-o", str(built), "-lm"]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            log.warning("the decode-attention kernel did not compile: %s", result.stderr.strip())
            return False
        built.replace(target)  # atomic: a concurrent build finds a whole file or none
    return True


def _cached() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join(FLAGS).encode()).hexdigest()[:16]
    return root / "attnserve" / "kernels" / f"paged_attention-{key}.so"


class PagedAttention:
    """The loaded kernel; a call computes one decode step's attention for one layer."""

    def __init__(self, path: Path):
        self.lib = ctypes.CDLL(str(path))
        p, i = ctypes.c_void_p, ctypes.c_int64
        self.lib.paged_attention.argtypes = [p, i, p, p, p, p, i, i, i, i, ctypes.c_float, p]
        self.lib.paged_attention.restype = None

    def __call__(
        self,
        q: Tensor,  # (B, H, 1, Dh), rows may be strided (a view of the fused QKV projection)
        pool: Tensor,  # (slots, 2, H, Dh)
        slots: Tensor,  # (R, T) int64, every one < slots
        lengths: Tensor,  # (R,) int64: row r attends to its first lengths[r] slots, 1 ≤ it ≤ T
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
        return out.transpose(1, 2)  # a view: the heads merge back without a copy


def load() -> PagedAttention | None:
    """The kernel, or None where it cannot be built here."""
    try:
        if PREBUILT.exists():
            return PagedAttention(PREBUILT)
        path = _cached()
        if not path.exists() and not build(path):
            return None
        return PagedAttention(path)
    except OSError as error:  # an unwritable cache, a library that will not load
        log.warning("the decode-attention kernel is unavailable: %s", error)
        return None


if __name__ == "__main__":  # build it next to its source (the Docker image's build stage)
    sys.exit(0 if build(PREBUILT) else 1)
