"""The sinusoidal timestep embedding (Vaswani et al. 2017, section 3.5; DDPM appendix B)."""
from __future__ import annotations

import math

import pytest
import torch
from diffusers.models.embeddings import get_timestep_embedding

from unet.embeddings import timestep_embedding


def test_formula_cosines_first():
    """emb(t)_i = cos(t max_period^(-i/half)) for i < half, then the sines, written out element by element."""
    t, dim = torch.tensor([0, 3, 999]), 8
    emb = timestep_embedding(t, dim)
    half = dim // 2
    for row, tt in enumerate(t.tolist()):
        for i in range(half):
            freq = 10000.0 ** (-i / half)
            assert emb[row, i].item() == pytest.approx(math.cos(tt * freq), abs=1e-5)
            assert emb[row, half + i].item() == pytest.approx(math.sin(tt * freq), abs=1e-5)


def test_matches_diffusers_sd_setting():
    """SD v1: flip_sin_to_cos=True, downscale_freq_shift=0 (float32 arguments up to t * 1 = 999)."""
    t = torch.tensor([0, 1, 17, 500, 981, 999])
    ref = get_timestep_embedding(t, 320, flip_sin_to_cos=True, downscale_freq_shift=0)
    torch.testing.assert_close(timestep_embedding(t, 320), ref, rtol=0, atol=1e-6)


def test_bad_input():
    with pytest.raises(ValueError, match="timestep embedding dim must be even, got 7"):
        timestep_embedding(torch.tensor([1]), 7)
    with pytest.raises(ValueError, match=r"t must be a scalar or of shape \(B,\), got shape \(2, 2\)"):
        timestep_embedding(torch.zeros(2, 2), 8)
