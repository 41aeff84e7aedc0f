"""Reading a scene of the second world back: the background, and every object with its mask.

The first world's analyzer (``toyworld.analyze``) finds one object on a plain background. This one
reads scenes of ``toyworld.scenes``: up to three objects on a plain, striped or horizon background,
with the same robust statistics (medians, nearest palette entries, moment-fitted templates), so it
serves generated images as well as renders.

For an image with pixels p (RGB in [0, 1]):

1. Background. Objects never reach the border ring (2 px wide), so the ring shows only background.
   Three models are fitted to the ring and the best kept:
       plain     one colour, the ring's median;
       striped   for each phase on a quarter-pixel grid, the ring's pixels split into dark and
                 light bands by the renderer's own stripes, each band's colour its median;
       horizon   likewise for each horizon height, sky above and ground below.
   Each fit's error is the mean distance of the ring's pixels to the fitted background. A structured
   fit wins when its error is below ``STRUCTURE_GAIN`` times the plain fit's and its two colours lie
   ``MIN_BAND_CONTRAST`` apart; otherwise the background is plain, named by the nearest colour.
   The fitted model B(p) (with the fitted colours) covers the whole image. A pixel's distance from
   the background is |p - B(p)|, except within ``EDGE_BAND`` px of a stripe edge or the horizon,
   where it is the distance to the nearest blend of the two colours (so an edge blurred or off by
   a pixel or two is still background).
2. Candidate pixels: distance > ``FOREGROUND_THRESHOLD``, half the smallest distance between an
   object colour and a background colour it may sit on. Their 4-connected components of at least
   ``MIN_PIXELS`` pixels are the candidate objects; a component whose median colour is nearer a
   background colour than every object colour (a smeared horizon, a stripe off by a pixel) is dropped.
   Components are read largest first; what is left of a component once an object's mask (grown by
   2 px) is taken out is read again, so two objects joined by blurred edges are both found.
3. Each object's mask, as in the first analyzer: with o the median colour of the component's core
   (its half farthest from B, less mixed with the background where an edge is blurred), each pixel
   near it is projected onto the line from B(p) to o, t(p) = (p - B(p)) . (o - B(p)) / |o - B(p)|^2,
   and the mask is the component of t > 1/2 that holds the candidate, holes filled. On a clean render
   t is the renderer's coverage, so the mask is exactly ``coverage > 1/2``.
4. Colour, shape, size and position of each mask exactly as ``toyworld.analyze`` does (interior
   median, moment-fitted templates, the half-extent threshold, the nearest named centre).

``match_objects`` pairs a caption's objects with the objects read (the assignment that agrees on
most named attributes), so a benchmark can ask whether each object the caption names is there.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from .analyze import (MIN_PIXELS, SIZE_THRESHOLD, _nearest, _to_rgb, connected_components, erode, fill_holes,
                      fit_shapes)
from .scenes import (HORIZON_RANGE, PLAIN_BACKGROUNDS, SCENE_BACKGROUNDS, STRIPE_PERIOD, STRUCTURED_BACKGROUNDS,
                     background_colours, parse_description)
from .world import COLOURS, IMAGE_SIZE, POSITIONS

BORDER = 2
PHASE_STEP = 0.25  # px: the grid on which the stripes' phase and the horizon's height are searched
STRUCTURE_GAIN = 0.5  # a structured fit must at least halve the plain fit's ring error
MIN_BAND_CONTRAST = 0.15  # and its two colours must be this far apart (the palette's are >= 0.45)
FOREGROUND_THRESHOLD = 0.5 * min(float(np.linalg.norm(np.subtract(COLOURS[c], b)))
                                 for bg in SCENE_BACKGROUNDS for b in background_colours(bg)
                                 for c in COLOURS if COLOURS[c] not in background_colours(bg))
EDGE_BAND = 2.5  # px either side of a structured background's boundary where any blend of its colours is background
MAX_OBJECTS = 6  # the largest candidates kept (a scene holds 3; a bad generation may show more pieces)


@dataclass(frozen=True, eq=False)
class ObjectReading:
    """One object read from an image."""

    colour: str
    shape: str
    size: str
    position: str
    mask: np.ndarray = field(repr=False)  # (64, 64) bool, read-only
    rgb: tuple[float, float, float]  # the median of the mask's interior
    pixels: int
    centre: tuple[float, float]  # (x, y) of the winning template's fit
    half_extent: float
    shape_iou: dict[str, float]

    def attributes(self) -> dict[str, str]:
        return {"shape": self.shape, "colour": self.colour, "size": self.size, "position": self.position}


@dataclass(frozen=True, eq=False)
class SceneReading:
    """What the analyzer read: the background (its name, phase and fitted colours) and the objects,
    largest first."""

    background: str
    phase: float  # stripes' offset or horizon height in px (0.0 for a plain background)
    background_rgb: tuple[tuple[float, float, float], ...]
    ring_error: float  # the winning background fit's mean distance on the border ring
    objects: tuple[ObjectReading, ...]
    background_model: np.ndarray = field(repr=False)  # (64, 64, 3) B(p)

    @property
    def foreground(self) -> np.ndarray:
        """(64, 64) bool: the union of the objects' masks."""
        out = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=bool)
        for o in self.objects:
            out |= o.mask
        return out


def _ring(size: int = IMAGE_SIZE) -> np.ndarray:
    ring = np.ones((size, size), dtype=bool)
    ring[BORDER:-BORDER, BORDER:-BORDER] = False
    return ring


_RING = _ring()
_COORDS = np.arange(IMAGE_SIZE) + 0.5  # pixel centres


def _first_coverage(kind: str, phase: float) -> np.ndarray:
    """(64, 64) coverage of a structured background's first colour (dark band / sky)."""
    x, y = np.meshgrid(_COORDS, _COORDS)
    if kind == "striped":
        v = np.mod(x - phase - STRIPE_PERIOD / 4, STRIPE_PERIOD)
        return np.clip(0.5 - (np.minimum(v, STRIPE_PERIOD - v) - STRIPE_PERIOD / 4), 0.0, 1.0)
    return np.clip(0.5 - (y - phase), 0.0, 1.0)


def _edge_distance(kind: str, phase: float) -> np.ndarray:
    """(64, 64) distance in px from each pixel centre to the nearest colour boundary of the background."""
    x, y = np.meshgrid(_COORDS, _COORDS)
    if kind == "striped":
        v = np.mod(x - phase - STRIPE_PERIOD / 4, STRIPE_PERIOD)
        return np.abs(np.minimum(v, STRIPE_PERIOD - v) - STRIPE_PERIOD / 4)
    return np.abs(y - phase)


def _segment_distance(rgb: np.ndarray, c0: np.ndarray, c1: np.ndarray) -> np.ndarray:
    """(H, W): each pixel's distance to the segment of colours between c0 and c1 (every blend of the two)."""
    u = c1 - c0
    t = np.clip((rgb - c0) @ u / (u @ u), 0.0, 1.0)  # (H, W)
    return np.linalg.norm(rgb - (c0 + t[..., None] * u), axis=-1)


def _phases(kind: str) -> np.ndarray:
    if kind == "striped":
        return np.arange(0.0, STRIPE_PERIOD, PHASE_STEP)
    return np.arange(HORIZON_RANGE[0] - 2, HORIZON_RANGE[1] + 2 + 1e-9, PHASE_STEP)  # a little beyond the range


def fit_background(rgb: np.ndarray) -> tuple[str, float, tuple, float, np.ndarray, np.ndarray]:
    """Step 1 of the module docstring: (name, phase, colours, ring error, model B (64, 64, 3), and
    each pixel's distance from the background (64, 64))."""
    ring = rgb[_RING]  # (R, 3)
    plain = np.median(ring, axis=0)
    plain_error = float(np.linalg.norm(ring - plain, axis=-1).mean())
    best = ("plain", 0.0, (plain,), plain_error)
    for kind in STRUCTURED_BACKGROUNDS:
        for phase in _phases(kind):
            a = _first_coverage(kind, phase)
            first = a[_RING] > 0.5
            if first.all() or not first.any():
                continue
            c0, c1 = np.median(ring[first], axis=0), np.median(ring[~first], axis=0)
            w = a[_RING][:, None]
            error = float(np.linalg.norm(ring - (w * c0 + (1 - w) * c1), axis=-1).mean())
            if error < best[3] and np.linalg.norm(c0 - c1) >= MIN_BAND_CONTRAST:
                best = (kind, float(phase), (c0, c1), error)
    kind, phase, colours, error = best
    if kind == "striped" and colours[0].sum() > colours[1].sum():
        # Bands of swapped colours half a period on are the same picture: the dark band comes first.
        phase, colours = float(np.mod(phase + STRIPE_PERIOD / 2, STRIPE_PERIOD)), colours[::-1]
    if kind != "plain" and not error < STRUCTURE_GAIN * plain_error:
        kind, phase, colours, error = "plain", 0.0, (plain,), plain_error
    if kind == "plain":
        model = np.broadcast_to(plain, rgb.shape).copy()
        name = _nearest(plain, PLAIN_BACKGROUNDS)
        distance = np.linalg.norm(rgb - model, axis=-1)
    else:
        a = _first_coverage(kind, phase)[..., None]
        model = a * colours[0] + (1 - a) * colours[1]
        name = kind
        # Near a boundary any blend of the two colours is background (a blurred or shifted edge).
        distance = np.where(_edge_distance(kind, phase) < EDGE_BAND, _segment_distance(rgb, *colours),
                            np.linalg.norm(rgb - model, axis=-1))
    return name, phase, tuple(tuple(map(float, c)) for c in colours), error, model, distance


def read_scene(image: np.ndarray | torch.Tensor) -> SceneReading:
    """Read one image: a float (64, 64, 3) array or a float (3, 64, 64) tensor, in [0, 1]."""
    return _read(_to_rgb(image))


def read_scenes(images: torch.Tensor, progress: bool = False) -> list[SceneReading]:
    """Read a float (B, 3, 64, 64) tensor in [0, 1], image by image."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or tuple(images.shape[1:]) != (3, IMAGE_SIZE, IMAGE_SIZE):
        got = f"{tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"expected a float torch tensor (B, 3, {IMAGE_SIZE}, {IMAGE_SIZE}) in [0, 1], got {got}")
    return [read_scene(x) for x in tqdm(images, desc="read", disable=not progress)]


def _read(rgb: np.ndarray) -> SceneReading:
    name, phase, colours, error, model, distance = fit_background(rgb)  # distance: (64, 64)
    labels = connected_components(distance > FOREGROUND_THRESHOLD)
    ids, counts = np.unique(labels[labels >= 0], return_counts=True)
    order = [int(i) for i, c in sorted(zip(ids, counts), key=lambda ic: -ic[1]) if c >= MIN_PIXELS]
    hidden = [c for c in COLOURS if COLOURS[c] in background_colours(name)] if name in SCENE_BACKGROUNDS else []
    palette = {c: v for c, v in COLOURS.items() if c not in hidden}
    queue = [labels == label for label in order]
    taken = np.zeros(distance.shape, dtype=bool)
    objects = []
    while queue and len(objects) < MAX_OBJECTS:
        candidate = queue.pop(0) & ~taken
        if np.count_nonzero(candidate) < MIN_PIXELS:
            continue
        obj = _read_object(rgb, model, distance, candidate, palette, colours)
        if obj is None:
            continue
        objects.append(obj)
        taken |= _dilate(obj.mask, 2)
        # Two objects whose blurred edges touch form one candidate: what is left is read again.
        rest = connected_components(candidate & ~taken)
        ids, counts = np.unique(rest[rest >= 0], return_counts=True)
        queue += [rest == i for i, c in zip(ids, counts) if c >= MIN_PIXELS]
    objects.sort(key=lambda o: -o.pixels)
    return SceneReading(name, phase, colours, error, tuple(objects), model)


def _dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    """``mask`` grown by ``steps`` pixels (4-neighbourhood)."""
    from .analyze import _neighbours

    for _ in range(steps):
        mask = np.logical_or.reduce([mask, *_neighbours(mask, False)])
    return mask


def _read_object(rgb: np.ndarray, model: np.ndarray, distance: np.ndarray, candidate: np.ndarray, palette: dict,
                 background_rgb: tuple) -> ObjectReading | None:
    d = distance[candidate]
    o = np.median(rgb[candidate][d >= np.median(d)], axis=0)  # (3,): the half farthest from B, the object's core
    to_object = min(np.linalg.norm(o - np.asarray(c)) for c in palette.values())
    to_background = min(np.linalg.norm(o - np.asarray(c)) for c in background_rgb)
    if to_background < to_object:
        return None  # background misfit: a smeared horizon or stripe edge
    rows, cols = np.nonzero(candidate.any(axis=1))[0], np.nonzero(candidate.any(axis=0))[0]
    window = np.zeros_like(candidate)
    window[max(rows[0] - 3, 0):rows[-1] + 4, max(cols[0] - 3, 0):cols[-1] + 4] = True
    direction = o - model  # (64, 64, 3)
    t = np.einsum("hwc,hwc->hw", rgb - model, direction) / np.maximum(np.einsum("hwc,hwc->hw", direction, direction), 1e-12)
    labels = connected_components((t > 0.5) & window)
    hit = labels[candidate & (labels >= 0)]
    if hit.size == 0:
        return None
    mask = fill_holes(labels == np.bincount(hit).argmax())
    pixels = int(np.count_nonzero(mask))
    if pixels < MIN_PIXELS:
        return None
    interior = erode(mask)
    obj_rgb = np.median(rgb[interior if interior.any() else mask], axis=0)
    colour = _nearest(obj_rgb, palette)
    fits = fit_shapes(mask)
    shape = max(fits, key=lambda s: fits[s].iou)
    fit = fits[shape]
    size = "big" if fit.r > SIZE_THRESHOLD else "small"
    position = min(POSITIONS, key=lambda p: np.hypot(fit.cx - POSITIONS[p][0], fit.cy - POSITIONS[p][1]))
    mask.flags.writeable = False
    return ObjectReading(colour, shape, size, position, mask, tuple(map(float, obj_rgb)), pixels, (fit.cx, fit.cy),
                         fit.r, {s: f.iou for s, f in fits.items()})


def match_objects(reading: SceneReading, named: list[dict[str, str]]) -> list[ObjectReading | None]:
    """For each object a caption names (``parse_description(text)["objects"]``), the object read that
    it describes: the one-to-one assignment agreeing on the most named attributes (ties: the larger
    objects). An object is None when fewer objects were read than named."""
    if not isinstance(reading, SceneReading):
        raise ValueError(f"expected a SceneReading, got {type(reading).__name__}")
    found = list(reading.objects)
    k = len(named)
    best, best_score = [None] * k, (-1, -1)
    slots = found + [None] * k
    for chosen in itertools.permutations(range(len(slots)), k):
        picked = [slots[i] for i in chosen]
        agree = sum(p is not None and p.attributes()[a] == v for p, o in zip(picked, named) for a, v in o.items())
        size = sum(p.pixels for p in picked if p is not None)
        if (agree, size) > best_score:
            best, best_score = picked, (agree, size)
    return best


def scene_matches(reading: SceneReading, caption: str | dict) -> dict:
    """Whether the image shows what ``caption`` names: per named object, each named attribute
    (False when the object is missing); ``background`` if named; ``count``: as many objects read as
    named; ``all``: everything true."""
    parsed = parse_description(caption) if isinstance(caption, str) else caption
    matched = match_objects(reading, parsed["objects"])
    objects = [{a: m is not None and m.attributes()[a] == v for a, v in o.items()}
               for o, m in zip(parsed["objects"], matched)]
    out = {"objects": objects, "count": len(reading.objects) == len(parsed["objects"])}
    if "background" in parsed:
        out["background"] = reading.background == parsed["background"]
    out["all"] = out["count"] and out.get("background", True) and all(all(o.values()) for o in objects)
    return out
