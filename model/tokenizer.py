"""The shared subword vocabulary: byte-level BPE (Hugging Face `tokenizers`), saved as tokenizer.json.

Byte-level means every string encodes (no unknown token) and decodes back exactly.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK]  # ids 0, 1, 2, 3


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> HFTokenizer:
    tokenizer = HFTokenizer(models.BPE(unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


class Tokenizer:
    """Text ↔ token ids, with the ids of the special tokens at hand."""

    def __init__(
        self,
        hf: HFTokenizer,
        pad_id: int | None = None,
        bos_id: int | None = None,
        eos_id: int | None = None,
        split_special_tokens: bool = False,
    ):
        """Special ids default to our own tokens' ids; converted models pass their config's.

        `split_special_tokens` (transformers' name, kept in a checkpoint's tokenizer_config.json):
        a special token's string in the text ("</s>") is encoded as plain text, not as the token.
        Our own checkpoints set it: their special tokens look like markup ("<s>" is an HTML tag)
        that user text may hold. Off, as in transformers, vLLM and TGI by default, a converted
        GPT-2 reads "<|endoftext|>" in a prompt as its end-of-text token. The setting is the
        `hf` tokenizer's own (`encode_special_tokens`): the constructor sets it there."""
        self.hf = hf
        hf.encode_special_tokens = split_special_tokens
        self.pad_id = self._id(PAD) if pad_id is None else pad_id
        self.bos_id = self._id(BOS) if bos_id is None else bos_id
        self.eos_id = self._id(EOS) if eos_id is None else eos_id

    def _id(self, token: str) -> int:
        token_id = self.hf.token_to_id(token)
        if token_id is None:
            raise ValueError(f"tokenizer has no {token!r} token")
        return token_id

    @classmethod
    def from_file(
        cls,
        path: str | Path,
        special_ids: tuple[int, int, int] | None = None,
        split_special_tokens: bool = False,
    ) -> Tokenizer:
        """`special_ids`: (pad, bos, eos), as a model's config.json gives them."""
        pad, bos, eos = special_ids or (None, None, None)
        return cls(HFTokenizer.from_file(str(path)), pad, bos, eos, split_special_tokens)

    def save(self, path: str | Path) -> None:
        self.hf.save(str(path))

    @property
    def split_special_tokens(self) -> bool:
        return self.hf.encode_special_tokens

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    @property
    def is_byte_level(self) -> bool:
        """Whether any text encodes, a character the vocabulary lacks as its UTF-8 bytes (ours;
        a converted SentencePiece model's has an unknown token instead)."""
        return isinstance(self.hf.decoder, decoders.ByteLevel)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without special tokens."""
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.hf.encode_batch(texts, add_special_tokens=False)]

    def decode(self, token_ids: list[int]) -> str:
        """Text of `token_ids`, special tokens dropped."""
        return self.hf.decode(token_ids, skip_special_tokens=True)

    def decode_batch(self, batch: list[list[int]]) -> list[str]:
        return self.hf.decode_batch(batch, skip_special_tokens=True)

    def token_bytes(self, token_id: int) -> bytes:
        """The UTF-8 bytes one token adds to the text: a piece of a character for a byte-level
        token that holds one (where `decode` gives "\ufffd"); nothing for a special token.
        Tokenizers that are not byte-level give their token's decoded text."""
        token = self.hf.id_to_token(token_id)
        if token is None or token_id in self._special_ids:
            return b""
        if type(self.hf.decoder).__name__ == "ByteLevel":
            return bytes(_BYTE_OF_CHAR[c] for c in token if c in _BYTE_OF_CHAR)
        return self.decode([token_id]).encode()

    @functools.cached_property
    def _special_ids(self) -> set[int]:
        return {self.pad_id, self.bos_id, self.eos_id} | {
            i for i, t in self.hf.get_added_tokens_decoder().items() if t.special
        }


def _byte_level_alphabet() -> dict[str, int]:
    """Byte-level BPE's printable stand-in of each byte (GPT-2's `bytes_to_unicode`) → the byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[chr(byte)] = byte
        else:
            chars[chr(256 + extra)] = byte
            extra += 1
    return chars


_BYTE_OF_CHAR = _byte_level_alphabet()


def read_split_special_tokens(directory: Path) -> bool:
    """`split_special_tokens` from a model directory's tokenizer_config.json (False if none)."""
    path = directory / "tokenizer_config.json"
    return path.exists() and bool(json.loads(path.read_text()).get("split_special_tokens", False))
