"""The engine: paged KV cache, continuous batching, sampling and beam search (see engine.py)."""

from model.segment import (
    Segments,
    is_blank,
    split_text,
    trim_text,
)  # for the HTTP layer, which sees no model
from service.engine.async_engine import AsyncEngine, EngineThread
from service.engine.config import EngineConfig, StepStats, device_problem, quantize_problem
from service.engine.engine import LLMEngine
from service.engine.engine_process import ENGINE_GONE, EngineProcess, RemoteEngine
from service.engine.request import (
    EngineOverloaded,
    FinishReason,
    Hypothesis,
    RequestOutput,
    RequestTooLong,
    SamplingParams,
)
from service.engine.scheduler import SchedulerConfig

__all__ = [
    "ENGINE_GONE",
    "AsyncEngine",
    "EngineConfig",
    "EngineOverloaded",
    "EngineProcess",
    "EngineThread",
    "FinishReason",
    "Hypothesis",
    "LLMEngine",
    "RemoteEngine",
    "RequestOutput",
    "RequestTooLong",
    "SamplingParams",
    "SchedulerConfig",
    "Segments",
    "StepStats",
    "device_problem",
    "is_blank",
    "quantize_problem",
    "split_text",
    "trim_text",
]
