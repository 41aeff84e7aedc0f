"""Token maps for Prompt-to-Prompt: which source token's attention map each target token reuses.

Prompt-to-Prompt (Hertz et al. 2022) edits an image by generating it again with an edited prompt
P* while injecting the cross-attention maps M_t of the source prompt P (section 3.2). The maps
have one column per token of the 77-token row (bos, the prompt's tokens, eos, pad), so an edit
first needs to know, for every target token, which source token (if any) it corresponds to.
This file holds that bookkeeping; it knows nothing of models or images.

- Word swap (section 3.2, "Word Swap"): P = "a big red circle", P* = "a big blue circle". The
  words are paired by position; a swapped word may be a different number of tokens (CLIP:
  "cat" is 1 token, "capybara" is 3), so the map is a (77, 77) matrix R with

      M*_t = M_t @ R          over the token axis: (HW, 77) @ (77, 77) -> (HW, 77)

  (:func:`replacement_map`).
- Refinement (section 3.2, "Adding a New Phrase"): P* adds words to P. A global alignment A
  (Needleman-Wunsch, :func:`needleman_wunsch`) pairs the tokens the two prompts share, and

      (Edit(M_t, M*_t))_{i,j} = (M*_t)_{i,j} if A(j) = None, else (M_t)_{i,A(j)}

  which :func:`refinement_map` returns as an index A(j) and a weight alpha_j = [A(j) != None].
- Re-weighting (section 3.2, "Attention Re-weighting"): scale the map of chosen words by c,
  (Edit)_{i,j} = c (M_t)_{i,j} for the tokens j of the word, M_t elsewhere (:func:`equalizer`).

The behaviour follows the official implementation's ``seq_aligner.py`` (google/prompt-to-prompt),
with two departures where its indexing is off, documented in :func:`replacement_map` and
:func:`refinement_map`: the tokens after the last swapped word, and the positions past the eos.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from ldm.tokenizer import PromptTokenizer

Pair = tuple[int | None, int | None]  # (i, j): a[i] aligned with b[j]; None is a gap


def _check_prompt(tokenizer: PromptTokenizer, prompt: str, name: str, max_len: int) -> list[int]:
    """The prompt's token ids (no bos/eos), after checking it is a str of 1..max_len-2 tokens."""
    if not isinstance(prompt, str):
        raise ValueError(f"{name} must be a str, got {type(prompt).__name__}: {prompt!r}")
    ids = tokenizer.encode(prompt)
    if not ids:
        raise ValueError(f"{name} {prompt!r} has no tokens; expected a non-empty prompt")
    if len(ids) > max_len - 2:
        raise ValueError(
            f"{name} {prompt!r} has {len(ids)} tokens, but a {max_len}-token row holds at most {max_len - 2} "
            f"between bos and eos; token maps need the whole prompt (shorten it)"
        )
    return ids


def _check_tokenizer(tokenizer: PromptTokenizer, max_len: int | None) -> int:
    """The row length: ``max_len``, or the tokenizer's context length (77 for SD v1)."""
    if not isinstance(tokenizer, PromptTokenizer):
        raise ValueError(f"tokenizer must be a PromptTokenizer, got {type(tokenizer).__name__}")
    max_len = tokenizer.context_length if max_len is None else max_len
    if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 3:
        raise ValueError(f"max_len must be an int >= 3 (bos, a token, eos), got {max_len!r}")
    return max_len


def _check_targets(targets: Sequence[str]) -> None:
    if isinstance(targets, str) or not isinstance(targets, (list, tuple)) or not targets:
        raise ValueError(f"targets must be a non-empty list of prompts, got {targets!r}")


# ----------------------------------------------------------------------------------------------
# Word swap


def replacement_map(tokenizer: PromptTokenizer, source: str, target: str, max_len: int | None = None) -> torch.Tensor:
    """The (L, L) matrix R (L = ``max_len``, default the tokenizer's 77) with M*_t = M_t @ R.

    R[i, j] is how much source token i's attention map contributes to target token j. The words
    ``source.split(" ")`` and ``target.split(" ")`` are paired by position (so the prompts need the
    same number of words), and R is built left to right, a source position i and a target
    position j walking together from bos (R[0, 0] = 1):

    - an equal word: its tokens map one to one, R[i + r, j + r] = 1;
    - a swapped word of n source tokens at i and m target tokens at j:
      if n == m, one to one as above; if n != m, R[i + a, j + b] = 1/m for all a < n, b < m,
      so each target token of the word gets (sum of the source word's maps) / m;
    - after a swapped word the target runs m - n positions ahead, and every later token, up to
      the eos and the padding, maps with that shift: source p -> target p + d, d = sum of (m - n).

    Why 1/m and not the mean 1/n: every row of R sums to 1 (R is row-stochastic), so
    sum_j (M_t R)_{x, j} = sum_i (M_t)_{x, i} = 1 for every pixel x: the edited attention is still a
    probability distribution over the tokens, and the swapped word keeps the total attention mass
    S = sum of its source maps, shared evenly by its m tokens. With the mean each target token would
    get S and the word m S / n, so a pixel's attention would sum to 1 + (m - n) S / n, and the value
    vectors of the word would be over- (m > n) or under-weighted. This is the official
    ``seq_aligner.get_replacement_mapper_``'s choice (``ratio = 1 / len(inds_target_)``).

    Past the end of the row: with d > 0 the last d source pads would land beyond position L - 1;
    they are added onto the last position (R[p, L - 1] = 1), which keeps every row summing to 1.
    With d < 0 the last |d| target positions (pads) receive no source token: zero columns.

    Departure from the official code: after the *last* swapped word it sets R[j, j] = 1 (no shift),
    so with n != m the following words, the eos and the pads take the maps of the source tokens at
    the same position, not of the same words ("a zürich cat" -> "a dog cat": target "cat" at 3 takes
    source "ü" at 3). Tokens between swapped words are shifted there as here.
    """
    max_len = _check_tokenizer(tokenizer, max_len)
    source_ids = _check_prompt(tokenizer, source, "source prompt", max_len)
    target_ids = _check_prompt(tokenizer, target, "target prompt", max_len)
    source_words, target_words = source.split(" "), target.split(" ")
    if len(source_words) != len(target_words):
        raise ValueError(
            f"a word swap pairs words by position, so both prompts need the same number of words: source "
            f"{source!r} has {len(source_words)} words, target {target!r} has {len(target_words)}"
        )
    R = torch.zeros(max_len, max_len)  # (L source, L target)
    i = j = 1  # the next source / target position; bos (0) maps to bos
    R[0, 0] = 1.0
    for k, (word, new_word) in enumerate(zip(source_words, target_words)):
        if word == new_word:
            continue  # equal words are covered by the one-to-one stretch before the next swap
        # word_token_indices raises if a swapped word has no token (an empty word from a double space)
        src = tokenizer.word_token_indices(source, k)  # n positions, consecutive
        tgt = tokenizer.word_token_indices(target, k)  # m positions, consecutive
        n, m = len(src), len(tgt)
        stretch = src[0] - i  # tokens of equal words since the last swap; the same count in both
        R[i : i + stretch, j : j + stretch] += torch.eye(stretch)  # (stretch, stretch)
        if n == m:
            R[src[0] : src[0] + n, tgt[0] : tgt[0] + m] += torch.eye(n)  # (n, n)
        else:
            R[src[0] : src[0] + n, tgt[0] : tgt[0] + m] += 1.0 / m  # (n, m), every row sums to 1
        i, j = src[0] + n, tgt[0] + m
    # the rest: the last equal words, eos, pads; source p -> target p + (j - i), clipped to L - 1
    p = torch.arange(i, max_len)  # (L - i,)
    R[p, (p + (j - i)).clamp(max=max_len - 1)] += 1.0  # (L - i,) entries
    assert len(target_ids) - len(source_ids) == j - i, "word token counts disagree with the prompt's tokens"
    return R


def replacement_maps(tokenizer: PromptTokenizer, source: str, targets: Sequence[str], max_len: int | None = None) -> torch.Tensor:
    """:func:`replacement_map` from ``source`` to each target, stacked: (T, L, L)."""
    _check_targets(targets)
    return torch.stack([replacement_map(tokenizer, source, t, max_len) for t in targets])  # (T, L, L)


# ----------------------------------------------------------------------------------------------
# Refinement


def _check_score(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")


def needleman_wunsch(a: Sequence, b: Sequence, match: float = 1, mismatch: float = -1, gap: float = 0) -> list[Pair]:
    """A global alignment of ``a`` and ``b`` (Needleman & Wunsch 1970), as pairs in order.

    Returns ``[(i, j), ...]`` covering every element of both: ``(i, j)`` aligns a[i] with b[j],
    ``(i, None)`` deletes a[i], ``(None, j)`` inserts b[j]. The score table is

        F[0, 0] = 0,   F[i, 0] = i gap,   F[0, j] = j gap
        F[i, j] = max( F[i-1, j-1] + s(a_i, b_j),   (diagonal: align; s = match or mismatch)
                       F[i-1, j] + gap,              (up: delete a_i)
                       F[i, j-1] + gap )             (left: insert b_j)

    and the alignment is read back from F[len(a), len(b)] to F[0, 0]. With the defaults (those of
    Prompt-to-Prompt's ``seq_aligner``: match 1, mismatch -1, gap 0) a mismatch never pays (two gaps
    score 0 > -1), so only equal elements are paired and the pairs form a longest common subsequence.

    Ties, as in the official ``global_align``: left, then up, then diagonal. Reading back from the
    end, a tie puts an insertion (then a deletion) as late as possible, i.e. equal elements pair as
    early as possible: a = [x], b = [x, x] gives [(0, 0), (None, 1)].
    """
    for name, seq in (("a", a), ("b", b)):
        if isinstance(seq, str) or not isinstance(seq, (list, tuple)):
            raise ValueError(f"{name} must be a list or tuple of tokens, got {type(seq).__name__}: {seq!r}")
    for name, value in (("match", match), ("mismatch", mismatch), ("gap", gap)):
        _check_score(name, value)
    LEFT, UP, DIAG = "left", "up", "diag"
    F = [[0.0] * (len(b) + 1) for _ in range(len(a) + 1)]  # (len(a) + 1, len(b) + 1) scores
    move = [[DIAG] * (len(b) + 1) for _ in range(len(a) + 1)]  # the step that reached each cell
    for j in range(1, len(b) + 1):
        F[0][j], move[0][j] = j * gap, LEFT
    for i in range(1, len(a) + 1):
        F[i][0], move[i][0] = i * gap, UP
        for j in range(1, len(b) + 1):
            left, up = F[i][j - 1] + gap, F[i - 1][j] + gap
            diag = F[i - 1][j - 1] + (match if a[i - 1] == b[j - 1] else mismatch)
            F[i][j] = max(left, up, diag)
            move[i][j] = LEFT if F[i][j] == left else UP if F[i][j] == up else DIAG
    pairs, i, j = [], len(a), len(b)
    while i > 0 or j > 0:
        step = move[i][j]
        if step == DIAG:
            i, j = i - 1, j - 1
            pairs.append((i, j))
        elif step == UP:
            i -= 1
            pairs.append((i, None))
        else:
            j -= 1
            pairs.append((None, j))
    return pairs[::-1]


def refinement_map(tokenizer: PromptTokenizer, source: str, target: str, max_len: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The alignment A of section 3.2 ("Adding a New Phrase") as ``(mapper, alphas)``, each (L,).

    For target position j: ``mapper[j]`` = A(j), the source position whose map it takes, and
    ``alphas[j]`` = 1 where A(j) exists, 0 where the token is new (it keeps its own map), so

        M_edit[..., j] = alphas[j] M_t[..., mapper[j]] + (1 - alphas[j]) M*_t[..., j]

    The alignment is :func:`needleman_wunsch` (match 1, mismatch -1, gap 0) of the token ids
    [bos, prompt tokens, eos] of source and target, as in the official ``seq_aligner.get_mapper``
    (which aligns ``tokenizer.encode`` with its bos and eos). bos pairs with bos and eos with eos
    (pairing them only adds to the score). A new token gets ``mapper[j] = j``, a valid index whose
    value alpha 0 makes irrelevant (the official code stores -1, which indexing wraps to L - 1).

    The pads after the eos pair in order from the eos: target eos + k takes source eos + k, what
    the alignment of the full rows would give with these ties. When the target is shorter, its last
    pads have no source counterpart: alpha 0. Departure from the official code: it maps every
    position past the target's eos to the same source *position*, so for a shorter target the
    target pads take the maps of source words ("a big red circle" -> "a circle": target 4, a pad,
    takes source 4, "circle"), and for a longer one the pads are not shifted with the eos.
    """
    max_len = _check_tokenizer(tokenizer, max_len)
    source_row = [tokenizer.bos_id, *_check_prompt(tokenizer, source, "source prompt", max_len), tokenizer.eos_id]
    target_row = [tokenizer.bos_id, *_check_prompt(tokenizer, target, "target prompt", max_len), tokenizer.eos_id]
    mapper = torch.arange(max_len)  # (L,) new tokens and unpaired pads point at themselves
    alphas = torch.zeros(max_len)  # (L,)
    for i, j in needleman_wunsch(source_row, target_row):
        if i is not None and j is not None:
            mapper[j], alphas[j] = i, 1.0
    shift = len(target_row) - len(source_row)  # where the target's pads start relative to the source's
    pads = torch.arange(len(target_row), max_len)  # (L - eos_t - 1,) target positions after its eos
    paired = pads - shift < max_len  # (L - eos_t - 1,) False: past the source row's end
    mapper[pads[paired]] = pads[paired] - shift
    alphas[pads[paired]] = 1.0
    return mapper, alphas


def refinement_maps(tokenizer: PromptTokenizer, source: str, targets: Sequence[str], max_len: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`refinement_map` from ``source`` to each target, stacked: mappers (T, L) long, alphas (T, L)."""
    _check_targets(targets)
    maps = [refinement_map(tokenizer, source, t, max_len) for t in targets]
    return torch.stack([m for m, _ in maps]), torch.stack([a for _, a in maps])  # (T, L), (T, L)


# ----------------------------------------------------------------------------------------------
# Re-weighting


def equalizer(tokenizer: PromptTokenizer, prompt: str, words_and_scales: dict[str, float], max_len: int | None = None) -> torch.Tensor:
    """The (L,) scales c of section 3.2 ("Attention Re-weighting"): 1 at every token, and
    ``words_and_scales[w]`` at every token of every occurrence of word w (words are
    ``prompt.split(" ")``, compared after the tokenizer's ``normalize_word``; a word of several
    tokens is scaled at all of them). The edit multiplies the map of token j by c_j:
    (Edit)_{x, j} = c_j (M_t)_{x, j}. A negative c is allowed (it pushes the concept away).
    As the official ``get_equalizer``, a word named twice keeps the later scale.
    """
    max_len = _check_tokenizer(tokenizer, max_len)
    _check_prompt(tokenizer, prompt, "prompt", max_len)
    if not isinstance(words_and_scales, dict) or not words_and_scales:
        raise ValueError(f"words_and_scales must be a non-empty dict {{word: scale}}, got {words_and_scales!r}")
    words = [tokenizer.normalize_word(w) for w in prompt.split(" ")]
    c = torch.ones(max_len)  # (L,)
    for word, scale in words_and_scales.items():
        if not isinstance(word, str) or tokenizer.normalize_word(word) not in words:
            raise ValueError(f"word {word!r} is not among the words {prompt.split(' ')} of prompt {prompt!r}")
        _check_score(f"the scale of {word!r}", scale)
        c[tokenizer.word_token_indices(prompt, word)] = float(scale)  # the word's positions
    return c
