"""Guidance: trading diversity for fidelity to a condition y (a class, a caption).

Classifier-free guidance (Ho & Salimans 2022, "Classifier-Free Diffusion Guidance", Eq. 6) trains
one network both with the condition and without it (the condition dropped, e.g. an empty
caption, for a fraction of the training examples) and mixes its two predictions at sampling time:

    eps_tilde(x_t, y) = (1 + w) eps(x_t, y) - w eps(x_t)                       Ho & Salimans Eq. 6

Stable Diffusion (and diffusers) write the same thing with s = 1 + w, the "guidance scale":

    eps_tilde = eps(x_t) + s (eps(x_t, y) - eps(x_t))

s = 1 is the plain conditional model; s > 1 extrapolates away from the unconditional prediction,
sharpening p(y | x_t)^(s - 1) p(x_t | y) (Ho & Salimans section 3.2); s = 0 is the unconditional model.
"""
from __future__ import annotations

import torch


def classifier_free_guidance(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, scale: float) -> torch.Tensor:
    """eps_uncond + scale * (eps_cond - eps_uncond)  (Ho & Salimans Eq. 6 with scale = 1 + w)."""
    if eps_uncond.shape != eps_cond.shape:
        raise ValueError(f"eps_uncond {tuple(eps_uncond.shape)} and eps_cond {tuple(eps_cond.shape)} must have the same shape")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale != scale:
        raise ValueError(f"guidance scale must be a real number, got {scale!r}")
    return eps_uncond + scale * (eps_cond - eps_uncond)
