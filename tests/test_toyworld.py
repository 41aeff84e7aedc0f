"""The toy world: the SDF renderer's anti-aliasing, the dataset, the caption grammar, and the
analyzer that reads scenes back (exactly on renders, robustly under generator-like perturbations)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from toyworld.analyze import (AREA_PER_R2, MIN_CONTRAST, Analysis, analyze, analyze_batch, connected_components,
                              fill_holes, largest_component, mask_iou, matches)
from toyworld.render import CROSS_ARM, ToyDataset, coverage, render, render_batch, signed_distance, to_tensor
from toyworld.world import (ATTRIBUTES, BACKGROUNDS, COLOURS, OMIT_PROBABILITY, SHAPES, Scene, caption,
                            parse_caption, random_scene, with_attribute)

# Perimeter of each shape of half extent r, over r: circle 2 pi; square 8; triangle: base 2 plus two
# slanted sides sqrt(1^2 + 2^2) each; cross: 4 arm ends 2a wide and 8 arm sides r - a long, 8 in all.
PERIMETER_PER_R = {"circle": 2 * np.pi, "square": 8.0, "triangle": 2 + 2 * np.sqrt(5.0), "cross": 8.0}


# ----------------------------------------------------------------------------------------------- renderer

def test_coverage_is_a_fraction_and_sharp_away_from_the_outline():
    """coverage = clip(1/2 - d, 0, 1): in [0, 1], 1 deeper than 1/2 px inside, 0 beyond 1/2 px outside."""
    for shape in SHAPES:
        d = signed_distance(shape, 30.3, 33.7, 11.2)
        a = coverage(shape, 30.3, 33.7, 11.2)
        assert a.min() >= 0 and a.max() <= 1
        assert (a[d <= -0.5] == 1).all() and (a[d >= 0.5] == 0).all()
        assert ((a > 0) & (a < 1)).any()  # there is a ramp


@pytest.mark.parametrize("shape", SHAPES)
def test_antialiased_area_matches_the_analytic_area(shape):
    """Sum of coverage ~ the shape's exact area k r^2 (AREA_PER_R2: pi, 4, 2, 8a - 4a^2).

    Along one pixel row crossed by an axis-parallel edge the 1-px ramp sums to the edge's exact
    position (one pixel centre lies in the ramp, and it holds the fractional part), so such edges
    are exact. Errors come from the outline: a slanted edge puts the ramp's two kinks inside pixels
    (each pixel's midpoint value then misses its integral by at most 1/8), curvature and corners
    bias the ramp (a circle: the ring's coverage integrates to pi r^2 + pi/12, see below), and the
    triangle's apex, where the max of the edge lines underestimates the distance. All scale with the
    outline's length P, not the area. Measured over 2000 random placements with r in [4, 20]:
    |error| / P <= 0.045 (triangle, its apex), 0.026 (circle, square), 0.019 (cross). Bound:
    0.06 P, above every measurement; a half-pixel shift of the outline would cost 0.5 P.
    """
    rng = np.random.default_rng(7)
    for _ in range(300):
        r = rng.uniform(4, 20)
        cx, cy = rng.uniform(24, 40, size=2)
        error = coverage(shape, cx, cy, r).sum() - AREA_PER_R2[shape] * r**2
        assert abs(error) <= 0.06 * PERIMETER_PER_R[shape] * r, (shape, r, cx, cy, error)


def test_cross_area_formula_is_two_arms_minus_their_overlap():
    """The cross's AREA_PER_R2 matches CROSS_ARM: two 2r x 2a boxes overlapping in a 2a x 2a square."""
    a = CROSS_ARM
    assert AREA_PER_R2["cross"] == pytest.approx(2 * (2 * 2 * a) - (2 * a) ** 2)


def test_circle_coverage_exceeds_the_area_by_pi_over_12_on_average():
    """For a circle the ring |rho - r| < 1/2 has coverage 1/2 - (rho - r); integrating,

        pi (r - 1/2)^2 + int_{-1/2}^{1/2} (1/2 - u) 2 pi (r + u) du = pi r^2 + pi/4 - pi/6 = pi r^2 + pi/12.

    Averaged over random sub-pixel centres the pixel sampling error has mean zero, so the mean of
    (sum of coverage - pi r^2) is pi/12 = 0.262. Per placement the error's standard deviation is 0.21
    (measured), so the mean of 400 has standard error 0.011; tolerance 0.05 (4.5 standard errors)."""
    rng = np.random.default_rng(3)
    errors = [coverage("circle", *rng.uniform(28, 36, size=2), r).sum() - np.pi * r**2
              for r in rng.uniform(6, 16, size=400)]
    assert np.mean(errors) == pytest.approx(np.pi / 12, abs=0.05)


def test_render_blends_background_and_colour():
    """Every pixel is (1 - a) background + a colour with the coverage a in [0, 1], channel by channel."""
    rng = np.random.default_rng(11)
    for _ in range(50):
        scene = random_scene(rng)
        image = render(scene)
        assert image.shape == (64, 64, 3) and image.dtype == np.float32
        alpha = coverage(scene.shape, *scene.centre, scene.half_size)[..., None]  # (64, 64, 1)
        bg, fg = np.asarray(BACKGROUNDS[scene.background]), np.asarray(COLOURS[scene.colour])
        low, high = np.minimum(bg, fg), np.maximum(bg, fg)
        assert (image >= low - 1e-6).all() and (image <= high + 1e-6).all()  # float32 rounding
        np.testing.assert_allclose(image, (1 - alpha) * bg + alpha * fg, atol=1e-6)


def test_dataset_is_deterministic_per_seed_and_index():
    a, b, other = ToyDataset(seed=5), ToyDataset(seed=5), ToyDataset(seed=6)
    images_a, captions_a, scenes_a = a.batch(range(40))
    images_b, captions_b, scenes_b = b.batch(range(40))
    assert torch.equal(images_a, images_b) and captions_a == captions_b and scenes_a == scenes_b
    image, text, scene = a[17]  # one item alone equals the same item inside a batch
    assert torch.equal(image, images_a[17]) and text == captions_a[17] and scene == scenes_a[17]
    assert images_a.shape == (40, 3, 64, 64) and images_a.min() >= -1 and images_a.max() <= 1
    _, _, scenes_other = other.batch(range(40))
    assert sum(s != t for s, t in zip(scenes_a, scenes_other)) == 40  # continuous jitter: all differ
    first, *_ = next(ToyDataset(seed=5, length=3).batches(2))
    assert torch.equal(first, images_a[:2])


def test_caption_round_trip():
    """parse_caption(caption(scene, omit)) names exactly the attributes that were not omitted."""
    rng = np.random.default_rng(2)
    optional = tuple(OMIT_PROBABILITY)
    omissions = [set(c) for k in range(len(optional) + 1) for c in itertools.combinations(optional, k)]
    for i in range(800):
        scene = random_scene(rng)
        omit = omissions[i % len(omissions)]
        named = parse_caption(caption(scene, omit))
        assert named == {k: v for k, v in scene.attributes().items() if k not in omit}, (scene, omit)
        assert parse_caption(caption(scene, omit).upper()) == named  # case-insensitive


def test_renderer_and_grammar_reject_bad_input():
    ok = dict(shape="circle", colour="red", size="big", position="center", background="white")
    with pytest.raises(ValueError, match="shape 'hexagon' is not one of"):
        Scene(**{**ok, "shape": "hexagon"})
    with pytest.raises(ValueError, match="colour 'pink' is not one of"):
        Scene(**{**ok, "colour": "pink"})
    with pytest.raises(ValueError, match="blue object on a blue background would be invisible"):
        Scene(**{**ok, "colour": "blue", "background": "blue"})
    with pytest.raises(ValueError, match="exceeds"):
        Scene(**ok, dx=2.5)
    with pytest.raises(ValueError, match="exceeds"):
        Scene(**ok, dsize=-1.5)
    with pytest.raises(ValueError, match="unknown shape 'star'"):
        signed_distance("star", 32, 32, 8)
    with pytest.raises(ValueError, match="unknown attributes"):
        random_scene(np.random.default_rng(0), hue="red")
    with pytest.raises(ValueError, match="cannot omit"):
        caption(Scene(**ok), omit=("shape",))
    with pytest.raises(ValueError, match="expected a Scene"):
        render("a red circle")
    with pytest.raises(ValueError, match="expected images"):
        to_tensor(np.zeros((2, 3, 64, 64), dtype=np.float32))
    with pytest.raises(ValueError, match="seed must be"):
        ToyDataset(seed=-1)
    with pytest.raises(ValueError, match="background 'red' is not one of"):
        with_attribute(Scene(**ok), background="red")
    bad_captions = {
        "a red": "is not 'a",  # no shape
        "red circle": "is not 'a",  # no article
        "a big big circle": "unexpected word 'big'",
        "a circle on a pink background": "does not end with",
        "a circle on a white background please": "does not end with",
        "a circle at the middle": "is not 'a",
        "a shiny circle": "unexpected word 'shiny'",
    }
    for text, message in bad_captions.items():
        with pytest.raises(ValueError, match=message):
            parse_caption(text)
    with pytest.raises(ValueError, match="caption must be a str"):
        parse_caption(None)


# ----------------------------------------------------------------------------------------------- analyzer

def accuracies(results: list[Analysis], scenes: list[Scene]) -> dict[str, float]:
    return {name: float(np.mean([getattr(r, name) == getattr(s, name) for r, s in zip(results, scenes)]))
            for name in ATTRIBUTES}


def true_mask(scene: Scene) -> np.ndarray:
    """The pixels the renderer covers by more than half."""
    return coverage(scene.shape, *scene.centre, scene.half_size) > 0.5


@pytest.fixture(scope="module")
def rendered():
    """1000 fresh renders (a seed the model never trains on) and their scenes."""
    images, _, scenes = ToyDataset(seed=12345).batch(range(1000))
    return images, scenes


def test_analyzer_reads_renders_back(rendered):
    """Issue requirement: >= 98% on each attribute. Measured: 100% on all five, every mask exact.

    On a clean render the border median is the background exactly and the interior median the
    colour exactly, so t(p) of the projection *is* the coverage and the mask is coverage > 1/2, up to
    float32 rounding of pixels within ~1e-7 of 1/2. Measured: IoU 1.0 on all 1000; the bound 0.98
    allows such a flipped pixel (one pixel is 1% of the smallest object, 98 px)."""
    images, scenes = rendered
    results = analyze_batch(images)
    acc = accuracies(results, scenes)
    print("clean accuracies:", acc)
    assert all(a >= 0.98 for a in acc.values()), acc
    ious = np.array([mask_iou(r.mask, true_mask(s)) for r, s in zip(results, scenes)])
    print(f"clean mask IoU: min {ious.min():.3f} mean {ious.mean():.4f}")
    assert ious.min() >= 0.98
    # The moment fit recovers the object's geometry: half extent and centre to within 1 px
    # (measured 0.57 and 0.47 px; the thin triangle's apex makes its pixel count coarsest).
    fit = [(abs(r.half_extent - s.half_size), *np.abs(np.subtract(r.centre, s.centre))) for r, s in zip(results, scenes)]
    assert np.max(fit) <= 1.0


def test_analyzer_accepts_an_array_or_a_tensor_alike():
    """render's (64, 64, 3) array and the pipeline's layout (3, 64, 64), both in [0, 1], give the same analysis."""
    rng = np.random.default_rng(4)
    for _ in range(10):
        image = render(random_scene(rng))
        a, b = analyze(image), analyze(to_tensor(image[None])[0])
        assert a.attributes() == b.attributes() and np.array_equal(a.mask, b.mask)
        assert a.mask.dtype == bool and a.mask.shape == (64, 64) and not a.mask.flags.writeable


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """A separable Gaussian blur of (B, 3, 64, 64) images; edges replicated so the border stays background."""
    offsets = torch.arange(-3, 4, dtype=images.dtype)  # 3 sigma at sigma = 1
    kernel = torch.exp(-offsets**2 / (2 * sigma**2))
    kernel = kernel / kernel.sum()  # (7,)
    x = images.reshape(-1, 1, 64, 64)  # (3B, 1, 64, 64)
    x = F.conv2d(F.pad(x, (3, 3, 0, 0), mode="replicate"), kernel.view(1, 1, 1, 7))  # along x
    x = F.conv2d(F.pad(x, (0, 0, 3, 3), mode="replicate"), kernel.view(1, 1, 7, 1))  # along y
    return x.reshape(images.shape)  # (B, 3, 64, 64)


def colour_shifted(scenes: list[Scene], amplitude: float, generator: torch.Generator) -> torch.Tensor:
    """Renders whose object and background colours are each off by up to ``amplitude`` per channel."""
    out = []
    for scene in scenes:
        alpha = torch.from_numpy(coverage(scene.shape, *scene.centre, scene.half_size)).float()  # (64, 64)
        fg, bg = (torch.tensor(palette) + (torch.rand(3, generator=generator) * 2 - 1) * amplitude
                  for palette in (COLOURS[scene.colour], BACKGROUNDS[scene.background]))  # (3,) each
        rgb = (1 - alpha) * bg[:, None, None] + alpha * fg[:, None, None]  # (3, 64, 64)
        out.append(rgb.clamp(0, 1))
    return torch.stack(out)  # (B, 3, 64, 64)


PERTURBATIONS = {
    # Measured on all 1000 renders of the fixture: 100% on every attribute for each perturbation
    # (and still 99.7% shape, 100% otherwise, under a 1.5 px blur; 100% with all three at once).
    # Mean mask IoU with the clean mask: 0.986 (noise), 1.000 (colour shift), 0.977 (blur).
    "noise 0.05": lambda images, scenes, g: (images + 0.05 * torch.randn(images.shape, generator=g)).clamp(0, 1),
    "colour +-0.1": lambda images, scenes, g: colour_shifted(scenes, 0.1, g),
    "blur 1px": lambda images, scenes, g: gaussian_blur(images, 1.0),
}


@pytest.mark.parametrize("name", PERTURBATIONS)
def test_analyzer_is_robust_to_generator_like_perturbations(rendered, name):
    """Noise (sigma 0.05 in [0, 1] units), colours off by up to 0.1 per channel, a 1 px blur.

    Why it holds: the medians ignore noise; every pair of palette colours is more than twice as far
    apart as a +-0.1 per-channel shift can move one toward the other (worst pair, yellow/orange:
    half-distance 0.137 vs a shift's largest projection 0.121); a blur keeps the 1/2 level set of a
    straight edge and only rounds corners, and area and centroid hardly move. Bounds: 97% per
    attribute and mean IoU 0.93, a little below the measurements (100%, >= 0.977) so that rare
    failure modes seen at a stronger blur do not make the test flaky, yet far above the benchmarks'
    90% and any real regression."""
    images, scenes = rendered
    images, scenes = images[:400], scenes[:400]
    perturbed = PERTURBATIONS[name](images, scenes, torch.Generator().manual_seed(0))
    results = analyze_batch(perturbed)
    acc = accuracies(results, scenes)
    ious = np.array([mask_iou(r.mask, true_mask(s)) for r, s in zip(results, scenes)])
    print(f"{name}: accuracies {acc}, mask IoU mean {ious.mean():.3f} min {ious.min():.3f}")
    assert all(a >= 0.97 for a in acc.values()), acc
    assert ious.mean() >= 0.93


def test_matches_checks_what_a_caption_names():
    rng = np.random.default_rng(9)
    for i in range(40):
        scene = random_scene(rng)
        analysis = analyze(render(scene))
        named = parse_caption(caption(scene, omit=("size",) if i % 2 else ()))
        assert matches(analysis, named) == {k: True for k in named}
        other = next(c for c in COLOURS if c not in (scene.colour, scene.background))
        wrong = parse_caption(caption(with_attribute(scene, colour=other)))
        assert matches(analysis, wrong) == {k: k != "colour" for k in wrong}


@pytest.mark.parametrize("background", BACKGROUNDS)
def test_no_object_is_reported_as_not_found(background):
    """A plain image, and a plain image with sigma 0.05 noise (its 99th-percentile distance, about
    0.05 * 3.4 = 0.17, stays under MIN_CONTRAST = 0.186; specks stay under MIN_PIXELS): found is
    False, the object's attributes None, the mask empty; the background is still named."""
    assert 0.17 < MIN_CONTRAST < 0.19  # half of purple-on-gray's distance, 0.372
    plain = np.broadcast_to(np.asarray(BACKGROUNDS[background]), (64, 64, 3)).copy()
    noisy = np.clip(plain + np.random.default_rng(1).normal(0, 0.05, plain.shape), 0, 1)
    specks = plain.copy()  # 100 isolated yellow pixels: contrast enough, but no piece of MIN_PIXELS
    specks[8:56:5, 8:56:5] = COLOURS["yellow"]
    assert analyze(specks).contrast > MIN_CONTRAST  # so the specks are rejected by their size
    for image in (plain, noisy, specks):
        analysis = analyze(image)
        assert not analysis.found and analysis.background == background
        assert (analysis.colour, analysis.shape, analysis.size, analysis.position) == (None,) * 4
        assert analysis.mask.shape == (64, 64) and not analysis.mask.any() and analysis.pixels == 0
        assert matches(analysis, {"shape": "circle", "background": background}) == {"shape": False, "background": True}


def test_an_object_of_no_one_colour_is_not_found():
    """Half white, half black on gray: the far pixels' median is gray again, so there is no colour
    to project on and the analyzer reports no object rather than dividing by almost nothing."""
    image = np.broadcast_to(np.asarray(BACKGROUNDS["gray"]), (64, 64, 3)).copy()
    image[22:42, 22:32], image[22:42, 32:42] = BACKGROUNDS["white"], BACKGROUNDS["black"]
    analysis = analyze(image)
    assert analysis.contrast > MIN_CONTRAST and not analysis.found and analysis.background == "gray"


def test_components_match_a_flood_fill():
    """The vectorised labelling partitions random masks exactly as a plain breadth-first flood fill."""
    rng = np.random.default_rng(0)
    for density in (0.3, 0.55, 0.7):
        mask = rng.random((24, 24)) < density
        labels = connected_components(mask)
        seen = np.zeros_like(mask)
        for start in zip(*np.nonzero(mask)):
            if seen[start]:
                continue
            component, frontier = [], [start]
            seen[start] = True
            while frontier:
                i, j = frontier.pop()
                component.append((i, j))
                for ni, nj in ((i + 1, j), (i - 1, j), (i, j + 1), (i, j - 1)):
                    if 0 <= ni < 24 and 0 <= nj < 24 and mask[ni, nj] and not seen[ni, nj]:
                        seen[ni, nj] = True
                        frontier.append((ni, nj))
            rows, cols = zip(*component)
            component_labels = labels[rows, cols]
            assert (component_labels == min(i * 24 + j for i, j in component)).all()
        assert (labels[~mask] == -1).all()


def test_largest_component_and_hole_filling():
    mask = np.zeros((16, 16), dtype=bool)
    mask[2:10, 2:10] = True  # a 64 px square with a hole ...
    mask[5:7, 5:7] = False
    mask[12:14, 12:14] = True  # ... and a 4 px speck
    big = largest_component(mask)
    assert big.sum() == 60 and not big[12:14, 12:14].any()
    filled = fill_holes(big)
    assert filled.sum() == 64 and filled[5:7, 5:7].all()
    assert not largest_component(np.zeros((8, 8), dtype=bool)).any()


def test_analyzer_rejects_bad_input():
    image = render(Scene("circle", "red", "big", "center", "white"))
    with pytest.raises(ValueError, match=r"numpy array \(64, 64, 3\) in \[0, 1\], got float32 \(3, 64, 64\)"):
        analyze(image.transpose(2, 0, 1).copy())
    with pytest.raises(ValueError, match=r"numpy array \(64, 64, 3\).*got int64"):
        analyze((image * 255).astype(np.int64))
    with pytest.raises(ValueError, match=r"torch tensor \(3, 64, 64\) in \[0, 1\], got torch.float32 \(64, 64, 3\)"):
        analyze(torch.from_numpy(image))
    with pytest.raises(ValueError, match=r"array has values in \[.*\], expected \[0.0, 1.0\]"):
        analyze(image * 255)
    with pytest.raises(ValueError, match="NaN or inf"):
        analyze(np.full((64, 64, 3), np.nan, dtype=np.float32))
    with pytest.raises(ValueError, match="got list"):
        analyze(image.tolist())
    with pytest.raises(ValueError, match=r"\(B, 3, 64, 64\) in \[0, 1\], got torch.float32 \(3, 64, 64\)"):
        analyze_batch(render_batch([Scene("circle", "red", "big", "center", "white")])[0])
    with pytest.raises(ValueError, match=r"batch has values in \[.*\], expected \[0.0, 1.0\]"):
        analyze_batch(render_batch([Scene("circle", "red", "big", "center", "white")]) * 2 - 1)  # the VAE's range
    with pytest.raises(ValueError, match="two bool masks of one shape"):
        mask_iou(np.zeros((4, 4), dtype=bool), np.zeros((4, 5), dtype=bool))
    analysis = analyze(image)
    with pytest.raises(ValueError, match="unknown attribute 'hue'"):
        matches(analysis, {"hue": "red"})
    with pytest.raises(ValueError, match="shape 'star' is not one of"):
        matches(analysis, {"shape": "star"})
    with pytest.raises(ValueError, match="expected an Analysis"):
        matches({"shape": "circle"}, {"shape": "circle"})
