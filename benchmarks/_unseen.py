"""The command-line options of the benchmarks that run on rendered toy images the model never saw
(benchmarks/inversion.py, benchmarks/pnp.py). Not a benchmark itself: run_all.py skips files named _*."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

UNSEEN_SEED = 31415  # any ToyDataset seed but training's 1


def add_unseen_image_args(p: argparse.ArgumentParser, images: int, guidance: float) -> None:
    """--weights, --images, --seed, --steps, --guidance, --quick, --threads."""
    p.add_argument("--weights", type=Path, default=Path("weights/toy"))
    p.add_argument("--images", type=int, default=images)
    p.add_argument("--seed", type=int, default=UNSEEN_SEED, help="ToyDataset seed of the images (not 1: training's)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=guidance)
    p.add_argument("--quick", action="store_true", help="4 images (a smoke run, not the figures)")
    p.add_argument("--threads", type=int, default=None)


def apply_unseen_image_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--quick's 4 images, the checks (an image at least, not training's seed), torch's threads."""
    if args.quick:
        args.images = 4
    if args.images < 1 or args.seed == 1:
        p.error(f"need --images >= 1 and a --seed other than training's 1, got {args.images} and {args.seed}")
    if args.threads:
        torch.set_num_threads(args.threads)
