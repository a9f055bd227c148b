"""Training learns (the copy task of the Annotated Transformer, reversed) and resumes exactly."""

import random
import shutil

import pytest
import torch

from model.catalogs import Pair
from model.checkpoint import load_checkpoint
from model.data import write_tsv
from model.decoding import greedy_batch
from model.tokenizer import train_tokenizer
from model.train import learning_rate, parse_args, train

WORDS = [
    "open",
    "save",
    "file",
    "close",
    "edit",
    "view",
    "help",
    "print",
    "quit",
    "copy",
    "paste",
    "undo",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Sentences of 2–6 words whose 'translation' is the same words reversed."""
    out = tmp_path_factory.mktemp("reverse")
    rng = random.Random(0)

    def pairs(n, package):
        sentences = [
            " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6))) for _ in range(n)
        ]
        return [Pair(s, " ".join(reversed(s.split())), package) for s in sentences]

    train_pairs, valid_pairs = pairs(2000, "train"), pairs(60, "valid")
    write_tsv(train_pairs, out / "train.tsv")
    write_tsv(valid_pairs, out / "valid.tsv")
    texts = [p.en for p in train_pairs] + [p.de for p in train_pairs]
    train_tokenizer(texts, vocab_size=300).save(str(out / "tokenizer.json"))
    return out


def run_args(corpus, run, *extra):
    return parse_args(
        ["--corpus", str(corpus), "--run", str(run), "--preset", "tiny", "--threads", "1",
         "--max-tokens", "1500", "--warmup", "30", "--lr", "3e-3", "--bleu-sentences", "0",
         "--progress-interval", "60", *extra]
    )  # fmt: skip


def test_a_tiny_model_learns_to_reverse_sentences(corpus, tmp_path):
    train(run_args(corpus, tmp_path / "run", "--max-steps", "300", "--eval-every", "150",
                   "--export", str(tmp_path / "model")))  # fmt: skip
    model, tokenizer = load_checkpoint(tmp_path / "model")
    valid = [line.split("\t") for line in (corpus / "valid.tsv").read_text().splitlines()]
    sources = [
        ids + [tokenizer.eos_id] for ids in tokenizer.encode_batch([en for en, _, _ in valid])
    ]
    outputs = tokenizer.decode_batch(greedy_batch(model, sources, 16))
    exact = sum(out == de for out, (_, de, _) in zip(outputs, valid, strict=True)) / len(valid)
    assert exact >= 0.8, f"only {exact:.0%} of held-out sentences reversed exactly"


def test_a_resumed_run_ends_with_exactly_the_weights_of_an_uninterrupted_one(corpus, tmp_path):
    train(run_args(corpus, tmp_path / "straight", "--max-steps", "30", "--eval-every", "10"))
    train(
        run_args(
            corpus,
            tmp_path / "resumed",
            "--max-steps",
            "30",
            "--eval-every",
            "10",
            "--stop-at",
            "20",
        )
    )
    halfway = torch.load(tmp_path / "resumed" / "last.pt", weights_only=False)
    assert halfway["step"] == 20
    train(
        run_args(
            corpus, tmp_path / "resumed", "--max-steps", "30", "--eval-every", "10", "--resume"
        )
    )
    straight = torch.load(tmp_path / "straight" / "last.pt", weights_only=False)
    resumed = torch.load(tmp_path / "resumed" / "last.pt", weights_only=False)
    assert resumed["step"] == straight["step"] == 30
    for name, weight in straight["model"].items():
        assert torch.equal(weight, resumed["model"][name]), name


def test_learning_rate_warms_up_linearly_then_decays_to_the_floor():
    rates = [learning_rate(step, peak=1.0, warmup=10, total=100) for step in range(101)]
    assert rates[0] == pytest.approx(0.1) and rates[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(rates[9:], rates[10:], strict=False))
    assert rates[100] == pytest.approx(0.05)


def test_fine_tuning_starts_from_the_checkpoint_and_keeps_its_tokenizer(corpus, tmp_path):
    train(run_args(corpus, tmp_path / "first", "--max-steps", "20", "--eval-every", "10",
                   "--export", str(tmp_path / "first_model")))  # fmt: skip
    # A corpus whose own tokenizer differs: fine-tuning must not read it.
    other = tmp_path / "other_corpus"
    shutil.copytree(corpus, other)
    pairs = [line.split("\t") for line in (corpus / "train.tsv").read_text().splitlines()]
    train_tokenizer([en for en, _, _ in pairs], vocab_size=280).save(str(other / "tokenizer.json"))
    # With a learning rate of 0 the fine-tuned weights are the checkpoint's, exactly; a resumed
    # run (without --init) goes on with the run's tokenizer.
    tuned = ("--init", str(tmp_path / "first_model"), "--lr", "0", "--eval-every", "2")
    train(run_args(other, tmp_path / "tuned", "--max-steps", "4", "--stop-at", "2", *tuned))
    train(run_args(other, tmp_path / "tuned", "--max-steps", "4", "--resume", "--lr", "0",
                   "--eval-every", "2", "--export", str(tmp_path / "tuned_model")))  # fmt: skip
    first, first_tokenizer = load_checkpoint(tmp_path / "first_model")
    tuned_model, tuned_tokenizer = load_checkpoint(tmp_path / "tuned_model")
    assert tuned_model.config == first.config
    for name, weight in first.state_dict().items():
        assert torch.equal(weight, tuned_model.state_dict()[name]), name
    assert (tmp_path / "tuned_model" / "tokenizer.json").read_bytes() == (
        tmp_path / "first_model" / "tokenizer.json"
    ).read_bytes()
    assert tuned_tokenizer.split_special_tokens == first_tokenizer.split_special_tokens


def test_fine_tuning_refuses_a_checkpoint_it_cannot_train(corpus, tmp_path):
    train(run_args(corpus, tmp_path / "first", "--max-steps", "2", "--eval-every", "2",
                   "--export", str(tmp_path / "model")))  # fmt: skip
    init = ("--init", str(tmp_path / "model"), "--max-steps", "2")
    with pytest.raises(SystemExit, match="not a decoder-only model"):
        train(run_args(corpus, tmp_path / "lm", "--architecture", "decoder-only", *init))
    with pytest.raises(SystemExit, match="--max-len"):
        train(run_args(corpus, tmp_path / "long", "--max-len", "400", *init))
