"""The toy world's analyzer: read a scene's attributes and the object's mask back from an image.

It is the toy world's stand-in for CLIP score and structure metrics. The fidelity benchmarks ask
it whether a *generated* image shows what its caption names ("a big red circle ..."), and the
editing evaluations (Prompt-to-Prompt, Plug-and-Play) compare its object masks by IoU. Generated
images are not renders: colours are a little off, edges blurry or wobbly, pixels noisy. So every
step below uses a robust statistic (a median, a percentile, the largest connected piece) and
decides by the *nearest* palette entry or template, never by an exact value.

For an image with pixels p (RGB in [0, 1]):

1. Background. b = the per-channel median of the border ring (2 px wide). Objects never reach
   the ring (the nearest edge is 20 - 2 - 15 = 3 px from the image side), so the median is the
   background even when a generator smears something into a few border pixels. Its name is the
   nearest ``BACKGROUNDS`` colour.
2. Is there an object? d(p) = |p - b|. The object covers at least 2.4% of the image (the
   smallest, a small triangle of half extent 7, has area 2 * 7^2 = 98 px of 4096), so the 99th
   percentile of d, the *contrast*, is an object pixel's distance. Below ``MIN_CONTRAST`` (half
   the smallest object-to-background distance in the palette) no object is reported.
3. Mask. A rough mask d > contrast / 2 gives a first object colour o = median of its pixels.
   Each pixel is then projected onto the line from b to o,

       t(p) = (p - b) . (o - b) / |o - b|^2        (0 on the background, 1 on the object)

   and the mask is t > 1/2: the pixel is nearer the object than the background. On a clean render
   t is the anti-aliasing coverage, so the mask is exactly the renderer's ``coverage > 0.5``. Only the
   largest 4-connected component is kept (noise specks dropped) and its holes are filled (all
   four shapes are simply connected). Fewer than ``MIN_PIXELS`` pixels: no object.
4. Colour. The median of the mask's interior (the mask eroded by one pixel, free of the
   anti-aliased rim), named by the nearest ``COLOURS`` entry other than the background's.
5. Shape. Template matching. Each of the four shapes is fitted to the mask by its moments: its
   half extent r from the mask's area A (a shape of half extent r has area k r^2, ``AREA_PER_R2``:
   pi, 4, 2 and 8a - 4a^2 with a = ``CROSS_ARM``) and its centre from the mask's centroid (the
   triangle's centroid lies r/3 below its centre). The template, the pixel centres inside the
   fitted shape (``render.signed_distance < 0``), is compared with the mask by IoU; the highest
   IoU wins and all four are reported. Area and centroid are sums over the whole mask, so a few
   stray or missing edge pixels (noise, blur) barely move them, where a bounding box would move
   by a whole pixel per stray pixel.
6. Size. The winning fit's half extent r. Big objects have r in 14 +- 1, small ones 8 +- 1; the
   threshold is the midpoint between 9 and 13, ``SIZE_THRESHOLD`` = 11, 2 px from either. (On
   clean renders r is measured to within 0.6 px, the centre to within 0.5 px; the small triangle,
   whose thin apex makes its pixel count coarsest, is the worst case.)
7. Position. The nearest ``POSITIONS`` centre to the winning fit's centre. Named centres are
   12 px apart and jitter moves an object at most 2 px per axis, so the margin is 4 px per axis.

The mask's bounding box is reported too, as a diagnostic.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from .render import CROSS_ARM, signed_distance
from .world import ATTRIBUTES, BACKGROUNDS, CHOICES, COLOURS, IMAGE_SIZE, MAX_SIZE_JITTER, POSITIONS, SHAPES, SIZES

BORDER = 2  # width in pixels of the ring whose median is the background colour
OBJECT_PERCENTILE = 99.0  # the smallest object covers 2.4% of the image, so this is an object pixel
# Half the smallest distance between an object colour and a background it may sit on (purple on
# gray, 0.372): an image whose most-different pixels are nearer the background than that holds no object.
MIN_CONTRAST = 0.5 * min(float(np.linalg.norm(np.subtract(c, b)))
                         for name, c in COLOURS.items() for bg, b in BACKGROUNDS.items() if bg != name)
MIN_PIXELS = 24  # a quarter of the smallest object's area (98 px); fewer pixels are a speck, not an object
# Midpoint between the largest small half extent (8 + 1) and the smallest big one (14 - 1): 11 px.
SIZE_THRESHOLD = 0.5 * ((SIZES["small"] + MAX_SIZE_JITTER) + (SIZES["big"] - MAX_SIZE_JITTER))
# Area of each shape of half extent r, over r^2 (see render.py's shapes; the cross is two
# 2r x 2a boxes minus their 2a x 2a overlap, a = CROSS_ARM r).
AREA_PER_R2 = {"circle": np.pi, "square": 4.0, "triangle": 2.0, "cross": 8 * CROSS_ARM - 4 * CROSS_ARM**2}
# Centroid minus centre along y, over r: the triangle (0, -r), (-r, r), (r, r) has its centroid at y = r/3.
CENTROID_OFFSET_Y = {"circle": 0.0, "square": 0.0, "triangle": 1 / 3, "cross": 0.0}
_RANGE_TOLERANCE = 1e-3  # float rounding; callers clamp decoder outputs to the valid range first


@dataclass(frozen=True, eq=False)
class Analysis:
    """What the analyzer read from one image.

    When no object is found (``found`` False: a blank image, or only specks), the object's
    attributes (colour, shape, size, position) are None, ``mask`` is all False, ``bbox`` and
    ``object_rgb`` are None and ``shape_iou`` is empty. The background is always measured.
    """

    found: bool
    background: str
    colour: str | None
    shape: str | None
    size: str | None
    position: str | None
    mask: np.ndarray = field(repr=False)  # (64, 64) bool, read-only
    background_rgb: tuple[float, float, float]  # the border median
    object_rgb: tuple[float, float, float] | None  # the median of the mask's interior
    contrast: float  # the 99th percentile of |p - background|
    pixels: int  # pixels in the mask
    bbox: tuple[int, int, int, int] | None  # the mask's (x0, y0, x1, y1), inclusive pixel indices
    centre: tuple[float, float] | None  # (x, y) of the winning shape's fitted centre, in pixels
    half_extent: float | None  # the winning shape's fitted half extent r, in pixels
    shape_iou: dict[str, float]  # each shape's fitted template's IoU with the mask

    def attributes(self) -> dict[str, str | None]:
        return {name: getattr(self, name) for name in ATTRIBUTES}


def _nearest(rgb: np.ndarray, palette: dict[str, tuple[float, float, float]], exclude: str | None = None) -> str:
    """The name of the palette colour nearest (Euclidean, in RGB) to ``rgb``."""
    names = [n for n in palette if n != exclude]
    distances = [np.linalg.norm(rgb - np.asarray(palette[n])) for n in names]
    return names[int(np.argmin(distances))]


def _neighbours(x: np.ndarray, fill) -> list[np.ndarray]:
    """The (H, W) arrays of each pixel's 4 neighbours (below, above, right, left), ``fill`` past the edges."""
    padded = np.pad(x, 1, constant_values=fill)  # (H + 2, W + 2)
    return [padded[2:, 1:-1], padded[:-2, 1:-1], padded[1:-1, 2:], padded[1:-1, :-2]]


def connected_components(mask: np.ndarray) -> np.ndarray:
    """Label the 4-connected components of a (H, W) bool mask: each pixel of the mask gets the
    smallest flat index of its component, pixels outside it get -1.

    Label propagation with pointer jumping, in numpy: every mask pixel starts as its own label;
    each round it takes the smallest label among itself and its neighbours in the mask, then
    jumps to its label's label (``label = label[label]``), which halves chains of labels. A label
    is always the index of a pixel of the same component, so at the fixed point (no label changes)
    each component carries one label: its smallest index.
    """
    h, w = mask.shape
    big = h * w  # larger than any index: the label of everything outside the mask
    labels = np.where(mask, np.arange(h * w, dtype=np.int32).reshape(h, w), big).astype(np.int32)  # (H, W)
    while True:
        new = labels
        for neighbour in _neighbours(labels, big):
            new = np.minimum(new, neighbour)  # (H, W)
        new[~mask] = big
        flat = new.ravel()
        inside = flat < big
        flat[inside] = flat[flat[inside]]  # pointer jump: take the label of my label's pixel
        if np.array_equal(new, labels):
            return np.where(mask, new, -1)
        labels = new


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of ``mask`` (all False if the mask is empty)."""
    labels = connected_components(mask)
    if not mask.any():
        return mask.copy()
    counts = np.bincount(labels[mask])  # (H * W,) mostly zeros
    return labels == int(np.argmax(counts))


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``mask`` with every region it encloses added to it.

    Holes lie inside the mask's bounding box; ringed by one pixel of background, the box's
    background pixels that connect to that ring (the ring's label, that of its corner 0) are
    outside, every other background pixel of the box is a hole. Working on the box, not the
    whole image, keeps the labelling small."""
    if not mask.any():
        return mask.copy()
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    ringed = np.pad(mask[box], 1)  # (h + 2, w + 2), a False ring around the box
    outside = connected_components(~ringed) == 0  # the ring's component
    filled = mask.copy()
    filled[box] = ~outside[1:-1, 1:-1]
    return filled


def erode(mask: np.ndarray) -> np.ndarray:
    """Mask pixels whose four neighbours are all in the mask."""
    return np.logical_and.reduce([mask, *_neighbours(mask, False)])


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """|a and b| / |a or b| for two bool masks of the same shape; 1.0 if both are empty."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.dtype != bool or b.dtype != bool:
        raise ValueError(f"expected two bool masks of one shape, got {a.dtype} {a.shape} and {b.dtype} {b.shape}")
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union


@dataclass(frozen=True)
class ShapeFit:
    """One shape fitted to a mask by its moments, and how well its template matches the mask."""

    cx: float
    cy: float
    r: float
    iou: float


def fit_shapes(mask: np.ndarray) -> dict[str, ShapeFit]:
    """Fit each shape to a non-empty bool mask by area and centroid; score its template by IoU."""
    ys, xs = np.nonzero(mask)  # (A,) each
    mx, my = xs.mean() + 0.5, ys.mean() + 0.5  # centroid; pixel (i, j) has its centre at (j + 1/2, i + 1/2)
    fits = {}
    for shape in SHAPES:
        r = float(np.sqrt(len(xs) / AREA_PER_R2[shape]))
        cx, cy = float(mx), float(my - CENTROID_OFFSET_Y[shape] * r)
        template = signed_distance(shape, cx, cy, r, mask.shape[0]) < 0  # (64, 64)
        fits[shape] = ShapeFit(cx, cy, r, mask_iou(mask, template))
    return fits


def _to_rgb(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """Validate one image and return it as a float64 (64, 64, 3) array in [0, 1]."""
    if isinstance(image, torch.Tensor):
        if tuple(image.shape) != (3, IMAGE_SIZE, IMAGE_SIZE) or not image.is_floating_point():
            raise ValueError(f"expected a float torch tensor (3, {IMAGE_SIZE}, {IMAGE_SIZE}) in [0, 1], "
                             f"got {image.dtype} {tuple(image.shape)}")
        _check_range(image.detach().cpu().double().numpy(), 0.0, 1.0, "tensor")
        rgb = image.detach().cpu().double().permute(1, 2, 0).numpy()  # (64, 64, 3)
    elif isinstance(image, np.ndarray):
        if image.shape != (IMAGE_SIZE, IMAGE_SIZE, 3) or not np.issubdtype(image.dtype, np.floating):
            raise ValueError(f"expected a float numpy array ({IMAGE_SIZE}, {IMAGE_SIZE}, 3) in [0, 1], "
                             f"got {image.dtype} {image.shape}")
        _check_range(image, 0.0, 1.0, "array")
        rgb = image.astype(np.float64)
    else:
        raise ValueError(f"expected a (64, 64, 3) numpy array or a (3, 64, 64) torch tensor in [0, 1], "
                         f"got {type(image).__name__}")
    return np.clip(rgb, 0.0, 1.0)


def _check_range(values: np.ndarray, low: float, high: float, what: str) -> None:
    if not np.isfinite(values).all():
        raise ValueError(f"the image {what} holds NaN or inf values; expected values in [{low}, {high}]")
    vmin, vmax = float(values.min()), float(values.max())
    if vmin < low - _RANGE_TOLERANCE or vmax > high + _RANGE_TOLERANCE:
        raise ValueError(f"the image {what} has values in [{vmin:.3g}, {vmax:.3g}], expected [{low}, {high}] "
                         f"(clamp decoder outputs first)")


def analyze(image: np.ndarray | torch.Tensor) -> Analysis:
    """Analyze one image: a float (64, 64, 3) numpy array in [0, 1] (``render``'s output) or a
    float (3, 64, 64) torch tensor in [0, 1] (the pipeline's layout: ``sd.text_to_image(...).images[k]``).
    See the module docstring."""
    return _analyze_rgb(_to_rgb(image))


def analyze_batch(images: torch.Tensor, progress: bool = False) -> list[Analysis]:
    """Analyze a float (B, 3, 64, 64) torch tensor in [0, 1], image by image."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or tuple(images.shape[1:]) != (3, IMAGE_SIZE, IMAGE_SIZE) \
            or not images.is_floating_point():
        got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"expected a float torch tensor (B, 3, {IMAGE_SIZE}, {IMAGE_SIZE}) in [0, 1], got {got}")
    array = images.detach().cpu().double().numpy()  # (B, 3, 64, 64)
    _check_range(array, 0.0, 1.0, "batch")
    rgb = np.clip(array.transpose(0, 2, 3, 1), 0.0, 1.0)  # (B, 64, 64, 3)
    return [_analyze_rgb(x) for x in tqdm(rgb, desc="analyze", disable=not progress)]


def _analyze_rgb(rgb: np.ndarray) -> Analysis:
    """Steps 1-7 of the module docstring on a (64, 64, 3) float64 array in [0, 1]."""
    size = rgb.shape[0]
    # 1. Background: the median of the border ring.
    ring = np.ones((size, size), dtype=bool)
    ring[BORDER:-BORDER, BORDER:-BORDER] = False
    bg_rgb = np.median(rgb[ring], axis=0)  # (3,)
    background = _nearest(bg_rgb, BACKGROUNDS)
    # 2. Contrast: how far the most different 1% of pixels lie from the background.
    distance = np.linalg.norm(rgb - bg_rgb, axis=-1)  # (64, 64)
    contrast = float(np.percentile(distance, OBJECT_PERCENTILE))
    empty = np.zeros((size, size), dtype=bool)
    empty.flags.writeable = False
    nothing = Analysis(False, background, None, None, None, None, empty, tuple(map(float, bg_rgb)), None,
                       contrast, 0, None, None, None, {})
    if contrast < MIN_CONTRAST:
        return nothing
    # 3. Mask: project onto the background -> object colour line, keep t > 1/2.
    rough = distance > contrast / 2  # (64, 64)
    obj_rgb = np.median(rgb[rough], axis=0)  # (3,)
    direction = obj_rgb - bg_rgb  # (3,)
    # Every rough pixel lies over contrast/2 from b; a median much nearer b means they lie on all
    # sides of it (no one object colour), and t would divide by almost nothing.
    if np.linalg.norm(direction) < contrast / 4:
        return nothing
    t = (rgb - bg_rgb) @ direction / (direction @ direction)  # (64, 64)
    mask = fill_holes(largest_component(t > 0.5))
    pixels = int(np.count_nonzero(mask))
    if pixels < MIN_PIXELS:
        return nothing
    # 4. Colour: median of the interior, nearest object colour other than the background.
    interior = erode(mask)
    obj_rgb = np.median(rgb[interior if interior.any() else mask], axis=0)  # (3,)
    colour = _nearest(obj_rgb, COLOURS, exclude=background)
    # 5. Shape: the best moment-fitted template. 6-7. Size and position from its fit.
    fits = fit_shapes(mask)
    shape = max(fits, key=lambda name: fits[name].iou)
    fit = fits[shape]
    size_name = "big" if fit.r > SIZE_THRESHOLD else "small"
    position = min(POSITIONS, key=lambda p: np.hypot(fit.cx - POSITIONS[p][0], fit.cy - POSITIONS[p][1]))
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    bbox = (int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1]))
    mask.flags.writeable = False
    return Analysis(True, background, colour, shape, size_name, position, mask, tuple(map(float, bg_rgb)),
                    tuple(map(float, obj_rgb)), contrast, pixels, bbox, (fit.cx, fit.cy), fit.r,
                    {name: f.iou for name, f in fits.items()})


def matches(analysis: Analysis, attributes: dict[str, str]) -> dict[str, bool]:
    """For each attribute a caption names (``world.parse_caption``'s dict), whether the image shows it.

    >>> from toyworld.render import render
    >>> from toyworld.world import Scene, parse_caption
    >>> image = render(Scene("circle", "red", "big", "center", "white"))
    >>> matches(analyze(image), parse_caption("a big blue circle"))
    {'size': True, 'colour': False, 'shape': True}
    """
    if not isinstance(analysis, Analysis):
        raise ValueError(f"expected an Analysis, got {type(analysis).__name__}")
    for name, value in attributes.items():
        if name not in CHOICES:
            raise ValueError(f"unknown attribute {name!r}; expected some of {ATTRIBUTES}")
        if value not in CHOICES[name]:
            raise ValueError(f"{name} {value!r} is not one of {CHOICES[name]}")
    return {name: getattr(analysis, name) == value for name, value in attributes.items()}
