"""The toy world's vocabulary: what a scene is, and the little grammar that captions it.

A scene is one object on a plain background, described by five attributes:

    shape       circle, square, triangle, cross
    colour      red, green, blue, yellow, purple, orange    (the object's colour)
    size        big, small
    position    center, top left, top right, bottom left, bottom right
    background  white, black, gray, blue                     (never the object's colour)

and captioned by one sentence of a fixed grammar, every attribute optional except the shape:

    a [size] [colour] shape [position phrase] [on a background background]

    "a big red circle at the top left on a blue background"
    "a small yellow triangle"                           (size, position, background left out)

An attribute the caption leaves out was drawn at random, so the model learns p(image | caption)
with the unnamed attributes marginalised, as a real captioned dataset would teach it.
Images are 64x64 RGB, small enough that the whole model trains on a CPU (see toyworld/train.py).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

IMAGE_SIZE = 64

SHAPES = ("circle", "square", "triangle", "cross")
# Object colours, RGB in [0, 1]: saturated, far apart from each other and from every background.
COLOURS = {
    "red": (0.86, 0.16, 0.16),
    "green": (0.16, 0.70, 0.24),
    "blue": (0.16, 0.31, 0.86),
    "yellow": (0.94, 0.82, 0.16),
    "purple": (0.59, 0.24, 0.75),
    "orange": (0.96, 0.55, 0.12),
}
# Backgrounds; "blue" is the object blue, so a blue object never sits on a blue background.
BACKGROUNDS = {
    "white": (0.96, 0.96, 0.96),
    "black": (0.08, 0.08, 0.08),
    "gray": (0.50, 0.50, 0.50),
    "blue": COLOURS["blue"],
}
# Half the object's extent in pixels (it spans 2 * half_size), before jitter.
SIZES = {"big": 14.0, "small": 8.0}
# Object centre (x, y) in pixels, before jitter; y grows downwards as in an image.
POSITIONS = {
    "center": (32.0, 32.0),
    "top left": (20.0, 20.0),
    "top right": (44.0, 20.0),
    "bottom left": (20.0, 44.0),
    "bottom right": (44.0, 44.0),
}
POSITION_PHRASES = {p: ("in the " if p == "center" else "at the ") + p for p in POSITIONS}
ATTRIBUTES = ("shape", "colour", "size", "position", "background")
CHOICES = {"shape": SHAPES, "colour": tuple(COLOURS), "size": tuple(SIZES),
           "position": tuple(POSITIONS), "background": tuple(BACKGROUNDS)}
# Every word a caption can hold, in a fixed order: the toy model's WordTokenizer vocabulary.
VOCABULARY = ("a", "on", "background", "in", "at", "the", "center", "top", "bottom", "left", "right",
              *SIZES, *COLOURS, *SHAPES, *(b for b in BACKGROUNDS if b not in COLOURS))

MAX_CENTRE_JITTER = 2.0  # pixels, uniform in [-2, 2] on each axis
MAX_SIZE_JITTER = 1.0  # pixels, uniform in [-1, 1] on the half extent
# How often a training caption leaves an attribute out (the shape is always named).
OMIT_PROBABILITY = {"colour": 0.1, "size": 0.3, "position": 0.3, "background": 0.4}


class Placed:
    """Where an object with ``position``, ``size`` and the jitter ``dx``, ``dy``, ``dsize`` lies."""

    def check_jitter(self) -> None:
        if abs(self.dx) > MAX_CENTRE_JITTER or abs(self.dy) > MAX_CENTRE_JITTER or abs(self.dsize) > MAX_SIZE_JITTER:
            raise ValueError(f"jitter (dx={self.dx}, dy={self.dy}, dsize={self.dsize}) exceeds "
                             f"+-{MAX_CENTRE_JITTER} px (centre) / +-{MAX_SIZE_JITTER} px (size)")

    @property
    def centre(self) -> tuple[float, float]:
        x, y = POSITIONS[self.position]
        return x + self.dx, y + self.dy

    @property
    def half_size(self) -> float:
        return SIZES[self.size] + self.dsize


@dataclass(frozen=True)
class Scene(Placed):
    """One image's content: the five attributes and the jitter that places the object."""

    shape: str
    colour: str
    size: str
    position: str
    background: str
    dx: float = 0.0  # centre jitter in pixels
    dy: float = 0.0
    dsize: float = 0.0  # half-extent jitter in pixels

    def __post_init__(self) -> None:
        for name in ATTRIBUTES:
            value = getattr(self, name)
            if value not in CHOICES[name]:
                raise ValueError(f"{name} {value!r} is not one of {CHOICES[name]}")
        if self.colour == self.background:
            raise ValueError(f"a {self.colour} object on a {self.background} background would be invisible")
        self.check_jitter()

    def attributes(self) -> dict[str, str]:
        return {name: getattr(self, name) for name in ATTRIBUTES}


def random_scene(rng: np.random.Generator, **fixed: str) -> Scene:
    """A scene with the attributes in ``fixed`` (e.g. ``shape="circle"``) and the rest uniform at
    random; the background is drawn among those that differ from the object's colour (and the
    colour among those that differ from a fixed background)."""
    unknown = set(fixed) - set(ATTRIBUTES)
    if unknown:
        raise ValueError(f"unknown attributes {sorted(unknown)}; expected some of {ATTRIBUTES}")
    values = {}
    for name in ("shape", "size", "position", "background", "colour"):
        if name in fixed:
            values[name] = fixed[name]
            continue
        options = CHOICES[name]
        if name == "colour":
            options = tuple(c for c in options if c != values["background"])
        if name == "background" and "colour" in fixed:
            options = tuple(b for b in options if b != fixed["colour"])
        values[name] = options[rng.integers(len(options))]
    dx, dy = rng.uniform(-MAX_CENTRE_JITTER, MAX_CENTRE_JITTER, size=2)
    dsize = rng.uniform(-MAX_SIZE_JITTER, MAX_SIZE_JITTER)
    return Scene(**values, dx=float(dx), dy=float(dy), dsize=float(dsize))


def caption(scene: Scene, omit: tuple[str, ...] | set[str] = ()) -> str:
    """The grammar's sentence for ``scene``, leaving out the attributes in ``omit``."""
    bad = set(omit) - set(OMIT_PROBABILITY)
    if bad:
        raise ValueError(f"cannot omit {sorted(bad)}; a caption may leave out {tuple(OMIT_PROBABILITY)}")
    words = ["a"]
    words += [] if "size" in omit else [scene.size]
    words += [] if "colour" in omit else [scene.colour]
    words += [scene.shape]
    words += [] if "position" in omit else [POSITION_PHRASES[scene.position]]
    words += [] if "background" in omit else [f"on a {scene.background} background"]
    return " ".join(words)


def random_caption(scene: Scene, rng: np.random.Generator) -> str:
    """A training caption: each optional attribute left out with its ``OMIT_PROBABILITY``."""
    omit = {name for name, p in OMIT_PROBABILITY.items() if rng.random() < p}
    return caption(scene, omit)


def parse_caption(text: str) -> dict[str, str]:
    """The attributes a caption of this grammar names: the inverse of :func:`caption`.

    >>> parse_caption("a small red square at the top left")
    {'size': 'small', 'colour': 'red', 'shape': 'square', 'position': 'top left'}
    """
    if not isinstance(text, str):
        raise ValueError(f"caption must be a str, got {type(text).__name__}")
    words = text.lower().split()
    named: dict[str, str] = {}
    if "background" in words:  # "... on a <bg> background" ends the sentence
        i = words.index("background")
        if i < 3 or words[i - 3:i - 1] != ["on", "a"] or words[i - 1] not in BACKGROUNDS or i != len(words) - 1:
            raise ValueError(f"caption {text!r} does not end with 'on a <background> background'")
        named["background"] = words[i - 1]
        words = words[:i - 3]
    for position, phrase in POSITION_PHRASES.items():
        n = len(phrase.split())
        if words[-n:] == phrase.split():
            named["position"] = position
            words = words[:-n]
            break
    if not words or words[0] != "a" or len(words) < 2 or words[-1] not in SHAPES:
        raise ValueError(f"caption {text!r} is not 'a [size] [colour] <shape> [position] [background]'")
    for word in words[1:-1]:
        kind = "size" if word in SIZES else "colour" if word in COLOURS else None
        if kind is None or kind in named:
            raise ValueError(f"caption {text!r}: unexpected word {word!r}")
        named[kind] = word
    named["shape"] = words[-1]
    return {name: named[name] for name in ("size", "colour", "shape", "position", "background") if name in named}


def with_attribute(scene: Scene, **changes: str) -> Scene:
    """The same scene (same jitter) with some attributes changed."""
    return replace(scene, **changes)
