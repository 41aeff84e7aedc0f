"""The shipped toy model (weights/toy/): it loads through the SD path, samples deterministically,
follows its prompts, and ``make demo`` (python -m toyworld.demo) runs on it."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ldm.pipeline import StableDiffusion
from toyworld import demo
from toyworld.evaluate import prompt_fidelity, vae_psnr
from toyworld.model import TOY_GUIDANCE_SCALE, toy_text_config, toy_unet_config, toy_vae_config
from weights.io import read_safetensors_header

WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "toy"

# benchmarks/toy_quality.py over 400 samples (seed 0, guidance TOY_GUIDANCE_SCALE) measured the
# rate below for "colour AND shape"; the README and the closing note carry the full table.
BENCHMARK_COLOUR_AND_SHAPE = 0.93  # 372 of 400, measured 2026-11-24 on the shipped weights


@pytest.fixture(scope="module")
def pipe() -> StableDiffusion:
    return StableDiffusion.from_folder(WEIGHTS)


def test_shipped_folder_is_small_and_holds_the_toy_configs(pipe):
    total = sum(p.stat().st_size for p in WEIGHTS.rglob("*") if p.is_file())
    assert total <= 40 * 2**20, f"weights/toy is {total / 2**20:.1f} MB; the issue allows 40 MB"
    assert pipe.unet.config == toy_unet_config()
    assert pipe.text_encoder.config == toy_text_config()
    assert pipe.vae.config.block_out_channels == toy_vae_config().block_out_channels
    assert pipe.image_size == 64
    for part in ("unet", "vae", "text_encoder"):  # safetensors with every tensor named in the header
        header = read_safetensors_header(WEIGHTS / f"{part}.safetensors")
        assert len([k for k in header if k != "__metadata__"]) == len(getattr(pipe, part).state_dict())


def test_same_seed_same_bits_and_seeds_differ(pipe):
    prompts = ["a big red circle", "a small blue square at the top left"]
    a = pipe.text_to_image(prompts, guidance_scale=TOY_GUIDANCE_SCALE, steps=20, seed=7, progress=False).images
    b = pipe.text_to_image(prompts, guidance_scale=TOY_GUIDANCE_SCALE, steps=20, seed=7, progress=False).images
    c = pipe.text_to_image(prompts, guidance_scale=TOY_GUIDANCE_SCALE, steps=20, seed=8, progress=False).images
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 0.1  # another seed draws another image


def test_vae_reconstructs_fresh_images(pipe):
    psnr = vae_psnr(pipe.vae, n=100, seed=77)
    # benchmarks/toy_quality.py measures the mean over 500 images (>= 30 dB, the goal); 100
    # images have a standard error of the mean of ~0.3 dB (per-image std ~3 dB), so 29 dB is a
    # bound that a sound model passes and a broken one (garbage decodes at ~10-15 dB) cannot.
    assert psnr.mean() >= 29.0, f"mean PSNR {psnr.mean():.2f} dB"


def test_small_sample_prompt_fidelity(pipe):
    f = prompt_fidelity(pipe, n=40, guidance_scale=TOY_GUIDANCE_SCALE, steps=50, seed=1234, batch=40, progress=False)
    rate, count = f.rate("colour", "shape")
    # The benchmark's rate p over 400 samples; 40 samples have a binomial standard deviation of
    # sqrt(p (1 - p) / 40). Three of those below p fails a sound model about once in 700 runs
    # (and the seed is fixed, so the outcome is the same every run).
    p = BENCHMARK_COLOUR_AND_SHAPE
    bound = p - 3 * math.sqrt(p * (1 - p) / 40)
    assert count == 40 and rate >= bound, f"colour AND shape in {rate:.0%} of 40 samples, bound {bound:.0%}"


def test_make_demo_writes_its_figure(tmp_path, capsys):
    out = tmp_path / "demo.png"
    assert demo.main(["--weights", str(WEIGHTS), "--out", str(out), "--no-progress"]) == 0
    with Image.open(out) as image:
        assert image.format == "PNG" and np.asarray(image.convert("L")).std() > 10
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "DDIM inversion" in printed


def test_demo_without_weights_says_where_they_should_be(tmp_path):
    with pytest.raises(SystemExit, match="holds no model"):
        demo.main(["--weights", str(tmp_path), "--out", str(tmp_path / "x.png")])
