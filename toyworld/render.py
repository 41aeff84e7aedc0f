"""Drawing a scene: signed distance functions and one pixel of anti-aliasing.

Each shape is described by its signed distance d(p) to the outline, in pixels: negative inside,
positive outside. A pixel whose centre is at distance d is covered by the shape in proportion

    coverage(p) = clip(1/2 - d(p), 0, 1)

which is exact for a straight edge crossing a pixel square parallel to an axis and close for any
other direction: a one-pixel linear ramp across the outline, the usual cheap anti-aliasing of
SDF rendering. The image is the background blended with the object colour by that coverage:

    image(p) = (1 - coverage(p)) * background + coverage(p) * colour

The shapes, for a centre c and half extent r (each fits the square [c - r, c + r]^2):

    circle    d = |p - c| - r
    square    the box distance, q = |p - c| - r (per axis):  |max(q, 0)| + min(max(q_x, q_y), 0)
    triangle  apex up, base 2r wide and 2r high: max of the three edges' signed line distances
              (exact near the edges; beyond a vertex it underestimates the distance, so coverage
              fades out ~1.1 px past the sharp apex instead of 0.5 px: a slightly soft tip)
    cross     a plus sign, the union (min) of two boxes with arms CROSS_ARM * r thick
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch

from .world import BACKGROUNDS, COLOURS, IMAGE_SIZE, Scene, random_caption, random_scene

CROSS_ARM = 0.38  # half thickness of the cross's arms, relative to the half extent r

def pixel_grid(size: int = IMAGE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (x, y), each (size, size): pixel (i, j) has centre (j + 1/2, i + 1/2)."""
    coords = np.arange(size, dtype=np.float32) + 0.5
    return np.meshgrid(coords, coords)  # x varies along columns, y along rows


def _box(x: np.ndarray, y: np.ndarray, hx: float, hy: float) -> np.ndarray:
    qx, qy = np.abs(x) - hx, np.abs(y) - hy  # (H, W) each
    outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
    inside = np.minimum(np.maximum(qx, qy), 0)
    return outside + inside


def signed_distance(shape: str, cx: float, cy: float, r: float, size: int = IMAGE_SIZE) -> np.ndarray:
    """d(p) in pixels over the (size, size) grid for a shape centred at (cx, cy) with half extent r."""
    x, y = pixel_grid(size)
    x, y = x - cx, y - cy  # (H, W): coordinates relative to the centre, y down
    if shape == "circle":
        return np.hypot(x, y) - r
    if shape == "square":
        return _box(x, y, r, r)
    if shape == "triangle":
        # Vertices (0, -r), (-r, r), (r, r). The slanted edges have outward normals (+-2, -1)/sqrt(5).
        base = y - r  # below the base line y = r is outside
        right = (2 * x - y - r) / np.sqrt(5.0)  # the line through (0, -r) and (r, r)
        left = (-2 * x - y - r) / np.sqrt(5.0)  # the line through (0, -r) and (-r, r)
        return np.maximum(np.maximum(base, right), left)
    if shape == "cross":
        arm = CROSS_ARM * r
        return np.minimum(_box(x, y, r, arm), _box(x, y, arm, r))
    raise ValueError(f"unknown shape {shape!r}; expected one of circle, square, triangle, cross")


def coverage(shape: str, cx: float, cy: float, r: float, size: int = IMAGE_SIZE) -> np.ndarray:
    """The fraction of each pixel the shape covers, (size, size) in [0, 1]: clip(1/2 - d, 0, 1)."""
    return np.clip(0.5 - signed_distance(shape, cx, cy, r, size), 0.0, 1.0)


def render(scene: Scene) -> np.ndarray:
    """The scene as a float32 (64, 64, 3) RGB array in [0, 1]."""
    if not isinstance(scene, Scene):
        raise ValueError(f"expected a Scene, got {type(scene).__name__}")
    cx, cy = scene.centre
    alpha = coverage(scene.shape, cx, cy, scene.half_size)[..., None]  # (H, W, 1)
    background = np.asarray(BACKGROUNDS[scene.background], dtype=np.float32)  # (3,)
    colour = np.asarray(COLOURS[scene.colour], dtype=np.float32)  # (3,)
    return ((1 - alpha) * background + alpha * colour).astype(np.float32)  # (H, W, 3)


def to_tensor(images: Sequence[np.ndarray] | np.ndarray) -> torch.Tensor:
    """(B, H, W, 3) arrays in [0, 1] -> a (B, 3, H, W) float32 tensor in [0, 1], the pipeline's layout
    (the VAE itself reads 2 x - 1, as ``StableDiffusion.encode_image`` and the trainer map it)."""
    array = np.stack(list(images)) if not isinstance(images, np.ndarray) else images
    if array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"expected images (B, H, W, 3), got {array.shape}")
    return torch.from_numpy(np.ascontiguousarray(array.transpose(0, 3, 1, 2))).float()


def render_batch(scenes: Sequence[Scene]) -> torch.Tensor:
    """Scenes -> (B, 3, 64, 64) float32 in [0, 1]."""
    return to_tensor([render(s) for s in scenes])


class ToyDataset:
    """An endless, seeded dataset of (scene, caption) pairs: item ``i`` depends only on (seed, i).

    ``dataset[i]`` -> (image (3, 64, 64) in [0, 1], caption, scene); ``dataset.batch(indices)``
    renders many at once. Captions leave attributes out at random (see ``OMIT_PROBABILITY``).
    """

    def __init__(self, seed: int = 0, length: int | None = None) -> None:
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        if length is not None and (not isinstance(length, int) or length < 1):
            raise ValueError(f"length must be a positive int or None (endless), got {length!r}")
        self.seed, self.length = seed, length

    def __len__(self) -> int:
        if self.length is None:
            raise TypeError("an endless ToyDataset has no length; pass length= to give it one")
        return self.length

    def scene_and_caption(self, index: int) -> tuple[Scene, str]:
        if not isinstance(index, (int, np.integer)) or index < 0 or (self.length is not None and index >= self.length):
            raise IndexError(f"index {index!r} out of range for a dataset of length {self.length}")
        rng = np.random.default_rng([self.seed, int(index)])
        scene = random_scene(rng)
        return scene, random_caption(scene, rng)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str, Scene]:
        scene, text = self.scene_and_caption(index)
        return render_batch([scene])[0], text, scene

    def batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, list[str], list[Scene]]:
        pairs = [self.scene_and_caption(i) for i in indices]
        scenes = [s for s, _ in pairs]
        return render_batch(scenes), [c for _, c in pairs], scenes

    def batches(self, batch_size: int, start: int = 0) -> Iterator[tuple[torch.Tensor, list[str], list[Scene]]]:
        """Consecutive batches from item ``start`` on (endless unless the dataset has a length)."""
        i = start
        while self.length is None or i < self.length:
            stop = i + batch_size if self.length is None else min(i + batch_size, self.length)
            yield self.batch(range(i, stop))
            i = stop
