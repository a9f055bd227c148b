"""Train a translator (EN→DE) or a decoder-only language model on the corpus; resumable.

    python -m model.train --run runs/en-de --max-steps 6000
    python -m model.train --run runs/en-lm --architecture decoder-only --max-steps 3000
    python -m model.train --run runs/en-de-2 --init model/checkpoints/en-de \
        --train-files train.tsv dictionary.tsv --max-steps 4000

Label smoothing, Adam with linear warmup then cosine decay, token-based batches of similar
lengths, a checkpoint every `--eval-every` steps (`--resume` picks it up), validation loss and
greedy BLEU on the validation split. `--export DIR` writes the checkpoint directory that serves.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from model.checkpoint import load_checkpoint, save_checkpoint
from model.config import TransformerConfig
from model.data import read_tsv
from model.decoding import greedy_batch, pad_batch
from model.tokenizer import Tokenizer
from model.transformer import Transformer

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(d_model=64, num_heads=4, num_encoder_layers=2, num_decoder_layers=2, d_ff=256),
    "small": dict(d_model=256, num_heads=4, num_encoder_layers=3, num_decoder_layers=3, d_ff=1024),
    "base": dict(d_model=512, num_heads=8, num_encoder_layers=6, num_decoder_layers=6, d_ff=2048),
}


@dataclass(frozen=True)
class Example:
    src_ids: list[int]  # source + EOS (empty for a language model)
    tgt_ids: list[int]  # BOS + target + EOS

    @property
    def num_tokens(self) -> int:
        return len(self.src_ids) + len(self.tgt_ids)


def make_examples(pairs, tokenizer: Tokenizer, is_lm: bool, max_len: int) -> list[Example]:
    """Tokenize pairs; examples longer than `max_len` tokens on either side are dropped."""
    bos, eos = tokenizer.bos_id, tokenizer.eos_id
    en_ids = tokenizer.encode_batch([p.en for p in pairs])
    if is_lm:
        examples = [Example([], [bos, *e, eos]) for e in en_ids]
    else:
        de_ids = tokenizer.encode_batch([p.de for p in pairs])
        examples = [Example([*e, eos], [bos, *d, eos]) for e, d in zip(en_ids, de_ids, strict=True)]
    return [x for x in examples if len(x.src_ids) <= max_len and len(x.tgt_ids) <= max_len + 1]


def make_batches(examples: list[Example], max_tokens: int, seed: int) -> list[list[Example]]:
    """Batches of similar length holding at most `max_tokens` padded tokens, in random order."""
    rng = random.Random(seed)
    order = sorted(examples, key=lambda x: (len(x.tgt_ids) + rng.random(), len(x.src_ids)))
    batches: list[list[Example]] = []
    batch: list[Example] = []
    longest = 0
    for x in order:
        longest_if_added = max(longest, x.num_tokens)
        if batch and longest_if_added * (len(batch) + 1) > max_tokens:
            batches.append(batch)
            batch, longest_if_added = [], x.num_tokens
        batch.append(x)
        longest = longest_if_added
    if batch:
        batches.append(batch)
    rng.shuffle(batches)
    return batches


def batch_tensors(batch: list[Example], pad_id: int, device) -> dict[str, torch.Tensor]:
    tgt, _ = pad_batch([x.tgt_ids for x in batch], pad_id)
    tensors = {"tgt_in": tgt[:, :-1], "tgt_out": tgt[:, 1:]}
    if batch[0].src_ids:
        tensors["src"], tensors["src_valid"] = pad_batch([x.src_ids for x in batch], pad_id)
    return {k: v.to(device) for k, v in tensors.items()}


def compute_loss(
    model: Transformer, t: dict[str, torch.Tensor], pad_id: int, label_smoothing: float
):
    """Mean cross-entropy over non-padding target tokens, and their count."""
    if "src" in t:
        logits = model(t["src"], t["tgt_in"], src_valid=t["src_valid"])
    else:
        logits = model(t["tgt_in"])
    loss = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        t["tgt_out"].reshape(-1),
        ignore_index=pad_id,
        label_smoothing=label_smoothing,
    )
    return loss, int((t["tgt_out"] != pad_id).sum())


def learning_rate(step: int, peak: float, warmup: int, total: int, floor: float = 0.05) -> float:
    """Linear warmup to `peak`, then cosine decay to `floor * peak` at `total`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.inference_mode()
def evaluate_loss(model: Transformer, batches: list[list[Example]], pad_id: int, device) -> float:
    """Mean token cross-entropy (no label smoothing): log-perplexity."""
    model.eval()
    total, count = 0.0, 0
    for batch in batches:
        loss, n = compute_loss(model, batch_tensors(batch, pad_id, device), pad_id, 0.0)
        total, count = total + loss.item() * n, count + n
    model.train()
    return total / max(count, 1)


@torch.inference_mode()
def greedy_bleu(
    model: Transformer, tokenizer: Tokenizer, pairs, batch_size: int = 64, max_new_tokens: int = 128
) -> float:
    import sacrebleu

    model.eval()
    hypotheses = []
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i : i + batch_size]
        sources = [
            ids + [tokenizer.eos_id] for ids in tokenizer.encode_batch([p.en for p in chunk])
        ]
        hypotheses += tokenizer.decode_batch(greedy_batch(model, sources, max_new_tokens))
    model.train()
    return sacrebleu.corpus_bleu(hypotheses, [[p.de for p in pairs]]).score


def batch_stream(
    examples, max_tokens: int, seed: int, epoch: int, position: int
) -> Iterator[tuple[int, int, list[Example]]]:
    """(epoch, index in epoch, batch) forever, starting at a resumed position."""
    while True:
        batches = make_batches(examples, max_tokens, seed + epoch)
        for index in range(position, len(batches)):
            yield epoch, index, batches[index]
        epoch, position = epoch + 1, 0


def new_config(args: argparse.Namespace, tokenizer: Tokenizer, is_lm: bool) -> TransformerConfig:
    preset = dict(PRESETS[args.preset])
    if is_lm:
        preset["num_decoder_layers"] += preset.pop("num_encoder_layers")
        preset["num_encoder_layers"] = 0
    return TransformerConfig(
        architecture=args.architecture,
        vocab_size=tokenizer.vocab_size,
        dropout=args.dropout,
        norm_first=True,
        max_positions=args.max_len + 8,
        pad_token_id=tokenizer.pad_id,
        bos_token_id=tokenizer.bos_id,
        eos_token_id=tokenizer.eos_id,
        decoder_start_token_id=tokenizer.bos_id,
        **preset,
    )


def check_init(config: TransformerConfig, args: argparse.Namespace, is_lm: bool) -> None:
    """--init takes what model.train exports: its architecture, room for --max-len, and the
    special tokens it trains with (converted GPT-2 and Marian checkpoints differ)."""
    if config.is_encoder_decoder == is_lm:
        raise SystemExit(f"{args.init} is not a {args.architecture} model")
    if args.max_len + 8 > config.max_positions:
        raise SystemExit(f"--max-len: {args.init} has {config.max_positions} positions")
    if config.pad_token_id == config.eos_token_id or config.decoder_start_token_id != (
        config.bos_token_id
    ):
        raise SystemExit(f"{args.init}: only checkpoints that model.train exported")


def start_model(
    args: argparse.Namespace, is_lm: bool, device, state: dict | None, run_tokenizer: Path
) -> tuple[Transformer, Tokenizer]:
    """The model and tokenizer a run trains: a resumed run's own (its config and weights from
    `state`, the tokenizer it started with); an --init checkpoint's; or a new model."""
    if state is not None:
        model = Transformer(TransformerConfig.from_json(state["config"])).to(device)
        model.load_state_dict(state["model"])
        if not run_tokenizer.exists():  # a run from before runs kept their tokenizer
            run_tokenizer = Path(args.corpus) / "tokenizer.json"
        return model, Tokenizer.from_file(run_tokenizer, split_special_tokens=True)
    if args.init:  # fine-tune: the checkpoint's weights, config (its dropout too) and tokenizer
        model, tokenizer = load_checkpoint(args.init, device)
        check_init(model.config, args, is_lm)
        model.train()
    else:
        # Our own vocabulary: a "</s>" in user text is text (see Tokenizer.split_special_tokens).
        tokenizer = Tokenizer.from_file(
            Path(args.corpus) / "tokenizer.json", split_special_tokens=True
        )
        model = Transformer(new_config(args, tokenizer, is_lm)).to(device)
    tokenizer.save(run_tokenizer)
    return model, tokenizer


def train(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    run = Path(args.run)
    run.mkdir(parents=True, exist_ok=True)
    is_lm = args.architecture == "decoder-only"
    state_path = run / "last.pt"
    state = None
    if args.resume and state_path.exists():
        state = torch.load(state_path, map_location=device, weights_only=False)
    model, tokenizer = start_model(args, is_lm, device, state, run / "tokenizer.json")
    config = model.config
    train_pairs = [p for name in args.train_files for p in read_tsv(Path(args.corpus) / name)]
    valid_pairs = read_tsv(Path(args.corpus) / "valid.tsv")
    train_examples = make_examples(train_pairs, tokenizer, is_lm, args.max_len)
    valid_batches = make_batches(
        make_examples(valid_pairs, tokenizer, is_lm, args.max_len), args.max_tokens, 0
    )
    bleu_pairs = valid_pairs[: args.bleu_sentences]
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.98), eps=1e-9)
    step, epoch, position, history = 0, 0, 0, []
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        if "rng" in state:
            torch.set_rng_state(state["rng"])  # dropout continues exactly where it stopped
        step, epoch, position, history = (
            state["step"],
            state["epoch"],
            state["position"],
            state["history"],
        )
        print(f"resumed {state_path} at step {step} (epoch {epoch}, batch {position})")
    print(
        f"{model.num_parameters() / 1e6:.2f}M parameters, {len(train_examples)} training examples, device {device}"
    )

    model.train()
    stream = batch_stream(train_examples, args.max_tokens, args.seed, epoch, position)
    progress = tqdm(
        total=args.max_steps, initial=step, mininterval=args.progress_interval, dynamic_ncols=True
    )
    tokens_seen, t0 = 0, time.monotonic()
    stop_at = min(args.max_steps, args.stop_at or args.max_steps)
    while step < stop_at:
        epoch, index, batch = next(stream)
        lr = learning_rate(step, args.lr, args.warmup, args.max_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss, num_tokens = compute_loss(
            model,
            batch_tensors(batch, tokenizer.pad_id, device),
            tokenizer.pad_id,
            args.label_smoothing,
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        optimizer.step()
        step += 1
        tokens_seen += sum(x.num_tokens for x in batch)
        progress.update(1)
        progress.set_postfix(
            loss=f"{loss.item():.3f}",
            lr=f"{lr:.2e}",
            epoch=epoch,
            tok_s=f"{tokens_seen / (time.monotonic() - t0):.0f}",
            refresh=False,
        )
        if step % args.eval_every == 0 or step == stop_at:
            record = {
                "step": step,
                "epoch": epoch,
                "train_loss": round(loss.item(), 4),
                "minutes": round((time.monotonic() - t0) / 60, 1),
            }
            record["valid_loss"] = round(
                evaluate_loss(model, valid_batches, tokenizer.pad_id, device), 4
            )
            record["valid_ppl"] = round(math.exp(record["valid_loss"]), 2)
            if not is_lm and bleu_pairs:
                record["valid_bleu_greedy"] = round(greedy_bleu(model, tokenizer, bleu_pairs), 2)
            history.append(record)
            progress.write(json.dumps(record))
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step, "epoch": epoch,
                     "position": index + 1, "history": history, "config": config.to_json(), "args": vars(args), "rng": torch.get_rng_state()}  # fmt: skip
            torch.save(state, run / "last.tmp")
            (run / "last.tmp").replace(state_path)
            torch.save(
                model.state_dict(), run / f"weights_{step:06d}.pt"
            )  # for checkpoint averaging
            (run / "history.json").write_text(json.dumps(history, indent=1))
    progress.close()
    if args.export:
        model = average_last(run, model, args.average)
        save_checkpoint(
            model, tokenizer, args.export, dtype=torch.float16 if args.fp16 else torch.float32
        )
        print(f"exported to {args.export}")


def average_last(run: Path, model: Transformer, count: int) -> Transformer:
    """Average the weights of the last `count` evaluation checkpoints (a cheap, reliable gain)."""
    paths = sorted(run.glob("weights_*.pt"))[-count:]
    if count <= 1 or not paths:
        return model
    states = [torch.load(p, map_location="cpu") for p in paths]
    averaged = {k: sum(s[k].float() for s in states) / len(states) for k in states[0]}
    model.load_state_dict(averaged)
    print(f"averaged {len(paths)} checkpoints: {[p.name for p in paths]}")
    return model


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--run", default="runs/en-de", help="directory for checkpoints and the history")
    p.add_argument("--corpus", default="data/corpus", help="output of `python -m model.data`")
    p.add_argument(
        "--train-files",
        nargs="+",
        default=["train.tsv"],
        help="training files in the corpus (add dictionary.tsv for the Ding dictionary)",
    )
    p.add_argument(
        "--architecture", choices=["encoder-decoder", "decoder-only"], default="encoder-decoder"
    )
    p.add_argument("--preset", choices=sorted(PRESETS), default="small")
    p.add_argument("--max-steps", type=int, default=6000)
    p.add_argument("--max-tokens", type=int, default=4000, help="padded tokens per batch")
    p.add_argument("--max-len", type=int, default=128, help="longest example, in tokens per side")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=500)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument(
        "--bleu-sentences", type=int, default=500, help="validation sentences for greedy BLEU"
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--cpu", action="store_true", help="train on the CPU even where CUDA is present")
    p.add_argument("--resume", action="store_true", help="continue from RUN/last.pt")
    p.add_argument(
        "--init",
        help="fine-tune: start from this exported checkpoint's weights, config and tokenizer",
    )
    p.add_argument(
        "--stop-at",
        type=int,
        help="stop after this step (resume later); the schedule still ends at --max-steps",
    )
    p.add_argument("--export", help="write the serving checkpoint directory here at the end")
    p.add_argument(
        "--average", type=int, default=1, help="average the last N checkpoints on export"
    )
    p.add_argument(
        "--fp16", action="store_true", help="store exported weights in fp16 (loading upcasts)"
    )
    p.add_argument(
        "--progress-interval", type=float, default=10.0, help="seconds between progress updates"
    )
    return p.parse_args(argv)


if __name__ == "__main__":
    train(parse_args())
