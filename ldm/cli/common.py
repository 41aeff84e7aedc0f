"""What the command-line programs share: argument types, model loading, figures and saving.

The programs are ``python -m ldm.cli.generate`` (text to image), ``python -m ldm.cli.p2p``
(Prompt-to-Prompt) and ``python -m ldm.cli.pnp`` (Plug-and-Play and SDEdit); each imports its
common parts from here and none imports another. Argument types raise
``argparse.ArgumentTypeError`` with what they expected, so a bad flag ends in a one-line message
and exit status 2 before any network loads.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
from pathlib import Path
from typing import Callable

from PIL import Image, ImageDraw, ImageFont

from ldm.figure_style import GAP, enlargement
from weights.atomic import write_with


# ---------------------------------------------------------------------------------- argument types
def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def image_side(text: str) -> int:
    from weights.model_folder import MAX_IMAGE_SIDE

    value = positive_int(text)
    if value % 8 or value > MAX_IMAGE_SIDE:
        raise argparse.ArgumentTypeError(f"expected a multiple of 8 (the VAE's factor) up to {MAX_IMAGE_SIDE}, "
                                         f"got {value}")
    return value


def device_name(text: str) -> str:
    """A torch device this machine has: cpu, cuda, cuda:N, mps."""
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a torch device such as cpu or cuda, got {text!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text}: this machine has no CUDA device (torch {torch.__version__}); use cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"{text}: this machine has {torch.cuda.device_count()} CUDA devices")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(f"{text}: Apple's MPS is not available here; use cpu")
    if device.type not in ("cpu", "cuda", "mps"):
        raise argparse.ArgumentTypeError(f"{text}: expected cpu, cuda[:N] or mps")
    return text


def seed_value(text: str) -> int:
    """A seed for torch.Generator.manual_seed: an int in [0, 2^63 - 1] (others alias, ddpm.reverse)."""
    from ddpm.reverse import MAX_SEED

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer seed, got {text!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"expected a seed in [0, 2^63 - 1], got {value} (others alias: 2^63 would "
                                         f"draw the noise of seed 0)")
    return value


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value != value or abs(value) == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text}")
    return value


def fraction(text: str) -> float:
    value = finite_float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction of the steps in [0, 1], got {text}")
    return value


# ---------------------------------------------------------------------------------- outputs
FIGURE_TYPES = (".png", ".jpg", ".jpeg", ".pdf", ".svg")  # what the demos' matplotlib figures are written as


def output_problem(path: Path, kind: str = "image") -> str | None:
    """Why ``path`` cannot receive the output (checked before any heavy work), or None.

    ``kind`` "image": PIL must be able to *write* the extension's format (it reads more than it
    writes: .psd, for one); "figure": one of ``FIGURE_TYPES``. The path must not be a folder, and
    the nearest existing folder above it must be a writable folder."""
    ext = path.suffix.lower()
    if kind == "image":
        Image.init()
        fmt = Image.registered_extensions().get(ext)
        if fmt is None or fmt not in Image.SAVE:
            return f"{path}: cannot write {ext or 'an image without an extension'}; use e.g. .png or .jpg"
    elif ext not in FIGURE_TYPES:
        return f"{path}: cannot write a figure as {ext or 'a file without an extension'}; use one of {FIGURE_TYPES}"
    if path.is_dir():
        return f"{path} is a folder; expected the path of a file to write"
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        return f"{path} cannot be created: {folder} is a file, not a folder"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"{path} cannot be written: no permission to write in {folder}"
    return None


def save_atomically(image: Image.Image, path: Path) -> None:
    """Write the image atomically (weights/atomic.py), its format chosen by ``path``'s extension."""
    write_with(path, image.save)


# ---------------------------------------------------------------------------------- figures
def wrap(text: str, font: ImageFont.ImageFont, width: float) -> list[str]:
    """Words of ``text`` in lines no wider than ``width`` pixels (a longer word gets a line of its own)."""
    lines: list[str] = []
    for word in text.split():
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def captioned_grid(images: list[Image.Image], captions: list[str]) -> Image.Image:
    """One row of same-sized panels, each with its caption wrapped beneath it, for a projector.

    Small panels are enlarged by pixel repetition (nearest neighbour, ``ldm.figure_style``) to at
    least ``PANEL_PIXELS`` on a side, so a 64 px sample shows its pixels at 192 px; panels are
    ``GAP`` px apart on white, and the captions take a band under them, its height the longest
    caption's, in a font of 1/12 of the panel (16 px at 192 px).
    """
    if len(images) != len(captions) or not images:
        raise ValueError(f"expected one caption per image, got {len(images)} images and {len(captions)} captions")
    sizes = {im.size for im in images}
    if len(sizes) != 1:
        raise ValueError(f"expected images of one size, got {sorted(sizes)}")
    k = enlargement(min(images[0].size))
    images = [im.convert("RGB").resize((im.width * k, im.height * k), Image.NEAREST) for im in images]
    (w, h), margin = images[0].size, max(4, images[0].width // 32)
    font = ImageFont.load_default(size=max(12, w // 12))
    ascent, descent = font.getmetrics()
    lines = [wrap(c, font, w - 2 * margin) for c in captions]
    band = max(map(len, lines)) * (ascent + descent) + 2 * margin
    grid = Image.new("RGB", (len(images) * w + (len(images) + 1) * GAP, GAP + h + band), "white")
    draw = ImageDraw.Draw(grid)
    for n, (image, text) in enumerate(zip(images, lines)):
        x = GAP + n * (w + GAP)
        grid.paste(image, (x, GAP))
        for row, line in enumerate(text):
            draw.text((x + w / 2, GAP + h + margin + row * (ascent + descent)), line, fill="black", font=font,
                      anchor="ma")
    return grid


def stack_figures(figures) -> Image.Image:
    """Matplotlib figures rendered to PNG and stacked top to bottom, left-aligned, on white."""
    rows = []
    for fig in figures:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", facecolor="white")
        buffer.seek(0)
        rows.append(Image.open(buffer).convert("RGB"))
    stacked = Image.new("RGB", (max(r.width for r in rows), sum(r.height for r in rows)), "white")
    for n, row in enumerate(rows):
        stacked.paste(row, (0, sum(r.height for r in rows[:n])))
    return stacked


# ---------------------------------------------------------------------------------- the model
def load_model(weights: Path, device: str, check: Callable[[dict, object], None]):
    """The model folder's pipeline, after ``check(manifest, tokenizer)`` has vetted the arguments
    against the cheap parts (it calls ``parser.error``, exit 2, on bad ones); a folder that is no
    model, or whose networks do not load, prints its error and gives None (the CLIs exit with 2)."""
    from ldm.pipeline import StableDiffusion
    from weights.io import WeightsFileError
    from weights.model_folder import load_tokenizer, read_manifest

    load_errors = (ValueError, FileNotFoundError, WeightsFileError, json.JSONDecodeError)
    try:
        manifest = read_manifest(weights)  # a folder that is no model is named as such, before its tokenizer
        tokenizer = load_tokenizer(weights)
    except load_errors as e:
        print(f"error: {e}", file=sys.stderr)
        return None
    check(manifest, tokenizer)
    try:
        return StableDiffusion.from_folder(weights, device=device)
    except load_errors as e:
        print(f"error: {e}", file=sys.stderr)
        return None
