"""The second toy world: scenes of one to three objects, on plain or structured backgrounds.

The first world (``toyworld.world``) draws one object per image, so no word of a caption ever has
to be *placed*: every word describes the only thing there is. Editing needs scenes where words must
be localised, so this world draws up to three objects, each with its own shape, colour, size and
place, and backgrounds that carry structure a method can keep or lose:

    objects     1, 2 or 3 (probabilities ``OBJECT_COUNTS``), pairwise different in shape, colour and
                position, never overlapping (``MIN_GAP`` pixels of background between any two)
    background  the first world's plain colours (white, black, gray, blue), or
                striped   vertical stripes of ``STRIPE_COLOURS``, period ``STRIPE_PERIOD`` px,
                          at a random phase (where the first dark stripe starts)
                horizon   a sky above a ground, the horizon line at a random height

The caption grammar extends the first one; each object is described by the first world's phrase,
objects are joined by "and", in a random order, and the background ends the sentence:

    a [size] [colour] shape [position phrase] (and a [size] [colour] shape [position phrase])*
        [on a background background]

    "a big red circle at the top left and a small blue square on a striped background"
    "a small yellow triangle"                                      (a caption of the first world)

Every caption of the first world is a caption of this one, with the same meaning. Attributes a
caption leaves out (``OMIT_PROBABILITY``, per object) were drawn at random.
Images stay 64x64 RGB; objects are drawn with the first world's signed distance functions.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from typing import Iterator, Sequence

import numpy as np
import torch

from .render import coverage, pixel_grid, signed_distance, to_tensor
from .world import (BACKGROUNDS, COLOURS, Placed, IMAGE_SIZE, MAX_CENTRE_JITTER, MAX_SIZE_JITTER, OMIT_PROBABILITY,
                    POSITION_PHRASES, POSITIONS, SHAPES, SIZES, VOCABULARY, parse_caption)

OBJECT_ATTRIBUTES = ("shape", "colour", "size", "position")
OBJECT_COUNTS = {1: 0.3, 2: 0.4, 3: 0.3}
MIN_GAP = 4.0  # pixels of background between two objects' outlines (each dilated by MIN_GAP / 2)

PLAIN_BACKGROUNDS = dict(BACKGROUNDS)
STRIPE_PERIOD = 16.0  # pixels: a dark and a light band of 8 px each
STRIPE_COLOURS = ((0.70, 0.70, 0.70), (0.96, 0.96, 0.96))  # dark band, light band
HORIZON_COLOURS = ((0.70, 0.85, 0.95), (0.45, 0.35, 0.25))  # sky (above), ground (below)
HORIZON_RANGE = (24.0, 40.0)  # the horizon's height y in pixels, uniform in this range
STRUCTURED_BACKGROUNDS = {"striped": STRIPE_COLOURS, "horizon": HORIZON_COLOURS}
SCENE_BACKGROUNDS = (*PLAIN_BACKGROUNDS, *STRUCTURED_BACKGROUNDS)
# The first world's words, then the three this grammar adds: the toy tokenizer's vocabulary.
SCENE_VOCABULARY = (*VOCABULARY, "and", *STRUCTURED_BACKGROUNDS)


_OPTIONS = {"shape": SHAPES, "colour": tuple(COLOURS), "size": tuple(SIZES), "position": tuple(POSITIONS)}


def background_colours(name: str) -> tuple[tuple[float, float, float], ...]:
    """The colours a background shows: one for a plain background, two for a structured one."""
    if name in PLAIN_BACKGROUNDS:
        return (PLAIN_BACKGROUNDS[name],)
    if name in STRUCTURED_BACKGROUNDS:
        return STRUCTURED_BACKGROUNDS[name]
    raise ValueError(f"background {name!r} is not one of {SCENE_BACKGROUNDS}")


def phase_range(background: str) -> tuple[float, float]:
    """The interval a background's phase is drawn from: stripes' offset, the horizon's height, 0 if plain."""
    if background == "striped":
        return 0.0, STRIPE_PERIOD
    if background == "horizon":
        return HORIZON_RANGE
    return 0.0, 0.0


@dataclass(frozen=True)
class SceneObject(Placed):
    """One object: the first world's four object attributes and the jitter that places it."""

    shape: str
    colour: str
    size: str
    position: str
    dx: float = 0.0
    dy: float = 0.0
    dsize: float = 0.0

    def __post_init__(self) -> None:
        for name, options in _OPTIONS.items():
            if getattr(self, name) not in options:
                raise ValueError(f"{name} {getattr(self, name)!r} is not one of {options}")
        self.check_jitter()

    def attributes(self) -> dict[str, str]:
        return {name: getattr(self, name) for name in OBJECT_ATTRIBUTES}

    def coverage(self) -> np.ndarray:
        """The fraction of each pixel this object covers, (64, 64) in [0, 1]."""
        return coverage(self.shape, *self.centre, self.half_size)


def _apart(a: SceneObject, b: SceneObject, gap: float = MIN_GAP) -> bool:
    """Whether no pixel centre lies within gap / 2 of both outlines (so >= gap px of background between)."""
    (ax, ay), (bx, by) = a.centre, b.centre
    reach = a.half_size + b.half_size + gap  # every shape lies in the square [c - r, c + r]^2
    if abs(ax - bx) >= reach or abs(ay - by) >= reach:
        return True
    da = signed_distance(a.shape, *a.centre, a.half_size)  # (64, 64)
    db = signed_distance(b.shape, *b.centre, b.half_size)
    return not np.any((da < gap / 2) & (db < gap / 2))


@dataclass(frozen=True)
class MultiScene:
    """One image's content: its objects (1 to 3) and its background with the background's phase
    (the stripes' offset in px, the horizon's height in px, 0 for a plain background)."""

    objects: tuple[SceneObject, ...]
    background: str
    phase: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.objects, tuple) or not all(isinstance(o, SceneObject) for o in self.objects):
            raise ValueError(f"objects must be a tuple of SceneObject, got {self.objects!r}")
        if not 1 <= len(self.objects) <= max(OBJECT_COUNTS):
            raise ValueError(f"a scene holds 1 to {max(OBJECT_COUNTS)} objects, got {len(self.objects)}")
        colours = background_colours(self.background)
        low, high = phase_range(self.background)
        if not (low <= self.phase <= high):
            raise ValueError(f"phase {self.phase} of a {self.background} background must lie in [{low}, {high}]")
        for name in ("shape", "colour", "position"):
            values = [getattr(o, name) for o in self.objects]
            if len(set(values)) != len(values):
                raise ValueError(f"the objects of a scene have different {name}s, got {values}")
        for o in self.objects:
            if COLOURS[o.colour] in colours:
                raise ValueError(f"a {o.colour} object on a {self.background} background would be invisible")
        for a, b in itertools.combinations(self.objects, 2):
            if not _apart(a, b):
                raise ValueError(f"the {a.shape} at the {a.position} and the {b.shape} at the {b.position} "
                                 f"are closer than {MIN_GAP} px")

    @classmethod
    def from_scene(cls, scene) -> "MultiScene":
        """The first world's one-object ``Scene`` as a scene of this world."""
        return cls((SceneObject(scene.shape, scene.colour, scene.size, scene.position, scene.dx, scene.dy,
                                scene.dsize),), scene.background)

    def masks(self) -> np.ndarray:
        """(objects, 64, 64) bool: the pixels each object covers by more than half."""
        return np.stack([o.coverage() > 0.5 for o in self.objects])


def random_scene(rng: np.random.Generator, n_objects: int | None = None, background: str | None = None,
                 objects: Sequence[dict[str, str]] = (), tries: int = 200) -> MultiScene:
    """A random scene. ``objects`` fixes attributes of the first objects (a dict each, e.g. from a
    parsed caption), ``n_objects`` the count (default: ``len(objects)`` if given, else drawn from
    ``OBJECT_COUNTS``), ``background`` the background; everything else is uniform at random under
    the scene's rules (different shapes, colours and positions, nothing invisible, no overlap).
    Objects are placed one at a time; an object that cannot be placed is redrawn, and after
    ``tries`` failed attempts the whole scene is, up to ``tries`` times, then ValueError."""
    objects = [dict(o) for o in objects]
    for o in objects:
        unknown = set(o) - set(OBJECT_ATTRIBUTES)
        if unknown:
            raise ValueError(f"unknown object attributes {sorted(unknown)}; expected some of {OBJECT_ATTRIBUTES}")
        for name, value in o.items():
            if value not in _OPTIONS[name]:
                raise ValueError(f"{name} {value!r} is not one of {_OPTIONS[name]}")
    for name in ("shape", "colour", "position"):
        values = [o[name] for o in objects if name in o]
        if len(set(values)) != len(values):
            raise ValueError(f"the objects of a scene have different {name}s, got {values}")
    if n_objects is None:
        counts = list(OBJECT_COUNTS)
        n_objects = len(objects) if objects else counts[rng.choice(len(counts), p=list(OBJECT_COUNTS.values()))]
    if not isinstance(n_objects, (int, np.integer)) or not len(objects) <= n_objects <= max(OBJECT_COUNTS):
        raise ValueError(f"n_objects must be an int in [{max(1, len(objects))}, {max(OBJECT_COUNTS)}], got {n_objects!r}")
    if background is not None and background not in SCENE_BACKGROUNDS:
        raise ValueError(f"background {background!r} is not one of {SCENE_BACKGROUNDS}")
    named_colours = {o["colour"] for o in objects if "colour" in o}
    for attempt in range(tries):
        if background is None:
            options = [b for b in SCENE_BACKGROUNDS if not set(map(COLOURS.get, named_colours)) & set(background_colours(b))]
            bg = options[rng.integers(len(options))]
        else:
            bg = background
        low, high = phase_range(bg)
        phase = float(rng.uniform(low, high)) if high > low else 0.0
        placed: list[SceneObject] = []
        for i in range(n_objects):
            fixed = objects[i] if i < len(objects) else {}
            obj = _place(rng, fixed, placed, objects[i + 1:], bg, tries)
            if obj is None:
                break
            placed.append(obj)
        else:
            return MultiScene(tuple(placed), bg, phase)
    raise ValueError(f"could not place {n_objects} objects {list(objects)} on a {background or 'random'} "
                     f"background without overlap in {tries} attempts")


def _place(rng: np.random.Generator, fixed: dict[str, str], placed: list[SceneObject], later: list[dict[str, str]],
           background: str, tries: int) -> SceneObject | None:
    """One object with the attributes ``fixed``, the rest drawn so it differs from ``placed`` (and
    leaves the values ``later`` objects name), is visible on ``background`` and overlaps nothing."""
    taken = {name: {getattr(o, name) for o in placed} | {o[name] for o in later if name in o}
             for name in ("shape", "colour", "position")}
    hidden = set(background_colours(background))
    choices = {"shape": [s for s in SHAPES if s not in taken["shape"]],
               "colour": [c for c in COLOURS if c not in taken["colour"] and COLOURS[c] not in hidden],
               "size": list(SIZES),
               "position": [p for p in POSITIONS if p not in taken["position"]]}
    if any(value not in choices[name] for name, value in fixed.items()):
        return None  # taken by another object, or invisible on this background
    for _ in range(tries):
        if not all(choices.values()):
            return None
        values = {name: fixed.get(name) or options[rng.integers(len(options))] for name, options in choices.items()}
        dx, dy = rng.uniform(-MAX_CENTRE_JITTER, MAX_CENTRE_JITTER, size=2)
        dsize = rng.uniform(-MAX_SIZE_JITTER, MAX_SIZE_JITTER)
        obj = SceneObject(**values, dx=float(dx), dy=float(dy), dsize=float(dsize))
        if all(_apart(obj, other) for other in placed):
            return obj
    return None


# Captions ---------------------------------------------------------------------------------------

def object_phrase(obj: SceneObject, omit: set[str] | frozenset[str] = frozenset()) -> str:
    """The first world's phrase for one object: "a [size] [colour] shape [position phrase]"."""
    bad = set(omit) - {"size", "colour", "position"}
    if bad:
        raise ValueError(f"cannot omit {sorted(bad)}; an object's phrase may leave out size, colour, position")
    words = ["a"]
    words += [] if "size" in omit else [obj.size]
    words += [] if "colour" in omit else [obj.colour]
    words += [obj.shape]
    words += [] if "position" in omit else [POSITION_PHRASES[obj.position]]
    return " ".join(words)


def describe(scene: MultiScene, omit: Sequence[set[str]] = (), omit_background: bool = False,
             order: Sequence[int] | None = None) -> str:
    """The grammar's sentence for ``scene``: the objects in ``order`` (default: as stored), each
    leaving out the attributes of its entry in ``omit`` (indexed like ``scene.objects``)."""
    n = len(scene.objects)
    order = list(range(n)) if order is None else list(order)
    if sorted(order) != list(range(n)):
        raise ValueError(f"order must be a permutation of range({n}), got {order}")
    omit = list(omit) + [set()] * (n - len(omit))
    if len(omit) != n:
        raise ValueError(f"omit has {len(omit)} entries for {n} objects")
    text = " and ".join(object_phrase(scene.objects[i], omit[i]) for i in order)
    return text if omit_background else f"{text} on a {scene.background} background"


def random_description(scene: MultiScene, rng: np.random.Generator) -> str:
    """A training caption: objects in a random order, each optional attribute left out with its
    ``OMIT_PROBABILITY`` (drawn per object; the background once)."""
    order = rng.permutation(len(scene.objects)).tolist()
    omit = [{name for name in ("size", "colour", "position") if rng.random() < OMIT_PROBABILITY[name]}
            for _ in scene.objects]
    return describe(scene, omit, rng.random() < OMIT_PROBABILITY["background"], order)


def parse_description(text: str) -> dict:
    """The attributes a caption of this grammar names: ``{"objects": [dict, ...], "background": name}``
    ("background" only when named), the objects in the caption's order.

    >>> parse_description("a red circle at the top left and a small square on a striped background")
    {'objects': [{'colour': 'red', 'shape': 'circle', 'position': 'top left'}, {'size': 'small', 'shape': 'square'}], 'background': 'striped'}
    """
    if not isinstance(text, str):
        raise ValueError(f"caption must be a str, got {type(text).__name__}")
    words = text.lower().split()
    named: dict = {}
    if "background" in words:
        i = words.index("background")
        if i < 4 or words[i - 3:i - 1] != ["on", "a"] or words[i - 1] not in SCENE_BACKGROUNDS or i != len(words) - 1:
            raise ValueError(f"caption {text!r} does not end with 'on a <background> background', "
                             f"<background> one of {SCENE_BACKGROUNDS}")
        named["background"] = words[i - 1]
        words = words[:i - 3]
    phrases, current = [], []
    for word in words:
        if word == "and":
            phrases.append(current)
            current = []
        else:
            current.append(word)
    phrases.append(current)
    if len(phrases) > max(OBJECT_COUNTS):
        raise ValueError(f"caption {text!r} names {len(phrases)} objects; a scene holds at most {max(OBJECT_COUNTS)}")
    objects = []
    for phrase in phrases:
        try:
            objects.append(parse_caption(" ".join(phrase)))
        except ValueError:
            raise ValueError(f"caption {text!r}: {' '.join(phrase)!r} is not 'a [size] [colour] <shape> "
                             f"[position]'") from None
    for name in ("shape", "colour", "position"):
        values = [o[name] for o in objects if name in o]
        if len(set(values)) != len(values):
            raise ValueError(f"caption {text!r} names one {name} twice ({values}); a scene's objects differ in it")
    return {"objects": objects, **named}


# Rendering --------------------------------------------------------------------------------------

def render_background(name: str, phase: float = 0.0, size: int = IMAGE_SIZE) -> np.ndarray:
    """A background as a float32 (size, size, 3) array in [0, 1], anti-aliased like the objects.

    striped: pixel x lies in a dark band when (x - phase) mod P is in [0, P/2). With v = (x - phase
    - P/4) mod P, min(v, P - v) is the distance from the nearest dark band's centre, so the band's
    signed distance is d = min(v, P - v) - P/4. horizon: the sky's signed distance is d = y - h
    (negative above the line). Coverage is clip(1/2 - d, 0, 1), as for the shapes."""
    colours = [np.asarray(c, dtype=np.float32) for c in background_colours(name)]
    if len(colours) == 1:
        return np.broadcast_to(colours[0], (size, size, 3)).astype(np.float32)
    x, y = pixel_grid(size)
    if name == "striped":
        period = STRIPE_PERIOD
        v = np.mod(x - phase - period / 4, period)  # (H, W)
        d = np.minimum(v, period - v) - period / 4  # < 0 inside the dark band
        first = np.clip(0.5 - d, 0.0, 1.0)[..., None]  # dark band's coverage
    else:  # horizon: colours = (sky, ground)
        first = np.clip(0.5 - (y - phase), 0.0, 1.0)[..., None]  # sky's coverage
    return (first * colours[0] + (1 - first) * colours[1]).astype(np.float32)


def render_scene(scene: MultiScene) -> np.ndarray:
    """The scene as a float32 (64, 64, 3) RGB array in [0, 1]: the background, then each object
    blended by its coverage (objects never overlap, so their order does not matter)."""
    if not isinstance(scene, MultiScene):
        raise ValueError(f"expected a MultiScene, got {type(scene).__name__}")
    image = render_background(scene.background, scene.phase).copy()
    for obj in scene.objects:
        alpha = obj.coverage()[..., None]  # (H, W, 1), blended in float64 as render() does
        image = (1 - alpha) * image + alpha * np.asarray(COLOURS[obj.colour], dtype=np.float32)
    return image.astype(np.float32)


def render_scenes(scenes: Sequence[MultiScene]) -> torch.Tensor:
    """Scenes -> (B, 3, 64, 64) float32 in [0, 1]."""
    return to_tensor([render_scene(s) for s in scenes])


@dataclass
class SceneDataset:
    """An endless, seeded dataset of (scene, caption) pairs of this world: item ``i`` depends only
    on (seed, i). Same interface as ``render.ToyDataset``."""

    seed: int = 0
    n_objects: int | None = None  # None: drawn from OBJECT_COUNTS
    _cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {self.seed!r}")

    def scene_and_caption(self, index: int) -> tuple[MultiScene, str]:
        if not isinstance(index, (int, np.integer)) or index < 0:
            raise IndexError(f"index {index!r} out of range")
        rng = np.random.default_rng([self.seed, 2, int(index)])  # 2: this world's stream, apart from ToyDataset's
        scene = random_scene(rng, n_objects=self.n_objects)
        return scene, random_description(scene, rng)

    def batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, list[str], list[MultiScene]]:
        pairs = [self.scene_and_caption(i) for i in indices]
        scenes = [s for s, _ in pairs]
        return render_scenes(scenes), [c for _, c in pairs], scenes

    def batches(self, batch_size: int, start: int = 0) -> Iterator[tuple[torch.Tensor, list[str], list[MultiScene]]]:
        i = start
        while True:
            yield self.batch(range(i, i + batch_size))
            i += batch_size


def with_object(scene: MultiScene, index: int, **changes: str) -> MultiScene:
    """The same scene with object ``index``'s attributes changed (same jitter); checked again."""
    objects = list(scene.objects)
    objects[index] = replace(objects[index], **changes)
    return MultiScene(tuple(objects), scene.background, scene.phase)
