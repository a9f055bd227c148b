"""Server settings: command-line flags, each with an `ATTNSERVE_*` environment variable."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.engine import device_problem, quantize_problem

CHECKPOINTS = Path(__file__).resolve().parents[2] / "model" / "checkpoints"
DEFAULT_MODELS = [f"en-de={CHECKPOINTS / 'en-de'}", f"en-lm={CHECKPOINTS / 'en-lm'}"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ATTNSERVE_")

    host: str = Field("127.0.0.1", description="address to listen on (0.0.0.0: every interface)")
    port: int = Field(8000, ge=0, le=65535, description="port to listen on")
    models: list[str] = Field(
        default_factory=lambda: list(DEFAULT_MODELS), description="the models served, ID=PATH"
    )
    device: str = Field("cpu", description="cpu, cuda or cuda:N")
    dtype: Literal["float32", "float16", "bfloat16"] = Field(
        "float32", description="float32 on the CPU; float16 or bfloat16 on CUDA"
    )
    threads: int | None = Field(None, ge=1, description="torch intra-op threads")
    # The engines in a process of their own, whose steps then share no GIL with the event loop
    # (service/engine/engine_process.py; docs/engine.md measured what that costs)
    engine_process: bool = False
    prepack_weights: bool = True  # CPU fp32: oneDNN-packed Linear weights (same math, faster)
    # CPU fp32: decode attention reads the paged KV cache in place (a C kernel built on first use)
    attention_kernel: bool = True
    compile: bool = False  # torch.compile the model's forward (no faster on CPU: for CUDA)
    quantize: Literal["int8"] | None = Field(
        None, description="int8: int8 Linear layers on the CPU (faster; tokens may differ)"
    )
    max_running_requests: int = Field(32, ge=1, description="requests decoded together, per model")
    max_queued_requests: int = Field(
        256,
        ge=1,
        description="requests waiting per model beyond --max-running-requests; more are "
        "refused with 429",
    )
    max_tokens_per_step: int = Field(
        4096, ge=16, description="tokens a step may run: prefills plus one per decoding beam"
    )
    kv_cache_mb: float = Field(256.0, gt=0, description="KV cache memory per model, MiB")
    block_size: int = Field(16, ge=1, description="token positions per KV cache block")
    max_input_tokens: int = Field(
        256,
        ge=1,
        description="longer inputs are refused; a model's positions may allow fewer (/info)",
    )
    max_new_tokens: int = Field(
        256,
        ge=1,
        description="the most new tokens a request may ask for; a model's positions may allow "
        "fewer (/info): a translation model then lowers the request's, a generator refuses it",
    )
    request_timeout_s: float | None = Field(
        120.0, gt=0, description="deadline of a request that sets none"
    )
    batching: Literal["continuous", "static"] = Field(
        "continuous", description="static: the benchmark's baseline"
    )
    # When the KV cache runs out: preempt a running request and recompute it later (the
    # default), or reserve input + max_new_tokens at admission and never preempt (docs/engine.md)
    reserve_full_length: bool = False
    api_key: str | None = Field(None, description="require Authorization: Bearer KEY")
    log_level: Literal["debug", "info", "warning", "error", "critical"] = Field(
        "info", description="debug, info, warning, error or critical"
    )
    max_body_bytes: int = Field(1_000_000, ge=1024, description="larger bodies get a 413")
    drain_timeout_s: float = Field(
        30.0, ge=0, description="on SIGTERM, how long accepted requests may still run"
    )
    keepalive_s: float = Field(15.0, gt=0, description="SSE keep-alive comment interval")

    @field_validator("log_level", mode="before")
    @classmethod
    def _any_case(cls, level: object) -> object:
        return level.lower() if isinstance(level, str) else level

    @field_validator("device")
    @classmethod
    def _device_exists(cls, device: str) -> str:
        problem = device_problem(device)
        if problem:
            raise ValueError(problem)
        return device

    @field_validator("quantize")
    @classmethod
    def _quantize_fits(cls, quantize: str | None, info: ValidationInfo) -> str | None:
        data = info.data
        problem = quantize_problem(
            quantize,
            data.get("device", "cpu"),
            data.get("dtype", "float32"),
            data.get("compile", False),
        )
        if problem:
            raise ValueError(problem)
        return quantize

    @field_validator("models")
    @classmethod
    def _id_equals_path(cls, models: list[str]) -> list[str]:
        for spec in models:
            model_id, sep, path = spec.partition("=")
            if not sep or not model_id or not path:
                raise ValueError(f"expects ID=PATH, got {spec!r}")
        return models

    def model_paths(self) -> dict[str, Path]:
        return {spec.partition("=")[0]: Path(spec.partition("=")[2]) for spec in self.models}


def parse_args(argv: list[str] | None = None) -> Settings:
    """Flags override environment variables, which override the defaults."""
    p = argparse.ArgumentParser(prog="attnserve", description="Serve Transformer models over HTTP.")
    p.add_argument("command", nargs="?", choices=["serve"], default="serve")
    flags = {
        "--host": str,
        "--port": int,
        "--device": str,
        "--dtype": str,
        "--threads": int,
        "--max-running-requests": int,
        "--max-queued-requests": int,
        "--max-tokens-per-step": int,
        "--kv-cache-mb": float,
        "--block-size": int,
        "--max-input-tokens": int,
        "--max-new-tokens": int,
        "--request-timeout-s": float,
        "--api-key": str,
        "--log-level": str,
        "--max-body-bytes": int,
        "--drain-timeout-s": float,
        "--keepalive-s": float,
    }
    for flag, kind in flags.items():
        p.add_argument(flag, type=kind, default=None, help=_help(flag))
    p.add_argument(
        "--batching", choices=["continuous", "static"], default=None, help=_help("--batching")
    )
    p.add_argument("--quantize", choices=["int8"], default=None, help=_help("--quantize"))
    p.add_argument(
        "--no-prepack-weights", dest="prepack_weights", action="store_false", default=None,
        help="use plain F.linear instead of oneDNN-packed weights on the CPU",
    )  # fmt: skip
    p.add_argument(
        "--no-attention-kernel", dest="attention_kernel", action="store_false", default=None,
        help="gather the KV cache for decode attention instead of the CPU kernel that reads it "
        "in place (same tokens; the kernel is built with the machine's C compiler on first use)",
    )  # fmt: skip
    p.add_argument(
        "--reserve-full-length", action="store_true", default=None,
        help="reserve each request's input + max_new_tokens of KV cache at admission: never "
        "preempts, admits fewer (default: preempt and recompute when the cache runs out)",
    )  # fmt: skip
    p.add_argument(
        "--engine-process", action="store_true", default=None,
        help="run the engines in a process of their own, apart from the HTTP server's event "
        "loop: their steps then share no GIL with it; without --threads, it takes one thread "
        "fewer than the cores (env ATTNSERVE_ENGINE_PROCESS)",
    )  # fmt: skip
    p.add_argument(
        "--compile", action="store_true", default=None,
        help="torch.compile the model's forward (same tokens; no faster on the CPU, meant for CUDA)",
    )  # fmt: skip
    p.add_argument(
        "--model", dest="models", action="append", metavar="ID=PATH", default=None,
        help="a model directory to serve (repeatable); default: the bundled en-de and en-lm",
    )  # fmt: skip
    args = vars(p.parse_args(argv))
    args.pop("command")
    try:
        return Settings(**{k: v for k, v in args.items() if v is not None})
    except ValidationError as error:  # a usage error naming the flag, not a traceback
        problems = [
            f"{_flag(e['loc'])}: {e['msg'].removeprefix('Value error, ')}" for e in error.errors()
        ]
        p.error("; ".join(problems))


def _flag(loc: tuple) -> str:
    """The flag of a setting, and its environment variable: either may have set it."""
    name = str(loc[0]) if loc else "?"
    flag = "--model" if name == "models" else "--" + name.replace("_", "-")
    return f"{flag} (or ATTNSERVE_{name.upper()})"


def _help(flag: str) -> str:
    name = flag[2:].replace("-", "_")
    field = Settings.model_fields[name]
    default = field.get_default(call_default_factory=True)
    default_text = "" if default is None else f"default {default}; "
    return f"{field.description} ({default_text}env ATTNSERVE_{name.upper()})"
