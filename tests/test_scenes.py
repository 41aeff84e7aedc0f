"""The second toy world: multi-object scenes, structured backgrounds, the extended caption grammar,
and the analyzer that reads every object back (exactly on renders, robustly under perturbations)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from toyworld.analyze import mask_iou
from toyworld.render import render
from toyworld.scene_analysis import match_objects, read_scene, read_scenes, scene_matches
from toyworld.scenes import (HORIZON_RANGE, MIN_GAP, OBJECT_COUNTS, SCENE_BACKGROUNDS, SCENE_VOCABULARY,
                             STRIPE_PERIOD, MultiScene, SceneDataset, SceneObject, background_colours, describe,
                             parse_description, random_description, random_scene, render_background, render_scene,
                             with_object)
from toyworld.world import VOCABULARY, caption, parse_caption
from toyworld.world import random_scene as random_single_scene

from tests.test_toyworld import gaussian_blur


# ----------------------------------------------------------------------------------------------- scenes

def test_random_scenes_follow_the_rules():
    """1-3 objects in the stated proportions, every background, different shapes/colours/positions,
    nothing invisible, at least MIN_GAP px between objects (checked on the masks, independently of
    the sampler's own test)."""
    rng = np.random.default_rng(0)
    scenes = [random_scene(rng) for _ in range(600)]
    counts = np.bincount([len(s.objects) for s in scenes], minlength=4)[1:] / len(scenes)
    # 600 draws: the standard error of a proportion near 0.35 is 0.02; 4 standard errors.
    assert np.allclose(counts, list(OBJECT_COUNTS.values()), atol=0.08), counts
    assert {s.background for s in scenes} == set(SCENE_BACKGROUNDS)
    for s in scenes:
        for name in ("shape", "colour", "position"):
            values = [getattr(o, name) for o in s.objects]
            assert len(set(values)) == len(values)
        masks = [o.coverage() > 0 for o in s.objects]
        for i in range(len(masks)):
            for j in range(i + 1, len(masks)):
                # Pixels either object touches at all are farther apart than MIN_GAP - 2 (each
                # touched pixel lies within 1/2 px of its outline, plus one pixel of sampling).
                ya, xa = np.nonzero(masks[i])
                yb, xb = np.nonzero(masks[j])
                gap = np.sqrt(((xa[:, None] - xb[None]) ** 2 + (ya[:, None] - yb[None]) ** 2).min())
                assert gap > MIN_GAP - 2, (s, gap)


def test_fixed_attributes_are_kept_and_impossible_requests_refused():
    rng = np.random.default_rng(1)
    for _ in range(50):
        s = random_scene(rng, objects=[{"shape": "circle", "colour": "red"}, {"position": "bottom right"}],
                         background="striped")
        assert (s.objects[0].shape, s.objects[0].colour, s.objects[1].position, s.background) == \
            ("circle", "red", "bottom right", "striped")
        assert 0 <= s.phase <= STRIPE_PERIOD
    with pytest.raises(ValueError, match="different shapes"):
        random_scene(rng, objects=[{"shape": "circle"}, {"shape": "circle"}])
    with pytest.raises(ValueError, match="is not one of"):
        random_scene(rng, objects=[{"colour": "pink"}])
    with pytest.raises(ValueError, match="unknown object attributes"):
        random_scene(rng, objects=[{"texture": "rough"}])
    with pytest.raises(ValueError, match="n_objects"):
        random_scene(rng, n_objects=4)
    with pytest.raises(ValueError, match="could not place"):  # two big objects cannot share the centre row
        random_scene(rng, objects=[{"size": "big", "position": "center"}, {"size": "big", "position": "top left"}],
                     tries=20)
    with pytest.raises(ValueError, match="could not place"):  # a blue object on a blue background
        random_scene(rng, objects=[{"colour": "blue"}], background="blue", tries=20)


def test_scene_validation():
    a = SceneObject("circle", "red", "small", "top left")
    b = SceneObject("square", "green", "small", "bottom right")
    MultiScene((a, b), "white")
    with pytest.raises(ValueError, match="different colours"):
        MultiScene((a, SceneObject("square", "red", "small", "bottom right")), "white")
    with pytest.raises(ValueError, match="closer than"):
        MultiScene((SceneObject("square", "red", "big", "top left"), SceneObject("circle", "green", "big", "top right")),
                   "white")
    with pytest.raises(ValueError, match="invisible"):
        MultiScene((SceneObject("circle", "blue", "small", "center"),), "blue")
    with pytest.raises(ValueError, match="phase"):
        MultiScene((a,), "horizon", phase=60.0)
    with pytest.raises(ValueError, match="1 to 3 objects"):
        MultiScene((), "white")
    with pytest.raises(ValueError, match="is not one of"):
        SceneObject("hexagon", "red", "small", "center")
    assert with_object(MultiScene((a, b), "white"), 0, colour="blue").objects[0].colour == "blue"


# ----------------------------------------------------------------------------------------------- grammar

def test_every_caption_of_the_first_world_parses_the_same():
    """A first-world caption is a caption of this grammar, naming the same attributes."""
    rng = np.random.default_rng(2)
    for i in range(200):
        scene = random_single_scene(rng)
        omit = [a for a in ("size", "colour", "position", "background") if rng.random() < 0.4]
        text = caption(scene, omit)
        old = parse_caption(text)
        new = parse_description(text)
        assert new["objects"] == [{k: v for k, v in old.items() if k != "background"}]
        assert new.get("background") == old.get("background")
    assert set(VOCABULARY) <= set(SCENE_VOCABULARY) and SCENE_VOCABULARY[:len(VOCABULARY)] == VOCABULARY


def test_descriptions_round_trip():
    rng = np.random.default_rng(3)
    for _ in range(300):
        scene = random_scene(rng)
        text = random_description(scene, rng)
        parsed = parse_description(text)
        assert set(text.split()) <= set(SCENE_VOCABULARY)
        assert len(parsed["objects"]) == len(scene.objects)
        for named in parsed["objects"]:
            obj = next(o for o in scene.objects if o.shape == named["shape"])
            assert all(obj.attributes()[k] == v for k, v in named.items())
        if "background" in parsed:
            assert parsed["background"] == scene.background
    full = describe(scene)
    assert parse_description(full)["objects"] == [o.attributes() for o in scene.objects]


def test_object_order_in_captions_is_random():
    """Training captions list the objects in a random order, so order says nothing about place."""
    rng = np.random.default_rng(4)
    scene = random_scene(rng, n_objects=2)
    firsts = {parse_description(random_description(scene, rng))["objects"][0]["shape"] for _ in range(40)}
    assert firsts == {o.shape for o in scene.objects}


@pytest.mark.parametrize("text, match", [
    ("a red circle and a blue circle", "names one shape twice"),
    ("a red circle and a square and a cross and a triangle", "at most 3"),
    ("a red circle on a pink background", "does not end with"),
    ("a red circle and", "is not 'a"),
    ("red circle", "is not 'a"),
])
def test_bad_captions_are_refused(text, match):
    with pytest.raises(ValueError, match=match):
        parse_description(text)


# ----------------------------------------------------------------------------------------------- rendering

def test_structured_backgrounds_are_anti_aliased_with_the_stated_geometry():
    """Stripes: the dark band of [phase, phase + P/2) covers half the image on average; the horizon:
    every row above the line is sky, every row below ground, the line's row a blend."""
    for phase in (0.0, 3.3, 8.0, 12.7):
        image = render_background("striped", phase)
        dark, light = map(np.asarray, background_colours("striped"))
        share = ((image - light) @ (dark - light) / ((dark - light) @ (dark - light))).mean()
        assert share == pytest.approx(0.5, abs=1e-3)
        x = int(np.floor(phase + STRIPE_PERIOD / 4)) % 64  # a pixel column in the middle of a dark band
        assert np.allclose(image[:, x], dark, atol=1e-6)
    sky, ground = map(np.asarray, background_colours("horizon"))
    image = render_background("horizon", 30.25)
    assert np.allclose(image[:29], sky) and np.allclose(image[31:], ground)
    assert not np.allclose(image[30], sky) and not np.allclose(image[30], ground)


def test_a_one_object_scene_renders_like_the_first_world():
    rng = np.random.default_rng(5)
    for _ in range(30):
        scene = random_single_scene(rng)
        assert np.array_equal(render_scene(MultiScene.from_scene(scene)), render(scene))


def test_scene_dataset_is_deterministic_and_differs_from_the_first_worlds_stream():
    a, b = SceneDataset(3), SceneDataset(3)
    assert [a.scene_and_caption(i) for i in range(5)] == [b.scene_and_caption(i) for i in range(5)]
    images, captions, scenes = a.batch(range(4))
    assert images.shape == (4, 3, 64, 64) and images.min() >= -1 and images.max() <= 1
    assert SceneDataset(4).scene_and_caption(0) != a.scene_and_caption(0)


# ----------------------------------------------------------------------------------------------- analyzer

@pytest.fixture(scope="module")
def rendered():
    """400 fresh renders of a seed no model trains on."""
    images, captions, scenes = SceneDataset(12345).batch(range(400))
    return images, captions, scenes


def _errors(readings, scenes):
    """(background errors, count errors, wrong objects, object IoUs with the renderer's masks, phase errors)."""
    bg = count = wrong = 0
    ious, phases = [], []
    for r, s in zip(readings, scenes):
        bg += r.background != s.background
        count += len(r.objects) != len(s.objects)
        if r.background == s.background == "striped":
            d = abs(r.phase - s.phase) % STRIPE_PERIOD
            phases.append(min(d, STRIPE_PERIOD - d))
        elif r.background == s.background == "horizon":
            phases.append(abs(r.phase - s.phase))
        for o, m in zip(s.objects, match_objects(r, [o.attributes() for o in s.objects])):
            if m is None or m.attributes() != o.attributes():
                wrong += 1
            else:
                ious.append(mask_iou(m.mask, o.coverage() > 0.5))
    return bg, count, wrong, np.array(ious), np.array(phases)


def test_analyzer_reads_every_object_of_renders_back(rendered):
    """Measured on these 400 renders (796 objects): every background, count, and attribute right;
    masks IoU >= 0.99 with the renderer's coverage > 1/2 (pixels within float rounding of 1/2 may
    flip: one pixel is ~1% of the smallest object); phases within the 1/4-px search grid."""
    images, captions, scenes = rendered
    readings = read_scenes(images)
    bg, count, wrong, ious, phases = _errors(readings, scenes)
    assert (bg, count, wrong) == (0, 0, 0)
    assert ious.min() >= 0.98
    assert phases.max() <= 0.25
    assert all(scene_matches(r, c)["all"] for r, c in zip(readings, captions))


def _shifted(scenes, amplitude, generator):
    """Renders whose every colour (objects and background bands) is off by up to ``amplitude``."""
    from toyworld.scene_analysis import _first_coverage
    from toyworld.world import COLOURS

    out = []
    for s in scenes:
        def jitter(c):
            return np.clip(np.asarray(c) + (torch.rand(3, generator=generator).numpy() * 2 - 1) * amplitude, 0, 1)
        colours = [jitter(c) for c in background_colours(s.background)]
        if len(colours) == 1:
            image = np.broadcast_to(colours[0], (64, 64, 3)).copy()
        else:
            a = _first_coverage(s.background, s.phase)[..., None]
            image = a * colours[0] + (1 - a) * colours[1]
        for o in s.objects:
            alpha = o.coverage()[..., None]
            image = (1 - alpha) * image + alpha * jitter(COLOURS[o.colour])
        out.append(torch.from_numpy(image.transpose(2, 0, 1)).float())
    return torch.stack(out)


PERTURBATIONS = {
    # Measured on 300 renders (599 objects): every background, count and attribute right for noise,
    # colour shift and a 1 px blur; mean IoU 0.983 / 1.000 / 0.974. A 1.5 px blur: 3 objects wrong.
    "noise 0.05": lambda images, scenes, g: (images + 0.05 * torch.randn(images.shape, generator=g)).clamp(0, 1),
    "colour +-0.1": lambda images, scenes, g: _shifted(scenes, 0.1, g),
    "blur 1px": lambda images, scenes, g: gaussian_blur(images, 1.0),
}


@pytest.mark.parametrize("name", PERTURBATIONS)
def test_analyzer_is_robust_to_generator_like_perturbations(rendered, name):
    """Bounds: 98% of objects right, counts and backgrounds right in 98% of images, mean IoU 0.93
    (a little below the measurements above, so rare failures do not make the test flaky; far
    above what a broken reading gives)."""
    images, captions, scenes = rendered
    images, scenes = images[:200], scenes[:200]
    readings = read_scenes(PERTURBATIONS[name](images, scenes, torch.Generator().manual_seed(0)))
    bg, count, wrong, ious, _ = _errors(readings, scenes)
    n_objects = sum(len(s.objects) for s in scenes)
    print(f"{name}: background errors {bg}, count errors {count}, wrong objects {wrong}/{n_objects}, "
          f"IoU mean {ious.mean():.3f}")
    assert bg <= 4 and count <= 4 and wrong <= 0.02 * n_objects
    assert ious.mean() >= 0.93


def test_match_objects_pairs_by_attributes_and_reports_missing_ones():
    scene = MultiScene((SceneObject("circle", "red", "small", "top left"),
                        SceneObject("square", "green", "big", "bottom right")), "gray")
    reading = read_scene(render_scene(scene))
    m = match_objects(reading, [{"shape": "square"}, {"colour": "red"}, {"shape": "cross"}])
    assert m[0].shape == "square" and m[1].colour == "red" and m[2] is None
    verdict = scene_matches(reading, "a red circle and a big green square on a gray background")
    assert verdict["all"] and verdict["count"] and verdict["background"]
    verdict = scene_matches(reading, "a blue circle and a big green square and a cross")
    assert not verdict["all"] and not verdict["count"]
    assert verdict["objects"][0] == {"colour": False, "shape": True}
    assert verdict["objects"][2] == {"shape": False}


def test_an_empty_background_holds_no_object():
    for name in SCENE_BACKGROUNDS:
        phase = 5.0 if name == "striped" else 31.0 if name == "horizon" else 0.0
        reading = read_scene(render_background(name, phase).astype(np.float64))
        assert reading.background == name and reading.objects == ()
        assert HORIZON_RANGE[0] - 2 <= reading.phase <= HORIZON_RANGE[1] + 2 or name != "horizon"


# ----------------------------------------------------------------------------------------------- diagnostics

def test_word_map_concentration_is_one_for_a_flat_map_and_the_inverse_share_on_the_object():
    """attention_eval.measure_word: a flat map puts |O|/|image| of its mass on O (concentration 1);
    a map that is constant on O's cells and 0 elsewhere puts all of it there (|image| / |O|)."""
    from toyworld.attention_eval import measure_word, word_tokens

    own = np.zeros((64, 64), dtype=bool)
    own[:32, :32] = True  # the top-left quarter: 16 of the 8x8 map's 64 cells
    other = np.zeros_like(own)
    other[32:, 32:] = True
    c, o, iou = measure_word(torch.ones(8, 8), own, other)
    assert c == pytest.approx(1.0) and o is False  # equal mass on both quarters: not "more"
    peaked = torch.zeros(8, 8)
    peaked[:4, :4] = 1.0
    c, o, iou = measure_word(peaked, own, other)
    assert 3.0 < c <= 4.0 and o is True and iou > 0.7  # bilinear upsampling spreads the edge a little
    assert word_tokens("a red circle and a small blue square") == [(0, 2, "red", "colour"), (0, 3, "circle", "shape"),
                                                                   (1, 7, "blue", "colour"), (1, 8, "square", "shape")]


def test_clip_loss_is_the_symmetric_cross_entropy():
    """CLIP's loss (Radford et al. 2021, Figure 3): for logits that single out the diagonal by a
    margin m, each row's and column's cross entropy is log(1 + (N - 1) e^-m)."""
    from toyworld.clip_pretrain import clip_loss, retrieval_accuracy

    n, m = 5, 2.0
    logits = torch.full((n, n), 0.0) + m * torch.eye(n)
    assert clip_loss(logits).item() == pytest.approx(np.log(1 + (n - 1) * np.exp(-m)), rel=1e-6)
    skew = torch.randn(n, n, generator=torch.Generator().manual_seed(0))
    expected = (torch.nn.functional.cross_entropy(skew, torch.arange(n))
                + torch.nn.functional.cross_entropy(skew.T, torch.arange(n))) / 2
    assert clip_loss(skew).item() == pytest.approx(expected.item())
    assert retrieval_accuracy(logits) == 1.0
    with pytest.raises(ValueError, match="square"):
        clip_loss(torch.zeros(2, 3))


def test_the_design_study_shows_the_table_of_its_records():
    """Every figure of toyworld/STUDY.md's comparison table comes from the records beside it."""
    from toyworld.study import RECORDS, study_columns, table

    assert table(study_columns()) in (RECORDS.parent / "STUDY.md").read_text()
