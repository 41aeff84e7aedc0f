"""Tokenizers: a prompt -> a row of 77 token ids for the text encoder; and where each word's tokens sit.

Every tokenizer here turns a batch of prompts into the (B, 77) ids that SD v1's text encoder reads:

    ids = [bos] + encode(prompt)[:75] + [eos] + [pad] * (75 - len(encode(prompt)))     (77 ids)

``encode`` is the tokenizer's own idea (byte-level BPE for CLIP, one id per word for the toy
model); this file holds what is common: the bracketing, the padding, the truncation (CLIP's text
encoder has 77 positions, so a longer prompt loses its tail, with a warning that says how much),
and :meth:`PromptTokenizer.word_token_indices`, the positions of a word's tokens in that row,
which Prompt-to-Prompt (Hertz et al. 2022, section 3.2) needs to find the cross-attention map
M_{t, i} of word i.

Two tokenizers share this interface:

- :class:`ldm.clip_tokenizer.CLIPTokenizer`: CLIP's byte-level BPE, SD v1's real tokenizer.
- :class:`WordTokenizer` (below): a fixed list of words, one token each, for the toy model,
  whose captions ("a big red circle on a blue background") use a few dozen words.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Sequence

import torch

CONTEXT_LENGTH = 77  # SD v1's text encoder has 77 positions: bos, at most 75 prompt tokens, eos


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (weights/atomic.py: the project's one atomic writer)."""
    from weights.atomic import write_text  # imported here: weights imports this module

    write_text(path, text)


class PromptTokenizer:
    """What a text-to-image pipeline asks of a tokenizer. Subclasses set ``bos_id``, ``eos_id``,
    ``pad_id`` and implement :meth:`encode`, :meth:`decode` and :meth:`normalize_word`."""

    bos_id: int
    eos_id: int
    pad_id: int
    context_length: int = CONTEXT_LENGTH

    def encode(self, text: str) -> list[int]:
        """The prompt's token ids, without bos/eos, not truncated."""
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:
        """The text that ``ids`` stand for (up to the tokenizer's clean-up)."""
        raise NotImplementedError

    def normalize_word(self, word: str) -> str:
        """The form in which two spellings of a word count as the same word (e.g. lowercase)."""
        raise NotImplementedError

    @staticmethod
    def _check_prompts(prompts: Sequence[str]) -> None:
        if isinstance(prompts, str):
            raise ValueError(f"expected a list of prompts, got the single string {prompts!r}; pass [prompt]")
        if not isinstance(prompts, (list, tuple)):
            raise ValueError(f"expected a list of prompt strings, got {type(prompts).__name__}")
        if len(prompts) == 0:
            raise ValueError("expected at least one prompt, got an empty list")
        for i, p in enumerate(prompts):
            if not isinstance(p, str):
                raise ValueError(f"prompt {i} must be a str, got {type(p).__name__}: {p!r}")

    def __call__(self, prompts: Sequence[str]) -> torch.Tensor:
        """Token ids (B, 77): bos, the prompt's tokens, eos, then pad. A prompt of more than 75
        tokens keeps its first 75 and a warning names it and the tokens dropped, as CLIP does."""
        self._check_prompts(prompts)
        room = self.context_length - 2  # positions between bos and eos
        rows = []
        for prompt in prompts:
            ids = self.encode(prompt)
            if len(ids) > room:
                dropped = ids[room:]
                warnings.warn(
                    f"prompt {prompt!r} has {len(ids)} tokens but only {room} fit in {self.context_length} "
                    f"positions with bos and eos; the last {len(dropped)} tokens were dropped: "
                    f"{self.decode(dropped)!r}",
                    stacklevel=2,
                )
                ids = ids[:room]
            row = [self.bos_id, *ids, self.eos_id]
            rows.append(row + [self.pad_id] * (self.context_length - len(row)))
        return torch.tensor(rows, dtype=torch.long)  # (B, 77)

    def word_token_indices(self, prompt: str, word_or_index: str | int) -> list[int]:
        """The positions, in the 77-token row of ``prompt`` (bos at 0), of the tokens of one word.

        Words are ``prompt.split(" ")``, as in Prompt-to-Prompt's code; ``word_or_index`` is either
        an index into that list or a word, which selects every word equal to it (after
        :meth:`normalize_word`). A word may be several tokens (CLIP: "zürich" -> "z", "ü", "rich"),
        and all of them are returned. The words are tokenized one by one: the tokenizers here
        never let a token run across a space, so this gives the same tokens as the whole prompt.
        """
        if not isinstance(prompt, str):
            raise ValueError(f"prompt must be a str, got {type(prompt).__name__}: {prompt!r}")
        words = prompt.split(" ")
        if isinstance(word_or_index, bool) or not isinstance(word_or_index, (int, str)):
            raise ValueError(f"word_or_index must be a word (str) or a word index (int), got {word_or_index!r}")
        if isinstance(word_or_index, int):
            if not 0 <= word_or_index < len(words):
                raise ValueError(f"word index {word_or_index} is out of range for the {len(words)} words {words}")
            chosen = {word_or_index}
        else:
            if " " in word_or_index.strip() or not word_or_index.strip():
                raise ValueError(f"expected a single word, got {word_or_index!r}")
            target = self.normalize_word(word_or_index)
            chosen = {i for i, w in enumerate(words) if self.normalize_word(w) == target}
            if not chosen:
                raise ValueError(f"word {word_or_index!r} is not among the words {words} of prompt {prompt!r}")
        positions, start = [], 1  # position 0 holds bos
        for i, w in enumerate(words):
            n = len(self.encode(w))
            if i in chosen:
                positions.extend(range(start, start + n))
            start += n
        last = self.context_length - 2  # the last position a prompt token can keep
        kept = [p for p in positions if p <= last]
        if not kept:
            raise ValueError(
                f"word {word_or_index!r} of prompt {prompt!r} has no token in the {self.context_length}-token row "
                f"(it is empty, or was truncated past position {last})"
            )
        return kept


SPECIALS = ("<pad>", "<bos>", "<eos>")  # after the words, so <eos> has the largest id, as in CLIP


class WordTokenizer(PromptTokenizer):
    """One token per word of a fixed vocabulary: words get ids 0..n-1 in the order given, then
    <pad> = n, <bos> = n + 1, <eos> = n + 2. Prompts are lowercased and split on whitespace;
    a word outside the vocabulary is an error (the toy model knows nothing else)."""

    def __init__(self, words: Sequence[str]) -> None:
        if isinstance(words, str) or not isinstance(words, (list, tuple)) or not words:
            raise ValueError(f"words must be a non-empty list of str, got {words!r}")
        for w in words:
            if not isinstance(w, str) or not w or w != w.lower() or len(w.split()) != 1 or w != w.strip():
                raise ValueError(f"vocabulary word {w!r} must be a non-empty lowercase str without whitespace")
            if w in SPECIALS:
                raise ValueError(f"vocabulary word {w!r} is a special token; the specials {SPECIALS} are added")
        duplicates = sorted({w for w in words if words.count(w) > 1})
        if duplicates:
            raise ValueError(f"vocabulary words must be unique; repeated: {duplicates}")
        self.words = list(words)
        self.vocab = {w: i for i, w in enumerate(self.words)}
        for name, token in zip(("pad_id", "bos_id", "eos_id"), SPECIALS):
            setattr(self, name, len(self.words) + SPECIALS.index(token))
        self.id_to_token = self.words + list(SPECIALS)

    @property
    def vocab_size(self) -> int:
        return len(self.id_to_token)

    def normalize_word(self, word: str) -> str:
        return word.strip().lower()

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise ValueError(f"text must be a str, got {type(text).__name__}: {text!r}")
        unknown = [w for w in text.lower().split() if w not in self.vocab]
        if unknown:
            shown = self.words if len(self.words) <= 60 else self.words[:60] + ["..."]
            raise ValueError(f"unknown word {unknown[0]!r} in prompt {text!r}; the vocabulary is {shown}")
        return [self.vocab[w] for w in text.lower().split()]

    def decode(self, ids: Sequence[int]) -> str:
        bad = [i for i in ids if not (isinstance(i, int) and 0 <= i < self.vocab_size)]
        if bad:
            raise ValueError(f"token ids {bad} are outside the vocabulary 0..{self.vocab_size - 1}")
        return " ".join(self.id_to_token[i] for i in ids)

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``folder/words.json`` (atomically); :meth:`load` reads it back."""
        path = Path(folder) / "words.json"
        atomic_write_text(path, json.dumps({"words": self.words, "specials": list(SPECIALS)}, indent=2) + "\n")
        return path

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "WordTokenizer":
        path = Path(folder) / "words.json"
        if not path.is_file():
            raise FileNotFoundError(f"no word vocabulary at {path}; expected a folder written by WordTokenizer.save")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path} is not valid UTF-8 JSON: {e}") from None
        if not isinstance(data, dict) or data.get("specials") != list(SPECIALS) or "words" not in data:
            raise ValueError(f"{path} is not a WordTokenizer vocabulary: expected {{'words': [...], 'specials': {list(SPECIALS)}}}")
        try:
            return cls(data["words"])
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
