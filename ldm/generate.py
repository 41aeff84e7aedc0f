"""Text to image from the command line.

    python -m ldm.generate --weights weights/sd-v1-5 --prompt "a photo of a cat" --seed 0 --out cat.png

Several ``--prompt`` make one batch (the same seed draws one noise tensor for all of them, as the
pipeline does) and one image at ``--out``: a grid with the prompts left to right, in the order
given. ``--negative`` is given once (for every prompt) or once per prompt. The image is written to
a temporary file and renamed, so an interrupted run never leaves half a PNG; the command prints
where it wrote.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from PIL import Image

from weights.atomic import write_with

from .images import image_grid
from .pipeline import SAMPLERS


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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ldm.generate", description=__doc__.split("\n")[0])
    p.add_argument("--weights", required=True, type=Path, help="a model folder written by python -m weights.convert")
    p.add_argument("--prompt", required=True, action="append", help="the text; repeat for a batch")
    p.add_argument("--negative", action="append", help="negative prompt: once for all prompts, or once per prompt")
    p.add_argument("--seed", type=seed_value, default=0, help="seed of the starting noise (default 0)")
    p.add_argument("--steps", type=positive_int, default=50, help="sampling steps (default 50)")
    p.add_argument("--guidance", type=finite_float, default=7.5, help="classifier-free guidance scale (default 7.5)")
    p.add_argument("--sampler", choices=SAMPLERS, default="ddim", help="default ddim")
    p.add_argument("--eta", type=non_negative_float, default=0.0, help="DDIM's eta (default 0: deterministic)")
    p.add_argument("--height", type=image_side, help="default: the model's image_size")
    p.add_argument("--width", type=image_side, help="default: the model's image_size")
    p.add_argument("--device", type=device_name, default="cpu", help="torch device (default cpu)")
    p.add_argument("--out", type=Path, default=Path("image.png"), help="the image to write (default image.png)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if problem := output_problem(args.out):
        parser.error(f"--out {problem}")
    if args.negative is not None and len(args.negative) not in (1, len(args.prompt)):
        parser.error(f"--negative given {len(args.negative)} times; give it once or once per --prompt "
                     f"({len(args.prompt)})")
    if not args.weights.is_dir():
        parser.error(f"--weights {args.weights} is not a folder")
    if args.sampler == "ddpm" and args.eta:
        parser.error("--eta applies to --sampler ddim only")

    from weights.io import WeightsFileError

    from .pipeline import StableDiffusion

    negative = args.negative[0] if args.negative and len(args.negative) == 1 else args.negative
    try:
        pipe = StableDiffusion.from_folder(args.weights, device=args.device)
        result = pipe.text_to_image(args.prompt, negative_prompt=negative, guidance_scale=args.guidance,
                                    steps=args.steps, sampler=args.sampler, eta=args.eta, seed=args.seed,
                                    height=args.height, width=args.width, progress=not args.quiet)
    except (ValueError, FileNotFoundError, WeightsFileError, json.JSONDecodeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    images = result.to_pil()
    try:
        save_atomically(images[0] if len(images) == 1 else image_grid(images), args.out)
    except OSError as e:  # a full disk, a permission that changed while sampling
        print(f"error: could not write {args.out}: {e}", file=sys.stderr)
        return 2
    what = "image" if len(images) == 1 else f"grid of {len(images)} images, left to right: {args.prompt}"
    print(f"wrote {args.out} ({what})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
