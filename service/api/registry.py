"""The models this server serves: one engine each, looked up by id."""

from __future__ import annotations

import functools
import math
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from service.api.errors import ApiError
from service.api.metrics import Metrics
from service.api.settings import Settings
from service.api.unreadable import Unreadable
from service.engine import (
    AsyncEngine,
    EngineConfig,
    EngineProcess,
    EngineThread,
    LLMEngine,
    RemoteEngine,
    SamplingParams,
    SchedulerConfig,
)
from service.engine.detokenizer import IncrementalDetokenizer


@dataclass
class ServedModel:
    model_id: str
    path: Path
    async_engine: AsyncEngine  # the HTTP side; `llm` is the engine it runs (or its stand-in)
    created: int = field(default_factory=lambda: int(time.time()))
    _finish_times: deque[float] = field(default_factory=lambda: deque(maxlen=32))

    @property
    def llm(self) -> LLMEngine | RemoteEngine:
        return self.async_engine.llm

    @property
    def eos_id(self) -> int:
        return self.llm.tokenizer.eos_id

    @property
    def special_ids(self) -> set[int]:
        tokenizer = self.llm.tokenizer
        return {tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id}

    @property
    def is_translation(self) -> bool:
        return self.llm.is_encoder_decoder

    @functools.cached_property
    def unreadable(self) -> Unreadable:
        """Which characters the model cannot read (/v1/translate keeps them from it)."""
        return Unreadable(self.llm.tokenizer)

    # -- token texts, as TGI's details and the alignments show them ------------------------------

    def special_text(self, token_id: int) -> str:
        """A special token's own string ("</s>"), as TGI's token texts have it; "" for others."""
        if token_id not in self.special_ids:
            return ""
        return self.llm.tokenizer.hf.id_to_token(token_id) or ""

    def token_text(
        self, detokenizer: IncrementalDetokenizer, token_id: int, ends_sequence: bool
    ) -> str:
        """A token's own text, as TGI gives it: a character split over byte-level tokens comes
        whole with its last token (a lone token's decoding would be "\ufffd"), and the last
        token of the sequence `detokenizer` decodes (`ends_sequence`) takes what is left; a
        special token is its own string, which the text leaves out. Text that may begin a stop
        string is not held back, unlike the engine's text: the texts of the tokens that are not
        special add up to the decoded tokens, stop string included."""
        text = detokenizer.add([token_id])
        if ends_sequence:
            text += detokenizer.finish()
        return text + self.special_text(token_id)

    def token_texts(self, ids: list[int]) -> list[str]:
        """`token_text` of each of a sequence's tokens."""
        detokenizer = IncrementalDetokenizer(self.llm.tokenizer)
        return [self.token_text(detokenizer, i, n == len(ids) - 1) for n, i in enumerate(ids)]

    def max_new_tokens(self, server_limit: int) -> int:
        """The most new tokens a request may ask for: the server's limit, within this model's
        positions (the decoder's start takes one; a decoder-only prompt shares them too)."""
        return min(server_limit, self.llm.model_config.max_positions - 1)

    def record_finish(self) -> None:
        self._finish_times.append(time.monotonic())

    def retry_after_s(self) -> int:
        """Seconds until the queue has likely drained, at the rate of the last finishes (the
        last 32 in the last 10 s: earlier ones, from quieter times, would make it too slow);
        at most a minute, so that a stalled server's clients still come back to look."""
        now = time.monotonic()
        recent = [t for t in self._finish_times if now - t < 10]
        num_waiting = self.llm.num_waiting
        if len(recent) < 2:
            return 1
        rate = (len(recent) - 1) / max(recent[-1] - recent[0], 1e-3)  # requests per second
        return max(1, min(60, math.ceil(num_waiting / rate)))


class ModelRegistry:
    """The served models, whose engines share one thread (`EngineThread`: everything that runs
    the models, loading and warm-up included, runs there), or with `--engine-process` one
    process (`EngineProcess`, which loads and warms them up itself)."""

    def __init__(self, models: dict[str, ServedModel], thread: EngineThread | EngineProcess):
        self.models = models
        self.thread = thread

    @classmethod
    def load(cls, settings: Settings, metrics: Metrics) -> ModelRegistry:
        scheduler = SchedulerConfig(
            max_running_requests=settings.max_running_requests,
            max_tokens_per_step=settings.max_tokens_per_step,
            max_waiting_requests=settings.max_queued_requests,
            static_batching=settings.batching == "static",
            reserve_full_length=settings.reserve_full_length,
        )
        config = EngineConfig(
            kv_cache_mb=settings.kv_cache_mb,
            block_size=settings.block_size,
            device=settings.device,
            dtype=settings.dtype,
            num_threads=settings.threads,
            max_input_tokens=settings.max_input_tokens,
            prepack_weights=settings.prepack_weights,
            attention_kernel=settings.attention_kernel,
            quantize=settings.quantize,
            compile=settings.compile,
            scheduler=scheduler,
        )
        paths = settings.model_paths()
        if settings.engine_process:
            process = EngineProcess(paths, config)
            for model_id, remote in process.engines.items():
                metrics.watch(model_id, remote)
            models = {
                model_id: ServedModel(model_id, paths[model_id], AsyncEngine(remote, process))
                for model_id, remote in process.engines.items()
            }
            return cls(models, process)
        thread = EngineThread()
        try:
            engines = {
                model_id: thread.call(LLMEngine.from_checkpoint, path, config)
                for model_id, path in paths.items()
            }
        except BaseException:
            thread.stop()
            raise
        models = {}
        for model_id, llm in engines.items():
            metrics.watch(model_id, llm)
            models[model_id] = ServedModel(model_id, paths[model_id], AsyncEngine(llm, thread))
        return cls(models, thread)

    def start(self) -> None:
        for served in self.models.values():
            served.async_engine.start()

    def warm_up(self) -> None:
        """One short request through each engine, so the first user does not pay for it."""
        if isinstance(self.thread, EngineThread):  # an EngineProcess did as it started
            self.thread.call(self._warm_up)

    def _warm_up(self) -> None:
        for served in self.models.values():
            llm = cast(LLMEngine, served.llm)  # in this process
            hook, llm.on_step = llm.on_step, None  # not a step users asked for
            try:
                llm.generate(["Hello"], SamplingParams(max_new_tokens=2))
            finally:
                llm.on_step = hook

    def shutdown(self) -> None:
        self.thread.stop()  # after its current step: no engine runs any more

    def get(self, model_id: str | None, translation: bool = False) -> ServedModel:
        """The named model; without a name, the translation model (translate) or the first one."""
        if model_id is None:
            candidates = [m for m in self.models.values() if m.is_translation or not translation]
            if not candidates:
                raise ApiError(422, "no translation model is being served", param="model")
            return candidates[0]
        if model_id not in self.models:
            raise ApiError(
                422,
                f"unknown model {model_id!r}; this server has {sorted(self.models)}",
                param="model",
                code="model_not_found",  # a 400 on /v1 routes, as API.md's error table says
            )
        served = self.models[model_id]
        if translation and not served.is_translation:
            raise ApiError(422, f"model {model_id!r} is not a translation model", param="model")
        return served

    def fail_all(self, error: str) -> None:
        for served in self.models.values():
            served.async_engine.fail_all(error)

    @property
    def num_in_flight(self) -> int:
        """Engine requests queued or running, over every model."""
        return sum(m.llm.num_requests for m in self.models.values())
