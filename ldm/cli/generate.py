"""Text to image from the command line.

    python -m ldm.cli.generate --weights weights/sd-v1-5 --prompt "a photo of a cat" --seed 0 --out cat.png

Several ``--prompt`` make one batch (the same seed draws one noise tensor for all of them, as the
pipeline does) and one image at ``--out``: the images left to right, each captioned with its prompt, in the order
given. ``--negative`` is given once (for every prompt) or once per prompt. The image is written to
a temporary file and renamed, so an interrupted run never leaves half a PNG; the command prints
where it wrote.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ldm.pipeline import SAMPLERS

from .common import (captioned_grid, device_name, finite_float, image_side, non_negative_float, output_problem,
                     positive_int, save_atomically, seed_value)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ldm.cli.generate", description=__doc__.split("\n")[0])
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

    from ldm.pipeline import StableDiffusion

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
        save_atomically(images[0] if len(images) == 1 else captioned_grid(images, list(args.prompt)), args.out)
    except OSError as e:  # a full disk, a permission that changed while sampling
        print(f"error: could not write {args.out}: {e}", file=sys.stderr)
        return 2
    what = "image" if len(images) == 1 else f"grid of {len(images)} images, left to right: {args.prompt}"
    print(f"wrote {args.out} ({what})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
