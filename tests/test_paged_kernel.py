"""The CPU decode-attention kernel (model/paged_kernel.py) against the gather path it replaces,
and the engine without it."""

import shutil

import pytest
import torch
import torch.nn.functional as F

from model import paged_kernel
from model.decoding import greedy_reference
from model.paged import read_slots
from model.tokenizer import Tokenizer, train_tokenizer
from service.engine import EngineConfig, LLMEngine, SamplingParams
from tests.conftest import tiny_model

needs_compiler = pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler here")


@needs_compiler
@pytest.mark.parametrize("num_rows", [1, 5, 40])  # 40 rows: past MIN_PARALLEL_WORK, threaded
def test_kernel_equals_gathering_then_attending(num_rows):
    """Rows of 1-37 keys at scattered slots, q a strided view of a fused QKV projection, and
    cross-attention's case of several rows (beams) reading one request's row."""
    kernel = paged_kernel.load()
    assert kernel is not None
    torch.manual_seed(num_rows)
    H, D, T = 4, 16, 37
    pool = torch.randn(600, 2, H, D)
    qkv = torch.randn(num_rows, 1, 3, H, D)
    q = qkv[:, :, 0].transpose(1, 2)  # (B, H, 1, D), not contiguous
    num_kv_rows = max(1, num_rows // 2)
    slots = torch.randint(0, 600, (num_kv_rows, T))
    lengths = torch.randint(1, T + 1, (num_kv_rows,))
    lengths[0] = T
    kv_rows = torch.randint(0, num_kv_rows, (num_rows,))

    out = kernel(q, pool, slots, lengths, kv_rows)  # (B, H, 1, D)

    k, v = read_slots(pool, slots[kv_rows])  # (B, H, T, D) each
    mask = torch.arange(T)[None, :] < lengths[kv_rows][:, None]  # (B, T)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    same_rows = kernel(q, pool, slots[kv_rows].contiguous(), lengths[kv_rows].contiguous())
    torch.testing.assert_close(same_rows, out, rtol=0, atol=0)


@needs_compiler
def test_the_engine_uses_the_kernel_on_the_cpu_in_float32():
    tokenizer = Tokenizer(train_tokenizer(["Open the file", "Datei öffnen"] * 10, vocab_size=64))
    model = tiny_model("encoder-decoder", vocab_size=tokenizer.vocab_size)
    assert LLMEngine(model, tokenizer, EngineConfig(kv_cache_mb=1)).runner.kernel is not None
    off = EngineConfig(kv_cache_mb=1, attention_kernel=False)
    assert LLMEngine(model, tokenizer, off).runner.kernel is None


def test_without_a_compiler_the_engine_gathers_and_gives_the_same_tokens(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # nothing built yet
    monkeypatch.setattr(paged_kernel, "PREBUILT", tmp_path / "none.so")
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    assert paged_kernel.load() is None
    tokenizer = Tokenizer(train_tokenizer(["Open the file", "Datei öffnen"] * 10, vocab_size=64))
    model = tiny_model("encoder-decoder", vocab_size=tokenizer.vocab_size)
    engine = LLMEngine(model, tokenizer, EngineConfig(kv_cache_mb=1, block_size=4))
    assert engine.runner.kernel is None
    sources = [[5, 9, 14, 20, 7], [30, 8]]
    outputs = engine.generate(sources, SamplingParams(max_new_tokens=12))
    for src, output in zip(sources, outputs, strict=True):
        assert output.token_ids == greedy_reference(engine.model, src, 12)


@needs_compiler
def test_a_kernel_that_does_not_compile_leaves_the_gather_path(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(paged_kernel, "PREBUILT", tmp_path / "none.so")
    monkeypatch.setattr(paged_kernel, "FLAGS", [*paged_kernel.FLAGS, "--no-such-flag"])
    assert paged_kernel.load() is None
    assert not any(tmp_path.rglob("*.so"))


@needs_compiler
def test_a_kernel_built_next_to_its_source_is_loaded_from_there(monkeypatch, tmp_path):
    """As the Docker image does (`python -m model.paged_kernel` in its build stage); nothing is
    built at load time then."""
    prebuilt = tmp_path / "paged_attention.so"
    assert paged_kernel.build(prebuilt)
    monkeypatch.setattr(paged_kernel, "PREBUILT", prebuilt)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    kernel = paged_kernel.load()
    assert kernel is not None and kernel.lib._name == str(prebuilt)
    assert not (tmp_path / "cache").exists()
