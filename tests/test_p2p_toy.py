"""Prompt-to-Prompt's semantics on the shipped toy model, judged by the analyzer (toyworld/edit_eval.py).

- the measures: box IoU reads layout, not shape; background change is 0 for the same image and the
  palette distance for a swapped background; the cases are one-word swaps; bad input is refused;
- word swaps, 20 cases each ("a <colour> <shape>", 50 steps, guidance 5, the first 20 of
  ``benchmarks/p2p_semantics.py``'s 30): a shape swap changes the shape in >= 80% of the cases and
  a colour swap the colour, each keeping the other named attribute; P2P's layout (box IoU for
  shapes, mask IoU for colours) is not worse than the baseline's (the target prompt sampled from the
  same z_T with no editor) by more than the cases' noise;
- local blending (10 colour swaps) keeps the background where P2P alone loses it;
- real images: null-text inversion of 4 unseen renders reconstructs them (the analyzer reads the
  render's attributes back) and takes a shape swap the analyzer confirms on >= 2.

What does NOT hold on the toy model, and so is not asserted: the issue's mean IoU >= 0.8 with the
source. Measured (30 cases, benchmarks/p2p_semantics.py): shape swap box IoU baseline 0.62, P2P
0.63; colour swap mask IoU baseline 0.60, P2P 0.57. Injecting everything does not get there either:
with the cross maps for every step and the self maps at every size for every step, the first 12
cases give shape box IoU 0.68 (defaults 0.70) and colour mask IoU 0.66 (defaults 0.55) while the
swaps mostly fail (58% and 25% success). In this small U-Net the maps do not carry the layout
(its 8x8 cross maps are nearly uniform); the words naming size and position do (see below).

Run time: ~2.5 minutes of CPU with OMP_NUM_THREADS=1 (each P2P edit ~1.2 s, each null-text inversion ~10 s).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from editing.prompt_to_prompt import Injection, LocalBlend
from ldm.pipeline import StableDiffusion
from toyworld.analyze import analyze, mask_iou
from toyworld.edit_eval import (BACKGROUND_KEPT, EditCase, EditScores, background_change, box_iou, dilate,
                                evaluate_edits, real_image_edits, swap_cases)
from toyworld.render import CROSS_ARM, render
from toyworld.train import TRAIN_SEED
from toyworld.world import BACKGROUNDS, Scene, parse_caption

CASES, BLEND_CASES, SEED = 20, 10, 0  # swap_cases(30, 0, ...) is what the benchmark runs; these are its first 20
UNSEEN_SEED, REAL_IMAGES = 31415, 4  # ToyDataset seed of the real images (training used TRAIN_SEED)


@pytest.fixture(scope="module")
def sd() -> StableDiffusion:
    torch.manual_seed(0)  # nothing here draws from the global generator; every z_T comes from a case's seed
    return StableDiffusion.from_folder("weights/toy")


def run(sd, attribute: str) -> dict[str, EditScores]:
    cases = swap_cases(CASES, SEED, attribute)
    return {"baseline": evaluate_edits(sd, cases, "baseline", progress=False),
            "p2p": evaluate_edits(sd, cases, "p2p", progress=False)}


@pytest.fixture(scope="module")
def shape_runs(sd) -> dict[str, EditScores]:
    return run(sd, "shape")


@pytest.fixture(scope="module")
def colour_runs(sd) -> dict[str, EditScores]:
    return run(sd, "colour")


# ---------------------------------------------------------------------------------- the measures
@pytest.mark.parametrize("size", ["big", "small"])
def test_box_iou_measures_layout_where_mask_iou_measures_shape(size):
    """Each shape against a square of the same centre and half extent, rendered: the pixel-mask IoU is
    the shapes' area ratio (circle pi/4, triangle 1/2, cross (8a - 4a^2)/4), less the one-pixel rim
    that pixelisation blurs (measured 0.01-0.035 below; bound 0.05); the extent-box IoU is ~1
    (measured 0.94-1.0: the analyzer's fits are within ~0.6 px; bound 0.9). So a shape swap that keeps
    place and size scores box IoU ~1 whatever the shapes, and mask IoU only their overlap."""
    scene = dict(colour="red", size=size, position="top left", background="gray", dx=0.7, dy=-1.3, dsize=0.4)
    square = analyze(render(Scene("square", **scene)))
    for shape, ratio in (("circle", math.pi / 4), ("triangle", 0.5), ("cross", 2 * CROSS_ARM - CROSS_ARM**2)):
        other = analyze(render(Scene(shape, **scene)))
        assert other.shape == shape
        assert abs(mask_iou(other.mask, square.mask) - ratio) < 0.05, (shape, mask_iou(other.mask, square.mask))
        assert box_iou(other, square) > 0.9, (shape, box_iou(other, square))


def test_background_change_is_zero_for_one_image_and_the_palette_distance_for_another_background():
    """Outside both masks (dilated by 2 px, past the anti-aliased rim) a render is exactly its
    background colour, so the change is mean |gray - blue| over the channels, (0.34 + 0.19 + 0.36) / 3,
    to float32 rounding; the same image against itself changes nothing."""
    images = [torch.from_numpy(render(Scene("circle", "red", "big", "center", b))).permute(2, 0, 1)  # (3, 64, 64)
              for b in ("gray", "blue")]
    a, b = (analyze(x.permute(1, 2, 0).numpy()) for x in images)
    expected = float(np.abs(np.subtract(BACKGROUNDS["gray"], BACKGROUNDS["blue"])).mean())
    assert abs(background_change(images[0], images[1], a, b) - expected) < 1e-6
    assert background_change(images[0], images[0], a, a) == 0.0
    assert expected > 10 * BACKGROUND_KEPT  # the nearest two backgrounds: a swapped background is never "kept"
    point = np.zeros((9, 9), dtype=bool)
    point[4, 4] = True
    assert dilate(point, 2).sum() == 25 and dilate(point, 2)[2:7, 2:7].all()  # a 5x5 square


@pytest.mark.parametrize("attribute", ["shape", "colour"])
def test_cases_swap_one_word_and_are_deterministic(attribute):
    cases = swap_cases(30, SEED, attribute)
    assert cases[:CASES] == swap_cases(CASES, SEED, attribute)  # the tests' cases are the benchmark's first
    for c in cases:
        s, t = c.source.split(), c.target.split()
        assert len(s) == len(t) == 3 and [i for i in range(3) if s[i] != t[i]] == [{"shape": 2, "colour": 1}[attribute]]
        assert parse_caption(c.source)[attribute] == c.old != c.new == parse_caption(c.target)[attribute]
    assert len({c.seed for c in cases}) == len(cases)


BAD_CASES = [
    (dict(n=0), "n must be an int >= 1, got 0"),
    (dict(seed=-1), "seed must be a non-negative int, got -1"),
    (dict(attribute="position"), "attribute 'position' cannot be swapped word for word"),
    (dict(attribute="size"), r"attribute 'size' is in omit \('size', 'position', 'background'\)"),
    (dict(omit=("shape",)), r"cannot omit \['shape'\]"),
]


@pytest.mark.parametrize("bad, message", BAD_CASES)
def test_bad_case_requests_are_refused(bad, message):
    kwargs = dict(n=2, seed=0, attribute="shape") | bad
    with pytest.raises(ValueError, match=message):
        swap_cases(**kwargs)


def test_bad_evaluations_are_refused_before_sampling(sd):
    cases = swap_cases(1, SEED, "shape")
    real = EditCase("a red circle", "a red square", "shape", "circle", "square", None)
    for kwargs, message in [
        (dict(cases=cases, method="sdedit"), r"method must be one of \('baseline', 'p2p'\), got 'sdedit'"),
        (dict(cases=[], method="p2p"), r"cases must be a non-empty list of EditCase, got \[\]"),
        (dict(cases=[real], method="p2p"), "every case needs a sampling seed"),
        (dict(cases=cases, method="baseline", blend_swap=True),
         r"the baseline samples without an editor; .*\['blend_swap'\]"),
        (dict(cases=cases, method="baseline", injection=Injection(cross_replace_steps=1.0)),
         r"editing options \['injection'\]"),
        (dict(cases=cases, method="p2p", blend=LocalBlend(["circle"])), "the blend words are each case's swapped words"),
        (dict(cases=cases, method="p2p", blend_options={"dilation": 0.25}), r"blend_options .* need blend_swap=True"),
        (dict(cases=cases, method="baseline", batch=0), "batch must be an int >= 1, got 0"),
    ]:
        with pytest.raises(ValueError, match=message):
            evaluate_edits(sd, progress=False, **kwargs)
    for kwargs, message in [
        (dict(inversion="exact"), r"inversion must be one of \('null-text', 'negative-prompt', 'ddim'\), got 'exact'"),
        (dict(n=0), "n must be an int >= 1, got 0"),
        (dict(attribute="position"), "attribute 'position' cannot be swapped"),
        (dict(blend=LocalBlend(["red"])), r"blend LocalBlend\(.*\): the swap is chosen here"),
    ]:
        with pytest.raises(ValueError, match=message):
            real_image_edits(sd, **(dict(n=1, seed=UNSEEN_SEED, attribute="shape", progress=False) | kwargs))


# ------------------------------------------------------------------------------------ word swaps
def not_worse(p2p: EditScores, baseline: EditScores, name: str) -> tuple[float, float]:
    """(mean per-case difference P2P - baseline of ``name``, its standard error): paired, same z_T per case."""
    d = p2p.values(name) - baseline.values(name)  # (n,)
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d)))


def test_shape_swap_changes_the_shape_and_keeps_the_colour(shape_runs):
    """The issue's bound: >= 80% of the shape swaps show the new shape in the source's colour.
    Measured on these 20: P2P 85% (17), baseline 95% (19); over 30: 83% and 97%. P2P's misses here:
    two in-between shapes the analyzer reads as another shape (square -> cross read as a circle,
    square -> circle read as a square) and one edit of a source that does not show its caption;
    over 30 also two colours that drift (purple -> green, orange -> yellow). The sources follow
    their captions (95%, 19 of 20) and the baseline's targets theirs (95%): the samples are sound."""
    p2p, baseline = shape_runs["p2p"].summary(), shape_runs["baseline"].summary()
    assert p2p["success"] >= 0.8, f"P2P shape swaps: {p2p}"
    assert p2p["source_ok"] >= 0.9 and baseline["success"] >= 0.8, f"baseline: {baseline}"


def test_shape_swap_keeps_the_layout_no_worse_than_the_baseline(shape_runs):
    """Layout of a shape swap = the extent boxes' IoU (a circle and a square of one extent have mask IoU
    pi/4, see above). Measured on these 20: baseline 0.658, P2P 0.620 (mean per-case difference -0.038,
    standard error 0.053); over 30: 0.618 and 0.630. NOT the issue's >= 0.8: on the toy model P2P does
    not pin the layout (module docstring); with size and position named in the captions both reach it
    (30 cases: baseline 0.800, P2P 0.807), the words doing what the maps do not. The bound: P2P is not
    below the baseline by more than two standard errors of the paired difference (a one-sided test at
    ~2.5%), so it fails if P2P moves objects systematically more than plain sampling does, and not
    for the case-to-case scatter."""
    mean, se = not_worse(shape_runs["p2p"], shape_runs["baseline"], "box_iou")
    assert mean >= -2 * se, f"box IoU P2P - baseline {mean:.3f} (s.e. {se:.3f})"
    # the pixel masks, for the record (circle vs square alone would give 0.785): baseline 0.411, P2P 0.422 here
    assert shape_runs["p2p"].summary()["mask_iou"] < shape_runs["p2p"].summary()["box_iou"]


def test_colour_swap_changes_the_colour_and_keeps_the_shape(colour_runs):
    """Measured on these 20: P2P 95% (19 of 20), baseline 95%; the one miss of both starts from a
    source that does not show its caption (over 30: 97% both). The bound 85% leaves room for two
    cases to flip."""
    p2p = colour_runs["p2p"].summary()
    assert p2p["success"] >= 0.85, f"P2P colour swaps: {p2p}"


def test_colour_swap_keeps_the_mask_no_worse_than_the_baseline(colour_runs):
    """The shape stays, so the pixel-mask IoU is the layout measure. Measured on these 20: baseline
    0.572, P2P 0.569 (mean per-case difference -0.004, s.e. 0.070); over 30: 0.597 and 0.572. NOT the
    issue's >= 0.8 (module docstring); with size and position named: 0.859 and 0.873 (30 cases).
    Bound as for shapes: two standard errors of the paired difference."""
    mean, se = not_worse(colour_runs["p2p"], colour_runs["baseline"], "mask_iou")
    assert mean >= -2 * se, f"mask IoU P2P - baseline {mean:.3f} (s.e. {se:.3f})"


def test_local_blending_keeps_the_background(sd, colour_runs):
    """Local blending of the swapped colour words, the first 10 colour swaps. Without it, 2 of these 10
    targets come out on another background (a mean |change| of 0.30 and 0.37 over their background
    pixels; mean over the 10: 0.069); with it every one stays within 0.0075 of the source's (mean
    0.003), below BACKGROUND_KEPT = 0.02 (the resampling noise of a flat colour is 0.001-0.008; the
    nearest two backgrounds differ by 0.297). Over 30 cases blending kept 29 (P2P alone 25): one
    blend mask covered the whole image. The bounds: >= 9 of 10 kept, the mean change under P2P's
    alone and under BACKGROUND_KEPT, and the swap still made in >= 8 of 10 (measured 9: the miss is
    a green object the model drew on blue, asked to turn blue while the blue background is kept)."""
    cases = swap_cases(CASES, SEED, "colour")[:BLEND_CASES]
    blend = evaluate_edits(sd, cases, "p2p", blend_swap=True, progress=False).summary()
    alone = colour_runs["p2p"].values("background_change")[:BLEND_CASES]  # the same cases without blending
    assert blend["background_kept"] >= 0.9, f"with blending: {blend}"
    assert blend["background_change"] < min(alone.mean(), BACKGROUND_KEPT), f"{blend} vs P2P alone {alone}"
    assert blend["success"] >= 0.8, f"with blending: {blend}"


# ----------------------------------------------------------------------------------- real images
def test_null_text_inverted_real_images_take_a_shape_swap(sd):
    """Four renders the model never saw (ToyDataset 31415, images 0-3), null-text inverted under their
    full true caption at guidance 5, then a shape swap (prompt_to_prompt's defaults on the inversion).
    Measured: every reconstruction (PSNR 29.0, 30.7, 34.7, 35.6 dB) shows all five attributes of its
    render; the analyzer confirms the edit (new shape; colour, size, position, background kept) on
    3 of these 4 (image 3, a small triangle asked to be a circle, comes out a big circle), but on only
    4 of the benchmark's 8 (images 4-7: the shape changes, the colour or size drifts). So the bound is
    2 of 4, not 3: the issue asks for an edit the analyzer confirms, and 3 of 4 is what these four
    happen to give, with no room for one case to flip.
    Not asserted, reported by benchmarks/p2p_semantics.py: colour swaps of null-text inversions are
    confirmed on 2 of 8, and the same edits from plain DDIM inversion (the empty prompt as null text,
    reconstructions at 25.4 dB, still analyzer-correct) on 8 of 8 (shape) and 7 of 8 (colour). The
    optimised null texts move far from the empty prompt's embedding (|u - u_empty| 39 at the last step,
    against |C - u_empty| = 45); they are tuned to the source's trajectory, and the target, guided
    against them, drifts: an orange square asked to turn blue comes out purple on blue."""
    assert UNSEEN_SEED != TRAIN_SEED
    edits = real_image_edits(sd, REAL_IMAGES, UNSEEN_SEED, "shape", "null-text", progress=False)
    assert all(e.score.source_ok for e in edits.edits), [e.score.source.attributes() for e in edits.edits]
    assert sum(e.score.success for e in edits.edits) >= 2, [(e.score.case.target, e.score.target.attributes())
                                                            for e in edits.edits]
    # the reconstruction is the image (tests/test_null_text.py bounds null-text's PSNR against DDIM's);
    # measured 32.5 dB on these four, the VAE alone reaches ~33.7
    assert edits.summary()["psnr"] > 28.0, edits.summary()
