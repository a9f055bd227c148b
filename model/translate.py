"""Translate from the command line with a checkpoint directory (no server needed).

python -m model.translate "Open the file"            # the bundled EN→DE model
echo "Save as…" | python -m model.translate --beam 1  # one text per line of stdin

Each sentence of a text is translated on its own, as the server's /v1/translate does
(model/segment.py); `--whole` gives each text to the model whole.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from model.checkpoint import load_checkpoint
from model.evaluate import translate

BUNDLED = Path(__file__).parent / "checkpoints" / "en-de"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("text", nargs="*", help="texts (default: the lines of stdin)")
    parser.add_argument("--checkpoint", type=Path, default=BUNDLED)
    parser.add_argument("--beam", type=int, default=4, help="beam size (1 = greedy)")
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--whole", action="store_true", help="do not split texts into sentences")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = load_checkpoint(args.checkpoint)
    if not model.config.is_encoder_decoder:
        raise SystemExit(
            f"{args.checkpoint} is a {model.config.architecture} model, not a translator"
        )
    texts = args.text or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    for line in translate(
        model, tokenizer, texts, args.beam, batch_size=32, max_new_tokens=args.max_new_tokens,
        split_sentences=not args.whole,
    ):  # fmt: skip
        print(line)


if __name__ == "__main__":
    main()
