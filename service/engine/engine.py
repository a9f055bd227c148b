"""The engine: one model, its KV cache, a scheduler; `step()` is one iteration of continuous
batching (schedule → run → postprocess → collect finished). `LLMEngine.generate` is the offline API."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from model import paged_kernel
from model.checkpoint import load_checkpoint
from model.cpu_kernels import can_prepack, prepacked, quantized
from model.decoding import ban_repeated_ngrams
from model.paged import PagedKVCache
from model.tokenizer import Tokenizer
from model.transformer import Transformer
from service.engine.block_manager import BlockManager
from service.engine.config import EngineConfig, StepStats, quantize_problem
from service.engine.intake import Intake, cache_blocks
from service.engine.request import (
    Beam,
    FinishReason,
    Hypothesis,
    Request,
    RequestOutput,
    SamplingParams,
)
from service.engine.runner import ModelRunner
from service.engine.sampler import apply_penalties, has_penalties, sample
from service.engine.scheduler import Scheduler, SchedulerOutput

log = logging.getLogger(__name__)


class LLMEngine(Intake):
    def __init__(
        self,
        model: Transformer,
        tokenizer: Tokenizer,
        config: EngineConfig | None = None,
        on_step: Callable[[StepStats], None] | None = None,
    ):
        self.config = config = config or EngineConfig()
        problem = quantize_problem(config.quantize, config.device, config.dtype, config.compile)
        if problem:
            raise ValueError(problem)
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        dtype = getattr(torch, config.dtype)
        if torch.device(config.device).type == "cpu" and dtype != torch.float32:
            log.warning(
                "%s on the CPU: correct, but its matmuls are slow on most CPUs (~500x slower "
                "than float32 on AVX2 ones); float32 is the CPU's dtype",
                config.dtype,
            )
        self.model = model.to(device=config.device, dtype=dtype).eval()
        self.tokenizer = tokenizer
        self.model_config = model.config
        num_blocks = cache_blocks(model.config, config)
        cache = PagedKVCache(model.config, num_blocks, config.block_size, config.device, dtype)
        self.blocks = BlockManager(num_blocks, config.block_size)
        self.scheduler = Scheduler(config.scheduler, self.blocks, model.config.is_encoder_decoder)
        self.num_parameters = self.model.num_parameters()
        runner_model = self.model
        if config.quantize == "int8":  # int8 matmuls: faster, not the same math
            # The float32 model is let go: alignments come from the model that made the tokens.
            runner_model = self.model = quantized(self.model)
        elif config.prepack_weights and can_prepack(self.model):
            runner_model = prepacked(self.model)  # same math, faster CPU matmuls
        kernel = None
        on_cpu = torch.device(config.device).type == "cpu" and dtype == torch.float32
        if config.attention_kernel and on_cpu and not config.compile:  # compile: no ctypes calls
            kernel = paged_kernel.load()
        self.runner = ModelRunner(runner_model, cache, compile=config.compile, kernel=kernel)
        self.on_step = on_step
        self.last_stats: StepStats | None = None
        self._lock = threading.Lock()  # add_request may come from another thread than step()
        self._requests: dict[str, Request] = {}
        self._ids = itertools.count()

    @classmethod
    def from_checkpoint(cls, path: str | Path, config: EngineConfig | None = None) -> LLMEngine:
        model, tokenizer = load_checkpoint(path)
        return cls(model, tokenizer, config)

    # -- requests in ----------------------------------------------------------------------------

    def _enqueue(self, request: Request) -> None:
        with self._lock:  # not while a step schedules
            self.scheduler.add(request)

    def abort(self, request_id: str, error: str | None = None) -> None:
        """Cancel a request: it is finished and its blocks freed at the next step; with an
        `error`, it finishes as failed (FinishReason.ERROR) with that message."""
        request = self._requests.get(request_id)
        if request is not None:
            request.is_aborted = True
            request.abort_error = error

    def describe(self) -> dict:
        """What /info shows about this model."""
        cfg = self.model_config
        return {
            "architecture": cfg.architecture,
            "num_parameters": self.num_parameters,
            "vocab_size": cfg.vocab_size,
            "max_positions": cfg.max_positions,
            "device": self.config.device,
            "dtype": self.config.dtype,
            "quantize": self.config.quantize,
            # "kernel": the CPU kernel reads the paged cache in place; "gather": gathered first
            "decode_attention": "gather" if self.runner.kernel is None else "kernel",
            "kv_cache_blocks": self.blocks.num_blocks,
            "block_size": self.config.block_size,
        }

    @property
    def has_unfinished(self) -> bool:
        return self.scheduler.has_work

    @property
    def num_waiting(self) -> int:
        """Requests queued for admission, or preempted and waiting to be recomputed."""
        return len(self.scheduler.waiting)

    # -- inputs and alignments ------------------------------------------------------------------

    def alignment(self, prompt: str | list[int], new_ids: list[int]) -> tuple[list[int], Tensor]:
        """A translation's source ids and its (new tokens × source) cross-attention weights.

        Recomputed with the plain model (`Transformer.alignment`), outside the engine's steps
        (the server runs it on the engine thread between them); it costs one forward pass over
        the finished translation.
        """
        if not self.is_encoder_decoder:
            raise ValueError("alignments exist only for encoder-decoder (translation) models")
        src = self.input_ids(prompt)
        return src, self.model.alignment(src, new_ids)

    @torch.inference_mode()
    def prompt_logprobs(
        self, input_ids: list[int], num_top: int = 0
    ) -> tuple[list[float | None], list[dict[int, float] | None]]:
        """A decoder-only prompt's own log-probabilities: each token's given those before it
        (None for the first, which nothing predicts), and the `num_top` likeliest tokens of each
        position with the prompt's own among them (None for the first).

        One forward pass of the plain model over the prompt, outside the engine's steps (as
        `alignment`); the engine's prefill computes only the last position's logits.
        """
        if self.is_encoder_decoder:
            raise ValueError("a translation model's input is its source: it has no logprobs")
        device = self.model.embed.tokens.weight.device
        logits = self.model(torch.tensor([input_ids], device=device))[0, :-1]  # (T - 1, V)
        logprobs = logits.float().log_softmax(-1).cpu()
        following = torch.tensor(input_ids[1:])
        chosen = logprobs.gather(1, following[:, None])[:, 0].tolist()
        values, ids = logprobs.topk(min(num_top, logprobs.shape[1]), dim=-1)  # every position's
        top: list[dict[int, float] | None] = [None]
        for token, logprob, step_ids, step_values in zip(
            input_ids[1:], chosen, ids.tolist(), values.tolist(), strict=True
        ):
            top.append(dict(zip(step_ids, step_values, strict=True)) | {token: logprob})
        return [None, *chosen], top

    # -- one step -------------------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        start = time.perf_counter()
        with self._lock:
            plan = self.scheduler.schedule(start)
        num_prefill_tokens = sum(len(r.input_ids) for r in plan.encode) + sum(
            len(b.tokens) for r in plan.prefill for b in r.beams
        )
        # cancelled or expired: the scheduler has finished them already
        outputs = [self._finish(r, None, "", error=r.abort_error) for r in plan.finished]
        ran = plan.prefill + plan.decode
        try:
            self.runner.copy_blocks(plan.copies)
            logits = self.runner.run(plan.prefill, plan.decode, plan.encode)
            logprobs, greedy = self._log_softmax_and_greedy(logits, ran)
        except Exception as error:  # never let one bad step take the engine down
            log.exception("engine step failed")
            self.scheduler.forget_encoding(plan.encode)  # those still waiting: encode again
            for request in ran:
                outputs.append(self._finish(request, FinishReason.ERROR, "", error=str(error)))
            ran, logits, logprobs, greedy = [], [], [], []
        now = time.perf_counter()
        row = 0
        for request, request_logits, request_logprobs in zip(ran, logits, logprobs, strict=True):
            if request.timings.first_token is None:
                request.timings.first_token = now
            try:
                if request.beam_search is not None:
                    outputs.append(self._advance_beams(request, request_logprobs))
                else:
                    outputs.append(
                        self._advance_sample(
                            request, request_logits[0], request_logprobs[0], greedy[row]
                        )
                    )
            except Exception as error:  # one request's failure is its own, not the batch's
                log.exception("request %s failed", request.request_id)
                outputs.append(self._finish(request, FinishReason.ERROR, "", error=str(error)))
            row += len(request_logits)
        self._record_stats(plan, num_prefill_tokens, start)
        return outputs

    @staticmethod
    def _log_softmax_and_greedy(
        logits: list[Tensor], ran: list[Request]
    ) -> tuple[list[Tensor], list[tuple[int, float]]]:
        """Once for the whole batch: each request's log-probabilities (beams, V), and every row's
        greedy choice with its log-probability (none when every request is a beam search)."""
        if not logits:
            return [], []
        all_logits = torch.cat(logits)  # (rows, V)
        all_logprobs = all_logits.log_softmax(-1)
        greedy: list[tuple[int, float]] = []
        if any(r.beam_search is None for r in ran):  # beams choose their own
            best = all_logits.argmax(-1, keepdim=True)  # as the reference: argmax of logits
            chosen = all_logprobs.gather(1, best)[:, 0]
            greedy = list(zip(best[:, 0].tolist(), chosen.tolist(), strict=True))
        return list(all_logprobs.split([len(x) for x in logits])), greedy

    def _advance_sample(
        self,
        request: Request,
        logits: torch.Tensor,  # (V,)
        logprobs: torch.Tensor,  # (V,) their log_softmax
        greedy: tuple[int, float],  # argmax and its log-probability
    ) -> RequestOutput:
        cfg, params = self.model_config, request.params
        if params.is_greedy and not has_penalties(request):
            token, logprob = greedy
        else:
            token = sample(apply_penalties(logits, request, cfg.eos_token_id), request)
            logprob = float(logprobs[token])
        request.output_ids.append(token)
        request.output_logprobs.append(logprob)
        if params.num_top_logprobs:
            values, ids = logprobs.topk(min(params.num_top_logprobs, len(logprobs)))
            top = dict(zip(ids.tolist(), values.tolist(), strict=True))
            request.output_top_logprobs.append(top | {token: logprob})
        request.beams[0].tokens.append(token)
        is_eos = token == cfg.eos_token_id and not params.ignore_eos
        is_stop_token = is_eos or token in params.stop_token_ids
        # a stop token's text is left out, as vLLM's, unless the stop strings' is kept
        keep_text = not is_stop_token or (params.include_stop_string and not is_eos)
        delta = request.detokenizer.add([token]) if keep_text else ""
        reason = None
        if is_stop_token or request.detokenizer.stopped_on is not None:
            reason = FinishReason.STOP
        elif (
            len(request.output_ids) >= params.max_new_tokens
            or len(request.beams[0].tokens) >= cfg.max_positions
        ):
            reason = FinishReason.LENGTH
        if reason is None:
            return self._output(request, [token], [logprob], delta)
        return self._finish(request, reason, delta, [token], [logprob])

    def _advance_beams(self, request: Request, logprobs: torch.Tensor) -> RequestOutput:
        search = request.beam_search
        assert search is not None
        if request.params.no_repeat_ngram_size:
            sequences = [beam.tokens for beam in request.beams]
            logprobs = ban_repeated_ngrams(logprobs, sequences, request.params.no_repeat_ngram_size)
        parents = search.advance(logprobs)
        old_beams = request.beams
        request.beams = [
            Beam(
                old_beams[p].tokens + [ids[-1]],
                self.blocks.share(old_beams[p].block_table),
                old_beams[p].num_cached,
            )
            for p, ids in zip(parents, search.tokens, strict=True)
        ]
        for beam in old_beams:
            self.blocks.free(beam.block_table)
        if not search.is_done:
            return self._output(request, [], [], "")
        best = search.finished[0].token_ids
        reason = (
            FinishReason.STOP if best[-1] == self.model_config.eos_token_id else FinishReason.LENGTH
        )
        return self._finish(request, reason, "")

    # -- outputs ------------------------------------------------------------------------------

    def _output(
        self, request: Request, new_ids: list[int], logprobs: list[float], delta: str
    ) -> RequestOutput:
        output = RequestOutput(
            request.request_id,
            new_ids,
            logprobs,
            delta,
            list(request.output_ids),
            request.detokenizer.text,
            len(request.input_ids),
            request.num_output_tokens,
        )
        if request.output_top_logprobs and new_ids:
            output.new_top_logprobs = request.output_top_logprobs[-len(new_ids) :]
        return output

    def _finish(
        self,
        request: Request,
        reason: FinishReason | None,
        delta: str,
        new_ids: list[int] | None = None,
        logprobs: list[float] | None = None,
        error: str | None = None,
    ) -> RequestOutput:
        """Finish `request` for `reason` (its blocks are freed; None: the scheduler finished it
        already) and build its last output: the rest of its text, its hypotheses, its timings."""
        if reason is not None:
            self.scheduler.finish(request, reason)
        request.timings.finished = time.perf_counter()
        self._requests.pop(request.request_id, None)
        output = self._output(request, new_ids or [], logprobs or [], delta)
        _flush_text(request, output)
        if request.beam_search is not None:
            self._best_hypotheses(request, output)
        output.finish_reason = request.finish_reason
        output.was_scheduled = request.timings.scheduled is not None
        output.logprobs = list(request.output_logprobs)
        output.top_logprobs = list(request.output_top_logprobs)
        output.stopped_on = request.detokenizer.stopped_on
        output.timings_ms = request.timings.durations_ms()
        output.error = error
        return output

    def _best_hypotheses(self, request: Request, output: RequestOutput) -> None:
        """A beam search's result: its n-best list, and the best as its tokens and text. None
        of its text was sent before (beams change until the end), so the delta is all of it."""
        assert request.beam_search is not None
        output.hypotheses = [
            Hypothesis(h.token_ids, self.tokenizer.decode(h.token_ids), h.score)
            for h in request.beam_search.best(request.params.num_hypotheses)
        ]
        if output.hypotheses:
            output.token_ids = output.hypotheses[0].token_ids
            output.text = output.text_delta = output.hypotheses[0].text

    def _record_stats(self, plan: SchedulerOutput, num_prefill_tokens: int, start: float) -> None:
        stats = StepStats(
            num_running=len(self.scheduler.running),
            num_waiting=len(self.scheduler.waiting),
            batch_size=sum(len(r.beams) for r in plan.prefill + plan.decode),
            num_prefill_tokens=num_prefill_tokens,
            num_decode_tokens=sum(len(r.beams) for r in plan.decode),
            blocks_used=self.blocks.num_used,
            blocks_total=self.blocks.num_blocks,
            num_preempted=plan.num_preempted,
            num_preemptions_total=self.scheduler.num_preemptions,
            duration_s=time.perf_counter() - start,
        )
        self.last_stats = stats
        if self.on_step is not None:
            try:
                self.on_step(stats)
            except Exception:  # a metrics hook must not lose this step's outputs
                log.exception("the on_step callback failed")

    # -- offline ----------------------------------------------------------------------------------

    def generate(
        self, prompts: list[str] | list[list[int]], params: SamplingParams | None = None
    ) -> list[RequestOutput]:
        """Run every prompt to completion (batch jobs, benchmarks); outputs in prompt order."""
        ids = [self.add_request(p, params).request_id for p in prompts]
        finished: dict[str, RequestOutput] = {}
        while self.has_unfinished:
            for output in self.step():
                if output.finished:
                    finished[output.request_id] = output
        return [finished[i] for i in ids]


def _flush_text(request: Request, output: RequestOutput) -> None:
    """The last output takes the text the detokenizer held back (half a character, or what might
    begin a stop string), unless the request ended on a stop string, whose text and what follows
    it are dropped. A stop string completed by that flush turns a "length" finish into "stop"."""
    if request.finish_reason != FinishReason.STOP or request.detokenizer.stopped_on is None:
        output.text_delta += request.detokenizer.finish()
        if request.detokenizer.stopped_on and request.finish_reason == FinishReason.LENGTH:
            request.finish_reason = FinishReason.STOP
    output.text = request.detokenizer.text
