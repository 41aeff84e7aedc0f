"""The official behaviours that benchmarks/departures.py re-creates, checked against the examples
the docstrings of editing/token_maps.py give for them, so the measured departures of
docs/departures.md compare with what the official code does and not with a misreading of it."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from editing.token_maps import refinement_maps, replacement_map
from ldm.tokenizer import WordTokenizer
from tests.test_tokenizer import clip_bpe_path

BENCHMARK = Path(__file__).resolve().parent.parent / "benchmarks" / "departures.py"


def load_benchmark():
    spec = importlib.util.spec_from_file_location("departures_benchmark", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_official_word_swap_stops_shifting_after_the_last_swapped_word():
    from ldm.clip_tokenizer import CLIPTokenizer

    departures = load_benchmark()
    clip = CLIPTokenizer.from_bpe_file(clip_bpe_path())
    source, target = "a zürich cat", "a dog cat"  # rows [bos, a, z, ü, rich, cat] and [bos, a, dog, cat]
    official = departures.official_replacement_map(clip, source, target)
    ours = replacement_map(clip, source, target)
    assert torch.equal(official[:, :3], ours[:, :3])  # up to the swapped word they agree
    assert torch.equal(official[2:5, 2], torch.ones(3))  # "dog" takes all of "zürich"'s tokens, 1/m = 1 each
    assert official[3, 3] == 1 and official[5, 3] == 0  # target "cat" at 3 takes source "ü" at 3
    assert ours[5, 3] == 1 and ours[:, 3].sum() == 1  # here it takes source "cat" at 5
    # with equal token counts the two agree everywhere
    assert torch.equal(departures.official_replacement_map(clip, "a red cat", "a blue cat"),
                       replacement_map(clip, "a red cat", "a blue cat"))


def test_the_official_refinement_maps_pads_to_the_same_position():
    departures = load_benchmark()
    tok = WordTokenizer(["a", "big", "red", "circle", "on", "blue", "background"])
    source, target = "a big red circle", "a circle"  # target row [bos, a, circle, eos]: pads from 4
    mapper, alphas = departures.OfficialPadsRefinement().maps(tok, source, [target])
    ours, ours_alphas = refinement_maps(tok, source, [target])
    assert mapper[0, 4] == 4 and alphas[0, 4] == 1  # target pad 4 takes source 4, "circle"
    assert ours[0, 4] == 6 and ours_alphas[0, 4] == 1  # here it takes source pad 6 (eos 5 + 1)
    assert torch.equal(mapper[0, :4], ours[0, :4]) and torch.equal(alphas[0, :4], ours_alphas[0, :4])
    assert torch.equal(mapper[0, 4:], torch.arange(4, tok.context_length))
