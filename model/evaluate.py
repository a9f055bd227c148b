"""BLEU and chrF of a translation checkpoint on a corpus split, greedy and beam search
(or, for a decoder-only checkpoint, the perplexity of the split's English side).

    python -m model.evaluate model/checkpoints/en-de --split test [--json results.json]
    python -m model.evaluate model/checkpoints/en-lm --split test
    python -m model.evaluate model/checkpoints/en-de --quantize int8   # int8 Linear layers
    python -m model.evaluate model/checkpoints/en-de --split-sentences  # as /v1/translate does
    python -m model.evaluate model/checkpoints/en-de --split test_general --join 2  # 2 sentences

Scores are sacrebleu's on detokenized text: the hypotheses are decoded to plain strings and
compared with the untouched reference strings of the split.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import sacrebleu
import torch

from model.catalogs import Pair
from model.checkpoint import load_checkpoint
from model.cpu_kernels import quantized
from model.data import read_tsv
from model.decoding import beam_search_batch, greedy_batch
from model.ding import ends_a_sentence
from model.segment import split_text
from model.tokenizer import Tokenizer
from model.train import evaluate_loss, make_batches, make_examples
from model.transformer import Transformer


def translate(
    model: Transformer,
    tokenizer: Tokenizer,
    texts: list[str],
    beam_size: int,
    batch_size: int,
    max_new_tokens: int,
    split_sentences: bool = False,
) -> list[str]:
    """Translate in batches of similar source length (restored to input order). With
    `split_sentences`, each line and sentence on its own, put back together as `/v1/translate`
    does (model/segment.py)."""
    if split_sentences:
        split = [split_text(text) for text in texts]
        sources = [s.sources if s else [text] for text, s in zip(texts, split, strict=True)]
        flat = [source for group in sources for source in group]
        outputs = translate(model, tokenizer, flat, beam_size, batch_size, max_new_tokens)
        joined = []
        for segments, group in zip(split, sources, strict=True):
            parts, outputs = outputs[: len(group)], outputs[len(group) :]
            joined.append(segments.join(parts) if segments else parts[0])
        return joined
    max_new_tokens = min(max_new_tokens, model.config.max_positions - 1)  # the decoder's positions
    sources_ids = [ids + [tokenizer.eos_id] for ids in tokenizer.encode_batch(texts)]
    order = sorted(range(len(texts)), key=lambda i: len(sources_ids[i]))
    translations: list[str] = [""] * len(texts)
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        batch = [sources_ids[i] for i in index]
        if beam_size == 1:
            new_ids = greedy_batch(model, batch, max_new_tokens)
        else:
            new_ids = [
                h[0].token_ids for h in beam_search_batch(model, batch, beam_size, max_new_tokens)
            ]
        for i, text in zip(index, tokenizer.decode_batch(new_ids), strict=True):
            translations[i] = text
    return translations


def texts_of_n_sentences(pairs: list[Pair], n: int) -> list[Pair]:
    """Texts of `n` sentences: each `n` consecutive pairs whose English is one sentence (as
    `split_text` sees it), joined with a space on both sides."""
    single = [p for p in pairs if split_text(p.en) is None and ends_a_sentence(p.en)]
    groups = [single[k : k + n] for k in range(0, len(single) - n + 1, n)]
    return [
        Pair(" ".join(p.en for p in g), " ".join(p.de for p in g), g[0].package) for g in groups
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--split", default="test", choices=["valid", "test", "test_general"])
    parser.add_argument("--corpus", type=Path, default=Path("data/corpus"))
    parser.add_argument(
        "--beams", type=int, nargs="+", default=[1, 4], help="beam sizes (1 = greedy)"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--limit", type=int, help="only the first N pairs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--quantize", choices=["int8"], help="int8 Linear layers, as the server's --quantize"
    )
    parser.add_argument(
        "--split-sentences",
        action="store_true",
        help="translate each line and sentence on its own, as /v1/translate does by default",
    )
    parser.add_argument(
        "--join",
        type=int,
        default=1,
        help="texts of N sentences: join each N consecutive pairs whose English is one sentence",
    )
    parser.add_argument(
        "--json",
        type=Path,
        help="write the scores here (default: CHECKPOINT/eval_SPLIT.json; _int8, _split added)",
    )
    parser.add_argument(
        "--save-hypotheses", type=Path, help="write the hypotheses of each beam size here"
    )
    args = parser.parse_args()
    split_file = args.corpus / f"{args.split}.tsv"
    if not split_file.exists():
        parser.error(f"{split_file} does not exist: build the corpus first (`make corpus`)")

    torch.set_num_threads(args.threads)
    model, tokenizer = load_checkpoint(args.checkpoint)
    if args.quantize == "int8":
        model = quantized(model)
    if args.join < 1:
        parser.error("--join: a text has at least 1 sentence")
    pairs = read_tsv(split_file)[: args.limit]
    if args.join > 1:
        pairs = texts_of_n_sentences(pairs, args.join)
    references = [p.de for p in pairs]
    results = {
        "checkpoint": str(args.checkpoint),
        "split": args.split,
        "quantize": args.quantize,
        "split_sentences": args.split_sentences,
        "join": args.join,
        "sentences": len(pairs),
        "scores": {},
    }
    if not model.config.is_encoder_decoder:  # a language model: perplexity of the English side
        examples = make_examples(
            pairs, tokenizer, True, model.config.max_positions - 1
        )  # what fits
        loss = evaluate_loss(model, make_batches(examples, 4000, seed=0), tokenizer.pad_id, "cpu")
        results["scores"]["perplexity"] = round(math.exp(loss), 2)
        results["scores"]["loss"] = round(loss, 4)
        print(f"perplexity {results['scores']['perplexity']:.2f} (loss {loss:.4f})")
        args.beams = []
    for beam in args.beams:
        start = time.monotonic()
        hypotheses = translate(
            model, tokenizer, [p.en for p in pairs], beam, args.batch_size, args.max_new_tokens,
            split_sentences=args.split_sentences,
        )  # fmt: skip
        name = "greedy" if beam == 1 else f"beam{beam}"
        results["scores"][name] = {
            "bleu": round(sacrebleu.corpus_bleu(hypotheses, [references]).score, 2),
            "chrf": round(sacrebleu.corpus_chrf(hypotheses, [references]).score, 2),
            "seconds": round(time.monotonic() - start, 1),
        }
        print(
            f"{name:>7}: BLEU {results['scores'][name]['bleu']:.2f}  chrF {results['scores'][name]['chrf']:.2f}",
            flush=True,
        )
        if args.save_hypotheses:
            args.save_hypotheses.mkdir(parents=True, exist_ok=True)
            (args.save_hypotheses / f"{args.split}.{name}.de").write_text(
                "\n".join(hypotheses) + "\n"
            )
    suffix = f"_{args.quantize}" if args.quantize else ""
    suffix += "_split" if args.split_sentences else ""
    suffix += f"_join{args.join}" if args.join > 1 else ""
    out = args.json or args.checkpoint / f"eval_{args.split}{suffix}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
