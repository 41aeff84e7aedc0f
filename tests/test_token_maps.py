"""Prompt-to-Prompt's token maps (editing/token_maps.py): word swap, Needleman-Wunsch refinement,
re-weighting, and bad input.

Expectations are written out by hand from the token rows, which are spelled out in each test:
position 0 is bos, then the prompt's tokens, then eos, then pads up to 77. Where a CLIP word's
token count matters, the test asserts it first (on OpenAI's real vocabulary, see test_tokenizer).
"""
from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from editing import equalizer, needleman_wunsch, refinement_map, refinement_maps, replacement_map, replacement_maps
from ldm.clip_tokenizer import CLIPTokenizer
from ldm.tokenizer import WordTokenizer
from tests.test_tokenizer import clip_bpe_path

L = 77


@pytest.fixture(scope="module")
def clip() -> CLIPTokenizer:
    return CLIPTokenizer.from_bpe_file(clip_bpe_path())


@pytest.fixture(scope="module")
def words() -> WordTokenizer:
    return WordTokenizer(["a", "big", "small", "red", "blue", "circle", "square", "on", "background"])


def assert_token_counts(tok, counts: dict[str, int]) -> None:
    for word, n in counts.items():
        assert len(tok.encode(word)) == n, f"{word!r} is {tok.encode(word)}, expected {n} tokens"


def expected_matrix(entries: dict[tuple[int, int], float]) -> torch.Tensor:
    R = torch.zeros(L, L)
    for (i, j), v in entries.items():
        R[i, j] = v
    return R


# ----------------------------------------------------------------------------------------------
# Word swap


def test_identical_prompts_give_identity(clip, words):
    for tok, prompt in ((clip, "a photo of a capybara on a mat"), (words, "a big red circle on a blue background")):
        assert torch.equal(replacement_map(tok, prompt, prompt), torch.eye(L))


def test_one_token_swap_is_identity(clip, words):
    assert_token_counts(clip, {"red": 1, "blue": 1})
    for tok in (clip, words):
        R = replacement_map(tok, "a big red circle", "a big blue circle")
        assert torch.equal(R, torch.eye(L))


def test_swap_of_equal_token_counts_is_identity(clip):
    # "pangolin" = pang + olin, "wombat" = wom + bat: 2 tokens each, so token r maps to token r
    assert_token_counts(clip, {"pangolin": 2, "wombat": 2})
    assert torch.equal(replacement_map(clip, "a pangolin on a mat", "a wombat on a mat"), torch.eye(L))


def test_one_to_three_token_swap(clip):
    assert_token_counts(clip, {"a": 1, "cat": 1, "capybara": 3, "on": 1, "mat": 1})
    # source: bos0 a1 cat2 on3 a4 mat5 eos6 pad7..76
    # target: bos0 a1 cap2 y3 bara4 on5 a6 mat7 eos8 pad9..76   (shift d = 3 - 1 = 2 after the swap)
    entries = {(0, 0): 1, (1, 1): 1}
    entries.update({(2, j): 1 / 3 for j in (2, 3, 4)})  # each target token gets cat's map / m, m = 3
    entries.update({(3, 5): 1, (4, 6): 1, (5, 7): 1, (6, 8): 1})  # on a mat eos, shifted by 2
    entries.update({(p, p + 2): 1 for p in range(7, 75)})  # pads 7..74 -> 9..76
    entries.update({(75, 76): 1, (76, 76): 1})  # the last 2 source pads land past 76: onto 76
    R = replacement_map(clip, "a cat on a mat", "a capybara on a mat")
    assert torch.equal(R, expected_matrix(entries))


def test_three_to_one_token_swap(clip):
    assert_token_counts(clip, {"capybara": 3, "cat": 1})
    # source: bos0 a1 cap2 y3 bara4 on5 a6 mat7 eos8 pad9..76; target: bos0 a1 cat2 on3 a4 mat5 eos6 pad7..76
    entries = {(0, 0): 1, (1, 1): 1, (2, 2): 1, (3, 2): 1, (4, 2): 1}  # 1/m = 1: cat gets the sum of the 3 maps
    entries.update({(5, 3): 1, (6, 4): 1, (7, 5): 1, (8, 6): 1})
    entries.update({(p, p - 2): 1 for p in range(9, 77)})  # pads 9..76 -> 7..74; targets 75, 76 get nothing
    R = replacement_map(clip, "a capybara on a mat", "a cat on a mat")
    assert torch.equal(R, expected_matrix(entries))
    assert R[:, 75].sum() == 0 and R[:, 76].sum() == 0


def test_two_swaps_accumulate_the_shift(clip):
    assert_token_counts(clip, {"cat": 1, "capybara": 3, "and": 1, "dog": 1, "pangolin": 2})
    # source: bos0 a1 cat2 and3 a4 dog5 eos6 pad7..
    # target: bos0 a1 cap2 y3 bara4 and5 a6 pang7 olin8 eos9 pad10..   (shift +2 between, +3 after)
    entries = {(0, 0): 1, (1, 1): 1, (2, 2): 1 / 3, (2, 3): 1 / 3, (2, 4): 1 / 3, (3, 5): 1, (4, 6): 1}
    entries.update({(5, 7): 1 / 2, (5, 8): 1 / 2, (6, 9): 1})
    entries.update({(p, p + 3): 1 for p in range(7, 74)})
    entries.update({(p, 76): 1 for p in (74, 75, 76)})
    R = replacement_map(clip, "a cat and a dog", "a capybara and a pangolin")
    assert torch.equal(R, expected_matrix(entries))


@pytest.mark.parametrize("source, target", [
    ("a cat on a mat", "a capybara on a mat"),
    ("a capybara on a mat", "a cat on a mat"),
    ("a cat and a dog", "a capybara and a pangolin"),
    ("a zürich cat", "a dog cat"),
])
def test_replacement_keeps_attention_a_distribution(clip, source, target):
    """Every row of R sums to 1, so softmax attention (rows summing to 1) stays a distribution."""
    torch.manual_seed(0)
    R = replacement_map(clip, source, target)
    # a row holds a single 1, two 1/2 or three float32 1/3 (each within 2^-25 of 1/3): within 3e-7 of 1
    assert torch.allclose(R.sum(dim=1), torch.ones(L), rtol=0, atol=3e-7)
    attention = torch.randn(64, L).softmax(dim=-1)  # (HW, 77)
    edited = attention @ R  # (HW, 77) @ (77, 77) -> (HW, 77)
    # a sum of 77 float32 terms of order 1/77: rounding error below 77 * 2^-24 ~ 5e-6
    assert torch.allclose(edited.sum(dim=-1), torch.ones(64), atol=5e-6)


def test_replacement_maps_stacks_targets(clip):
    targets = ["a capybara on a mat", "a dog on a mat"]
    Rs = replacement_maps(clip, "a cat on a mat", targets)
    assert Rs.shape == (2, L, L)
    for R, target in zip(Rs, targets):
        assert torch.equal(R, replacement_map(clip, "a cat on a mat", target))


# ----------------------------------------------------------------------------------------------
# Needleman-Wunsch


@pytest.mark.parametrize("a, b, expected", [
    (["x", "y"], ["z", "x", "y"], [(None, 0), (0, 1), (1, 2)]),  # insertion at the start
    (["x", "y"], ["x", "z", "y"], [(0, 0), (None, 1), (1, 2)]),  # insertion in the middle
    (["x", "y"], ["x", "y", "z"], [(0, 0), (1, 1), (None, 2)]),  # insertion at the end
    (["x", "z", "y"], ["x", "y"], [(0, 0), (1, None), (2, 1)]),  # deletion
    (["x", "y"], ["x", "y"], [(0, 0), (1, 1)]),
    ([], ["x"], [(None, 0)]),
    (["x"], [], [(0, None)]),
    ([], [], []),
])
def test_needleman_wunsch_insertions(a, b, expected):
    assert needleman_wunsch(a, b) == expected


def test_needleman_wunsch_substitution():
    # defaults: a mismatch (-1) scores below a deletion plus an insertion (0 + 0), so y and w stay
    # unpaired. F for [x, y] vs [x, w] at the cell (2, 2): left = F[2,1] = 1, up = F[1,2] = 1,
    # diag = F[1,1] - 1 = 0; the tie goes left (insert w), then at (2, 1) up (delete y).
    assert needleman_wunsch(["x", "y", "z"], ["x", "w", "z"]) == [(0, 0), (1, None), (None, 1), (2, 2)]
    # with gaps at -2 a mismatch (-1) is cheaper than two gaps (-4): y pairs with w
    assert needleman_wunsch(["x", "y", "z"], ["x", "w", "z"], gap=-2) == [(0, 0), (1, 1), (2, 2)]


def test_needleman_wunsch_ties_pair_early():
    # [x] vs [x, x]: both alignments score 1; reading back from the end, left (insert) wins the tie
    assert needleman_wunsch(["x"], ["x", "x"]) == [(0, 0), (None, 1)]
    assert needleman_wunsch(["x", "x"], ["x"]) == [(0, 0), (1, None)]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from("xyz"), max_size=6), st.lists(st.sampled_from("xyz"), max_size=6))
def test_needleman_wunsch_is_a_longest_common_subsequence(a, b):
    pairs = needleman_wunsch(a, b)
    assert [i for i, _ in pairs if i is not None] == list(range(len(a)))  # every element once, in order
    assert [j for _, j in pairs if j is not None] == list(range(len(b)))
    matched = [(i, j) for i, j in pairs if i is not None and j is not None]
    assert all(a[i] == b[j] for i, j in matched)
    # brute force: the longest subsequence of a that is also a subsequence of b
    def is_subsequence(s, t):
        it = iter(t)
        return all(c in it for c in s)
    lcs = max(k for k in range(len(a) + 1) for s in itertools.combinations(a, k) if is_subsequence(s, b))
    assert len(matched) == lcs


# ----------------------------------------------------------------------------------------------
# Refinement


def test_refinement_appended_phrase(clip, words):
    assert_token_counts(clip, {w: 1 for w in "a red circle on blue background".split()})
    for tok in (clip, words):
        mapper, alphas = refinement_map(tok, "a red circle", "a red circle on a blue background")
        # source: bos0 a1 red2 circle3 eos4 pad5..; target: bos0 a1 red2 circle3 on4 a5 blue6 background7 eos8 pad9..
        assert mapper[:4].tolist() == [0, 1, 2, 3] and alphas[:4].tolist() == [1, 1, 1, 1]
        assert alphas[4:8].tolist() == [0, 0, 0, 0]  # new tokens keep their own maps
        assert mapper[4:8].tolist() == [4, 5, 6, 7]  # (their index is unused; it points at themselves)
        assert mapper[8] == 4 and alphas[8] == 1  # eos -> eos
        assert mapper[9:].tolist() == list(range(5, 73)) and alphas[9:].eq(1).all()  # pads from the eos on


def test_refinement_inserted_adjective_shifts_the_rest(clip, words):
    assert_token_counts(clip, {"a": 1, "big": 1, "circle": 1})
    for tok in (clip, words):
        mapper, alphas = refinement_map(tok, "a circle", "a big circle")
        # source: bos0 a1 circle2 eos3 pad4..; target: bos0 a1 big2 circle3 eos4 pad5..
        assert mapper[[0, 1]].tolist() == [0, 1] and alphas[2] == 0
        assert mapper[3:].tolist() == list(range(2, 76))  # circle, eos and the pads: one position back
        assert alphas.sum() == L - 1


def test_refinement_shorter_target(words):
    mapper, alphas = refinement_map(words, "a big red circle", "a circle")
    # source: bos0 a1 big2 red3 circle4 eos5 pad6..76; target: bos0 a1 circle2 eos3 pad4..76
    assert mapper[:4].tolist() == [0, 1, 4, 5]
    assert mapper[4:75].tolist() == list(range(6, 77))  # pads, 2 positions on
    assert alphas[:75].eq(1).all() and alphas[75:].tolist() == [0, 0]  # no source pad left for 75, 76


def test_refinement_identical_prompts(clip):
    mapper, alphas = refinement_map(clip, "a capybara on a mat", "a capybara on a mat")
    assert torch.equal(mapper, torch.arange(L)) and torch.equal(alphas, torch.ones(L))


def test_refinement_maps_stacks_targets(words):
    targets = ["a big circle", "a circle on a blue background"]
    mappers, alphas = refinement_maps(words, "a circle", targets)
    assert mappers.shape == (2, L) and mappers.dtype == torch.long and alphas.shape == (2, L)
    for k, target in enumerate(targets):
        m, a = refinement_map(words, "a circle", target)
        assert torch.equal(mappers[k], m) and torch.equal(alphas[k], a)


# ----------------------------------------------------------------------------------------------
# Re-weighting


def test_equalizer_multi_token_word(clip):
    assert_token_counts(clip, {"a": 1, "capybara": 3, "on": 1, "mat": 1})
    # bos0 a1 cap2 y3 bara4 on5 a6 mat7 eos8
    c = equalizer(clip, "a capybara on a mat", {"Capybara": 2.0, "mat": -0.5})
    expected = torch.ones(L)
    expected[[2, 3, 4]] = 2.0
    expected[7] = -0.5
    assert torch.equal(c, expected)


def test_equalizer_scales_every_occurrence(words):
    c = equalizer(words, "a big red circle on a blue background", {"a": 0.0})
    assert c[[1, 6]].tolist() == [0, 0] and c.sum() == L - 2


# ----------------------------------------------------------------------------------------------
# Bad input


def test_replacement_needs_equal_word_counts(clip):
    with pytest.raises(ValueError, match=r"'a red circle' has 3 words, target 'a red circle on a mat' has 6"):
        replacement_map(clip, "a red circle", "a red circle on a mat")


def test_swapped_word_without_tokens(clip):
    # "a  cat".split(" ") = ["a", "", "cat"]: the empty word has no token to map from
    with pytest.raises(ValueError, match=r"has no token"):
        replacement_map(clip, "a  cat", "a big cat")


def test_equalizer_unknown_word(clip):
    with pytest.raises(ValueError, match=r"word 'dog' is not among the words \['a', 'cat'\] of prompt 'a cat'"):
        equalizer(clip, "a cat", {"dog": 2.0})
    with pytest.raises(ValueError, match=r"non-empty dict"):
        equalizer(clip, "a cat", {})
    with pytest.raises(ValueError, match=r"scale of 'cat' must be a finite number, got nan"):
        equalizer(clip, "a cat", {"cat": float("nan")})


@pytest.mark.parametrize("fn", [replacement_map, refinement_map])
def test_empty_and_non_str_prompts(clip, fn):
    with pytest.raises(ValueError, match=r"source prompt '' has no tokens"):
        fn(clip, "", "a cat")
    with pytest.raises(ValueError, match=r"target prompt ' ' has no tokens"):
        fn(clip, "a", " ")
    with pytest.raises(ValueError, match=r"target prompt must be a str, got int: 3"):
        fn(clip, "a cat", 3)
    with pytest.raises(ValueError, match=r"source prompt must be a str, got list"):
        fn(clip, ["a cat"], "a dog")
    with pytest.raises(ValueError, match=r"has 76 tokens, but a 77-token row holds at most 75"):
        fn(clip, "a cat", " ".join(["cat"] * 76))
    with pytest.raises(ValueError, match=r"tokenizer must be a PromptTokenizer, got str"):
        fn("clip", "a cat", "a dog")


def test_bad_target_lists_and_scores(clip):
    with pytest.raises(ValueError, match=r"targets must be a non-empty list of prompts, got 'a dog'"):
        replacement_maps(clip, "a cat", "a dog")
    with pytest.raises(ValueError, match=r"targets must be a non-empty list"):
        refinement_maps(clip, "a cat", [])
    with pytest.raises(ValueError, match=r"a must be a list or tuple of tokens, got str"):
        needleman_wunsch("xy", ["x"])
    with pytest.raises(ValueError, match=r"match must be a finite number, got True"):
        needleman_wunsch(["x"], ["x"], match=True)
    with pytest.raises(ValueError, match=r"max_len must be an int >= 3 \(bos, a token, eos\), got 2"):
        replacement_map(clip, "a cat", "a dog", max_len=2)
    with pytest.raises(ValueError, match=r"prompt must be a str, got NoneType"):
        equalizer(clip, None, {"cat": 2.0})
