"""Measuring the toy model: VAE reconstruction PSNR and prompt fidelity judged by the analyzer.

The analyzer (toyworld/analyze.py) plays the part CLIP score plays for SD: it reads the colour,
shape, size, position and background back from a generated image, and a sample "follows its
prompt" on an attribute when the analyzer finds the attribute the prompt names. Prompts always
name the colour and the shape; size, position and background are each named with probability
1/2, so the figures for them are over the prompts that name them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from ldm.vae import AutoencoderKL

from .analyze import analyze_batch, matches
from .render import ToyDataset
from .world import caption, parse_caption, random_scene

NAME_PROBABILITY = 0.5  # how often a fidelity prompt names each of size, position, background


def psnr_db(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB between images in [0, 1]: 10 log10(1 / MSE)."""
    mse = (x - y).square().flatten(1).mean(1)  # (B,)
    return 10 * torch.log10(1 / mse.clamp_min(1e-12))


@torch.no_grad()
def vae_psnr(vae: AutoencoderKL, n: int = 500, seed: int = 2024, batch: int = 100) -> torch.Tensor:
    """PSNR of x vs D(E(x)) (posterior mean) over ``n`` freshly rendered images, on the [0, 1] scale."""
    data, out = ToyDataset(seed), []
    for i in range(0, n, batch):
        x = data.batch(range(i, min(i + batch, n)))[0]  # (b, 3, 64, 64) in [0, 1]
        x_hat = vae.decode(vae.encode(x * 2 - 1).mean).clamp(-1, 1)  # (b, 3, 64, 64): the VAE works in [-1, 1]
        out.append(psnr_db((x_hat + 1) / 2, x))
    return torch.cat(out)


def fidelity_prompts(n: int, seed: int) -> list[str]:
    """``n`` prompts naming colour and shape, and each other attribute with probability 1/2."""
    rng = np.random.default_rng(seed)
    prompts = []
    for _ in range(n):
        scene = random_scene(rng)
        omit = {a for a in ("size", "position", "background") if rng.random() >= NAME_PROBABILITY}
        prompts.append(caption(scene, omit))
    return prompts


@dataclass
class Fidelity:
    """How often the analyzer finds what the prompts ask for."""

    prompts: list[str]
    images: torch.Tensor  # (n, 3, 64, 64) in [0, 1]
    checks: list[dict[str, bool]] = field(default_factory=list)

    def rate(self, *attributes: str) -> tuple[float, int]:
        """(fraction of the prompts naming all ``attributes`` whose sample has all of them, count)."""
        relevant = [c for c in self.checks if all(a in c for a in attributes)]
        if not relevant:
            return float("nan"), 0
        return float(np.mean([all(c[a] for a in attributes) for c in relevant])), len(relevant)

    def summary(self) -> dict[str, tuple[float, int]]:
        return {"colour AND shape": self.rate("colour", "shape"), "colour": self.rate("colour"),
                "shape": self.rate("shape"), "size": self.rate("size"), "position": self.rate("position"),
                "background": self.rate("background")}


def prompt_fidelity(pipe, n: int = 400, guidance_scale: float = 5.0, steps: int = 50, seed: int = 0,
                    batch: int = 50, progress: bool = True) -> Fidelity:
    """Sample one image per prompt of :func:`fidelity_prompts` (seeds ``seed``, ``seed + 1``, ... per
    batch of ``batch`` prompts) with DDIM and classifier-free guidance, and check each with the analyzer."""
    if n < 1 or batch < 1:
        raise ValueError(f"n and batch must be >= 1, got n={n}, batch={batch}")
    prompts = fidelity_prompts(n, seed)
    images = []
    for k, i in enumerate(tqdm(range(0, n, batch), desc="fidelity", disable=not progress)):
        result = pipe.text_to_image(prompts[i:i + batch], guidance_scale=guidance_scale, steps=steps,
                                    seed=seed + k, progress=False)
        images.append(result.images.cpu())
    images = torch.cat(images)  # (n, 3, 64, 64) in [0, 1]
    analyses = analyze_batch(images)
    checks = [matches(a, parse_caption(p)) for a, p in zip(analyses, prompts)]
    return Fidelity(prompts, images, checks)
