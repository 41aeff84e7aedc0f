"""Images in and out of the pipeline: any common image -> a (1, 3, H, W) tensor in [0, 1], and back.

The networks see images as float tensors; people hand over files, PIL images and numpy arrays.
:func:`load_image` turns each of these into one convention, the pipeline's:

    (1, 3, H, W) float32, RGB, values in [0, 1], H and W multiples of ``multiple``

(the VAE works in [-1, 1]: the pipeline maps x -> 2 x - 1 on the way in and back on the way out).

What it accepts, and how each becomes RGB in [0, 1]:

    str / Path           a file PIL can read (EXIF rotation applied), then as a PIL image
    PIL.Image            8-bit modes: RGB, L, 1, P, CMYK, YCbCr ... -> RGB; grey replicated to the three channels
    numpy array          (H, W) grey, (H, W, 3) RGB or (H, W, 4) RGBA; uint8 (0..255) or float in [0, 1]
    torch tensor         (3, H, W) or (1, 3, H, W), float in [0, 1] (not [-1, 1]: map those with (x + 1) / 2)

Transparency (RGBA, LA, PA, P with a transparent colour) is composited onto white,
rgb = alpha * rgb + (1 - alpha) * 1, which is how an image viewer shows it; dropping alpha would
instead reveal whatever colour the transparent pixels happen to store.

Sizes. The VAE divides H and W by 8 and SD v1's U-Net by 8 more, so the pipeline needs multiples
of 64 (of 32 for the toy model); ``multiple`` says which. Nothing is resized silently:

- with ``height`` and ``width``: the image is centre-cropped to that aspect ratio, then resized
  (antialiased bilinear), as Prompt-to-Prompt's notebooks crop to a square and resize to 512;
- without: it is centre-cropped down to the nearest multiple (e.g. 65 x 50 -> 64 x 48 at multiple 8);

and either change raises a ``UserWarning`` naming the old and the new size (width x height).
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

ImageLike = Union[str, Path, Image.Image, np.ndarray, torch.Tensor]
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


MAX_IMAGE_PIXELS = 4096 * 4096  # 16.8 M pixels (200 MB as float32 RGB); SD works at 512 x 512


def check_pixels(width: int, height: int, what: str) -> None:
    if width * height > MAX_IMAGE_PIXELS:
        raise ValueError(f"{what} is {width} x {height} = {width * height} pixels, more than this library reads "
                         f"({MAX_IMAGE_PIXELS}, 4096 x 4096); downscale it first (SD works at 512 x 512)")


def read_image_file(path: str | Path) -> Image.Image:
    """Open an image file fully (not lazily), with its EXIF orientation applied; clear errors otherwise.

    The size in the file's header is checked before any pixel is decoded, so a file claiming
    100000 x 100000 pixels (a decompression bomb) costs nothing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file {path} does not exist" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:  # reads the header only
                check_pixels(*image.size, f"image {path}")
                image.load()
                return ImageOps.exif_transpose(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ValueError(f"image {path} is too large to decode safely ({e}); downscale it first") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as e:  # SyntaxError: PIL's word for some corrupt files
        raise ValueError(f"{path} is not an image PIL can read (PNG, JPEG, ...): {e}") from e


def pil_to_array(image: Image.Image) -> np.ndarray:
    """A PIL image of any mode -> (H, W, 3) RGB or (H, W, 4) RGBA uint8."""
    if image.mode.startswith(("I", "F")):  # PIL's convert("RGB") would clip these at 255
        raise ValueError(f"PIL mode {image.mode!r} (16/32-bit or float grey) is not read here: its range is "
                         f"ambiguous; convert it to 8 bits (mode 'L') or to a float array in [0, 1] first")
    has_alpha = image.mode in ALPHA_MODES or (image.mode == "P" and "transparency" in image.info)
    return np.asarray(image.convert("RGBA" if has_alpha else "RGB"))


def array_to_rgb(array: np.ndarray, what: str) -> np.ndarray:
    """(H, W), (H, W, 3) or (H, W, 4); uint8 or float in [0, 1] -> (H, W, 3) float32 in [0, 1]."""
    if array.ndim == 2:
        array = array[:, :, None]  # (H, W, 1)
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ValueError(f"{what} has shape {array.shape}; expected (H, W) grey, (H, W, 3) RGB or (H, W, 4) RGBA")
    if array.dtype == np.uint8:
        x = array.astype(np.float32) / 255.0
    elif np.issubdtype(array.dtype, np.floating):
        x = array.astype(np.float32)
        if x.size and not (np.isfinite(x).all() and x.min() >= 0.0 and x.max() <= 1.0):
            raise ValueError(f"{what} is a float array with values in [{np.nanmin(x):.3g}, {np.nanmax(x):.3g}]; "
                             f"expected [0, 1] (or uint8 0..255)")
    else:
        raise ValueError(f"{what} has dtype {array.dtype}; expected uint8 (0..255) or float in [0, 1]")
    if x.shape[2] == 1:
        x = np.repeat(x, 3, axis=2)  # (H, W, 3): grey replicated
    elif x.shape[2] == 4:
        rgb, alpha = x[:, :, :3], x[:, :, 3:]
        x = alpha * rgb + (1.0 - alpha)  # (H, W, 3): composited onto white
    return x


def to_rgb_tensor(image: ImageLike) -> tuple[torch.Tensor, str]:
    """Any accepted input -> ((1, 3, H, W) float32 in [0, 1], a name for messages)."""
    if isinstance(image, (str, Path)):
        what = f"image {image}"
        image = read_image_file(image)
    else:
        what = f"the {type(image).__name__} image"
    if isinstance(image, Image.Image):
        check_pixels(*image.size, what)
        image = pil_to_array(image)
    if isinstance(image, np.ndarray):
        if image.ndim >= 2:
            check_pixels(image.shape[1], image.shape[0], what)
        rgb = array_to_rgb(image, what)  # (H, W, 3)
        return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None], what  # (1, 3, H, W)
    if isinstance(image, torch.Tensor):
        x = image.detach()
        if x.ndim == 3:
            x = x[None]  # (1, 3, H, W)
        if x.ndim != 4 or x.shape[:2] != (1, 3) or not x.is_floating_point():
            raise ValueError(f"an image tensor must be float (3, H, W) or (1, 3, H, W), got {x.dtype} "
                             f"{tuple(image.shape)}")
        check_pixels(x.shape[-1], x.shape[-2], what)
        if x.numel() and not (bool(torch.isfinite(x).all()) and x.min() >= 0 and x.max() <= 1):
            raise ValueError(f"an image tensor must hold values in [0, 1], got [{x.min().item():.3g}, "
                             f"{x.max().item():.3g}]; map [-1, 1] images with (x + 1) / 2")
        return x.float().cpu(), what
    raise ValueError(f"cannot read an image from a {type(image).__name__}; expected a path, a PIL image, "
                     f"a numpy array or a torch tensor")


def center_crop(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The central (height, width) window of x (B, C, H, W)."""
    top, left = (x.shape[-2] - height) // 2, (x.shape[-1] - width) // 2
    return x[..., top:top + height, left:left + width]  # (B, C, height, width)


def load_image(image: ImageLike, height: int | None = None, width: int | None = None,
               multiple: int = 8) -> torch.Tensor:
    """Any accepted image -> (1, 3, H, W) float32 RGB in [0, 1], H and W multiples of ``multiple``.

    See the module docstring for the inputs and for how the size is chosen; a size change warns.
    """
    if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1:
        raise ValueError(f"multiple must be a positive int, got {multiple!r}")
    if (height is None) != (width is None):
        raise ValueError(f"give both height and width, or neither; got height={height!r} width={width!r}")
    for name, value in (("height", height), ("width", width)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < multiple
                                  or value % multiple):
            raise ValueError(f"{name} must be a positive multiple of {multiple}, got {value!r}")
    x, what = to_rgb_tensor(image)  # (1, 3, H, W)
    h, w = x.shape[-2:]
    if height is None:
        height, width = h - h % multiple, w - w % multiple
        if height == 0 or width == 0:
            raise ValueError(f"{what} is {w}x{h} (width x height); it must be at least {multiple} pixels each way")
        x = center_crop(x, height, width)  # (1, 3, height, width)
        how = "centre-cropped"
    elif (h, w) != (height, width):
        scale = min(h / height, w / width)  # the largest window of the target's aspect ratio
        crop_h, crop_w = min(h, round(height * scale)), min(w, round(width * scale))
        x = center_crop(x, crop_h, crop_w)  # (1, 3, crop_h, crop_w)
        x = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
        x = x.clamp(0, 1)  # (1, 3, height, width); bilinear stays in range, the antialias filter may not quite
        how = "centre-cropped to the aspect ratio and resized"
    if (h, w) != (height, width):
        warnings.warn(f"{what} is {w}x{h} (width x height); {how} to {width}x{height}", stacklevel=2)
    return x.contiguous()


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [0, 1] -> B RGB PIL images, rounding to 8 bits."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected a (B, 3, H, W) image tensor, got "
                         f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
    pixels = (images.detach().clamp(0, 1) * 255).round().to(torch.uint8)  # (B, 3, H, W)
    return [Image.fromarray(p.permute(1, 2, 0).cpu().numpy()) for p in pixels]  # each (H, W, 3)


def image_grid(images: Sequence[Image.Image], columns: int | None = None) -> Image.Image:
    """Paste same-sized images into a grid, row by row (one row when ``columns`` is None)."""
    if not images:
        raise ValueError("image_grid needs at least one image")
    sizes = {im.size for im in images}
    if len(sizes) != 1:
        raise ValueError(f"image_grid needs images of one size, got {sorted(sizes)}")
    columns = len(images) if columns is None else columns
    if columns < 1:
        raise ValueError(f"columns must be >= 1, got {columns}")
    (w, h), rows = images[0].size, math.ceil(len(images) / columns)
    grid = Image.new("RGB", (columns * w, rows * h), "white")
    for i, im in enumerate(images):
        grid.paste(im, ((i % columns) * w, (i // columns) * h))
    return grid
