"""CLIP's tokenizer: byte-level byte-pair encoding (Radford et al. 2021, section 2.4).

CLIP's text encoder reads "a lower-cased byte pair encoding (BPE) representation of the text with
a 49,152 vocab size (Sennrich et al., 2015)", built the GPT-2 way (Radford et al. 2019, section
2.2): BPE runs over *bytes*, each of the 256 byte values shown as one printable character, so any
string encodes and nothing is ever unknown. A prompt goes through four steps:

1. clean-up: NFC, ``html.unescape`` twice, whitespace runs -> one space, strip, lowercase;
2. pre-tokenisation: a regex cuts the text into words, digits and punctuation runs
   (``'s|'t|'re|'ve|'m|'ll|'d|\\p{L}+|\\p{N}|[^\\s\\p{L}\\p{N}]+``); no piece crosses a space;
3. each piece's UTF-8 bytes become byte characters, its last one marked with ``</w>``;
4. BPE (Sennrich et al. 2016, Algorithm 1, run as an encoder): merge the adjacent pair of symbols
   that was learned first (the lowest rank in ``merges``), everywhere in the piece, until no
   adjacent pair is a learned merge. Each remaining symbol is one vocabulary entry.

The vocabulary (49408 ids) is: the 256 byte characters, the same with ``</w>``, the result of each
of the first 49152 - 256 - 2 = 48894 merges in order, then ``<|startoftext|>`` (49406) and
``<|endoftext|>`` (49407). OpenAI ships only the merges (``bpe_simple_vocab_16e6.txt.gz``);
SD's ``tokenizer/`` folder ships the vocabulary as ``vocab.json`` and the merges as ``merges.txt``.

Difference from OpenAI's CLIP: its clean-up first runs ``ftfy.fix_text``, a package this project
does not depend on. We keep the part of it that matters most (Unicode NFC) and skip the rest:
mojibake repair ("cafÃ©" -> "café"), curly quotes -> straight ones, ligatures ("ﬁ" -> "fi"),
full-width forms ("Ａ" -> "A"), control and terminal-escape removal. transformers'
``CLIPTokenizer`` (what diffusers' SD pipelines use) skips all of ftfy too, and also skips the
``html.unescape`` step that we keep from CLIP: "&amp;" is "&" here and in CLIP, "&amp;" there.

Needs the ``regex`` package (for ``\\p{L}``, ``\\p{N}``), which Python's ``re`` lacks.
"""
from __future__ import annotations

import gzip
import html
import json
import os
import re
import unicodedata
from pathlib import Path
from typing import Mapping, Sequence

import regex

from .tokenizer import PromptTokenizer, atomic_write_text

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
END_OF_WORD = "</w>"
NUM_MERGES = 49152 - 256 - 2  # CLIP's 49152-entry BPE vocabulary: 256 bytes, this many merges, 2 specials
PIECES = regex.compile(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+""")
WHITESPACE = re.compile(r"\s+")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table from each byte to one printable character: the 188 bytes that print as
    themselves in Latin-1 ('!'..'~', '¡'..'¬', '®'..'ÿ') keep their character; the other 68
    (controls, space, DEL, NBSP, soft hyphen) get chr(256), chr(257), ... in byte order.
    The table's order (printable first) is the order of the vocabulary's first 256 entries."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    table = {b: chr(b) for b in printable}
    table.update({b: chr(256 + n) for n, b in enumerate(others)})
    return table


def clean(text: str) -> str:
    """CLIP's clean-up without ftfy: NFC, html.unescape twice ("&amp;amp;" -> "&"), whitespace
    runs -> one space, strip, lowercase."""
    text = unicodedata.normalize("NFC", text)
    text = html.unescape(html.unescape(text))
    return WHITESPACE.sub(" ", text).strip().lower()


def read_clip_merges(path: str | os.PathLike) -> list[tuple[str, str]]:
    """The first 48894 merges of OpenAI's ``bpe_simple_vocab_16e6.txt.gz`` (after its version line)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no CLIP BPE merges file at {path}; expected bpe_simple_vocab_16e6.txt.gz")
    try:
        lines = gzip.open(path, "rt", encoding="utf-8").read().split("\n")
    except (OSError, EOFError, UnicodeDecodeError) as e:  # BadGzipFile is an OSError
        raise ValueError(f"{path} is not a gzipped UTF-8 merges file ({e}); expected OpenAI's "
                         f"bpe_simple_vocab_16e6.txt.gz") from None
    merges = [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]
    bad = [m for m in merges if len(m) != 2]
    if len(merges) != NUM_MERGES or bad:
        raise ValueError(f"{path}: expected {NUM_MERGES} merges of two symbols each, got {len(merges)} ({len(bad)} bad)")
    return merges


def clip_vocab(merges: Sequence[tuple[str, str]]) -> dict[str, int]:
    """CLIP's vocabulary from its merges: bytes, bytes + </w>, each merge's result, then the specials."""
    byte_chars = list(bytes_to_unicode().values())
    tokens = byte_chars + [c + END_OF_WORD for c in byte_chars] + [a + b for a, b in merges] + [BOS, EOS]
    return {t: i for i, t in enumerate(tokens)}


class CLIPTokenizer(PromptTokenizer):
    """CLIP's byte-level BPE tokenizer, with SD v1's row layout: bos 49406, the prompt, eos 49407,
    eos as padding, 77 ids. Build it from a vocabulary and merges, or with :meth:`load`."""

    def __init__(self, vocab: Mapping[str, int], merges: Sequence[tuple[str, str]], source: str = "the tokenizer") -> None:
        if not isinstance(vocab, Mapping) or not all(isinstance(t, str) and isinstance(i, int) and not isinstance(i, bool)
                                                     for t, i in vocab.items()):
            raise ValueError(f"{source}: the vocabulary must map token strings to int ids")
        missing = [t for t in (BOS, EOS) if t not in vocab]
        if missing:
            raise ValueError(f"{source}: the vocabulary lacks the special tokens {missing}; a CLIP vocabulary has "
                             f"{BOS} and {EOS}")
        ids = sorted(vocab.values())
        if ids != list(range(len(ids))):
            repeated = sorted({i for i in ids if ids.count(i) > 1})[:5] if len(set(ids)) != len(ids) else []
            raise ValueError(f"{source}: the vocabulary's ids must be 0..{len(ids) - 1}, each once"
                             + (f"; repeated: {repeated}" if repeated else f"; got ids up to {ids[-1]}"))
        byte_chars = list(bytes_to_unicode().values())
        absent = [c for c in byte_chars + [c + END_OF_WORD for c in byte_chars] if c not in vocab]
        if absent:
            raise ValueError(f"{source}: the vocabulary lacks {len(absent)} of the 512 byte tokens (e.g. {absent[:3]}); "
                             f"byte-level BPE needs every byte, alone and word-final, or some prompts cannot be encoded")
        if not merges:
            raise ValueError(f"{source}: there are no merges; every prompt would be split into single bytes")
        self.vocab = dict(vocab)
        self.merges = [tuple(m) for m in merges]
        unknown = [m for m in self.merges if len(m) != 2 or m[0] + m[1] not in self.vocab]
        if unknown:
            raise ValueError(f"{source}: {len(unknown)} merges make tokens that are not in the vocabulary, e.g. "
                             f"{unknown[:3]}")
        self.rank = {pair: i for i, pair in enumerate(self.merges)}  # earlier learned = merged first
        self.id_to_token = {i: t for t, i in self.vocab.items()}
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        self.bos_id, self.eos_id = self.vocab[BOS], self.vocab[EOS]
        self.pad_id = self.eos_id  # SD v1 pads with <|endoftext|>
        self.cache: dict[str, list[str]] = {BOS: [BOS], EOS: [EOS]}  # a special typed in a prompt stays one token

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def bpe(self, piece: str) -> list[str]:
        """Sennrich et al.'s merges on one pre-token (already in byte characters): start from its
        characters, the last one marked </w>; merge the lowest-ranked adjacent pair everywhere,
        left to right; repeat until no adjacent pair has a rank. Results are cached per piece."""
        if piece in self.cache:
            return self.cache[piece]
        symbols = [*piece[:-1], piece[-1] + END_OF_WORD]
        while len(symbols) > 1:
            pairs = {(a, b) for a, b in zip(symbols, symbols[1:]) if (a, b) in self.rank}
            if not pairs:
                break
            first, second = min(pairs, key=self.rank.__getitem__)
            merged, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and symbols[i] == first and symbols[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        self.cache[piece] = symbols
        return symbols

    def tokens(self, text: str) -> list[str]:
        """The BPE tokens of ``text`` (strings in byte characters, word ends marked </w>)."""
        if not isinstance(text, str):
            raise ValueError(f"text must be a str, got {type(text).__name__}: {text!r}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:  # a str can hold halves of UTF-16 pairs, which have no UTF-8 bytes
            raise ValueError(f"text {text!r} holds a lone surrogate {text[e.start]!r} at index {e.start}; "
                             f"expected valid Unicode text") from None
        out = []
        for piece in PIECES.findall(clean(text)):
            out.extend(self.bpe("".join(self.byte_encoder[b] for b in piece.encode("utf-8"))))
        return out

    def encode(self, text: str) -> list[int]:
        return [self.vocab[t] for t in self.tokens(text)]

    def decode(self, ids: Sequence[int]) -> str:
        """The cleaned text back from ids: byte characters -> bytes -> UTF-8, </w> -> a space."""
        bad = [i for i in ids if i not in self.id_to_token]
        if bad:
            raise ValueError(f"token ids {bad[:10]} are not in the vocabulary of {self.vocab_size} ids")
        text = "".join(self.id_to_token[i] for i in ids)
        data = bytearray(self.byte_decoder[c] for c in text)
        return data.decode("utf-8", errors="replace").replace(END_OF_WORD, " ").strip()

    def normalize_word(self, word: str) -> str:
        return clean(word)

    # files ---------------------------------------------------------------------------------------
    @classmethod
    def from_bpe_file(cls, path: str | os.PathLike) -> "CLIPTokenizer":
        """From OpenAI's ``bpe_simple_vocab_16e6.txt.gz``: the merges, and the vocabulary they make."""
        merges = read_clip_merges(path)
        return cls(clip_vocab(merges), merges, source=str(path))

    @classmethod
    def from_folder(cls, folder: str | os.PathLike) -> "CLIPTokenizer":
        """From ``vocab.json`` + ``merges.txt`` in ``folder`` or in ``folder/tokenizer`` (an SD folder)."""
        folder = Path(folder)
        if (folder / "tokenizer" / "vocab.json").is_file():
            folder = folder / "tokenizer"
        vocab_path, merges_path = folder / "vocab.json", folder / "merges.txt"
        for p in (vocab_path, merges_path):
            if not p.is_file():
                hint = (" (this folder holds only tokenizer.json, the tokenizers library's format: convert with "
                        "--tokenizer pointing at a folder with vocab.json + merges.txt, e.g. SD's tokenizer/)"
                        if (folder / "tokenizer.json").is_file() else "")
                raise FileNotFoundError(f"no {p.name} in {folder}; expected a CLIP tokenizer folder "
                                        f"(vocab.json + merges.txt){hint}")
        try:
            vocab = json.loads(vocab_path.read_text(encoding="utf-8"))
            lines = merges_path.read_text(encoding="utf-8").split("\n")
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{vocab_path} or {merges_path} is not valid UTF-8 JSON / text: {e}") from None
        merges = [tuple(line.split()) for line in lines if line.strip() and not line.startswith("#version")]
        return cls(vocab, merges, source=f"{folder} (vocab.json + merges.txt)")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CLIPTokenizer":
        """A ``.gz`` file is OpenAI's merges file; anything else is a tokenizer (or SD) folder."""
        return cls.from_bpe_file(path) if str(path).endswith(".gz") else cls.from_folder(path)

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``vocab.json`` and ``merges.txt`` to ``folder`` (each atomically), as SD's
        ``tokenizer/`` folder holds them; :meth:`from_folder` and transformers read them back."""
        folder = Path(folder)
        vocab_text = json.dumps(self.vocab, ensure_ascii=False, indent=2) + "\n"  # serialise before writing
        merges_text = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in self.merges)
        atomic_write_text(folder / "vocab.json", vocab_text)
        atomic_write_text(folder / "merges.txt", merges_text)
        return folder
