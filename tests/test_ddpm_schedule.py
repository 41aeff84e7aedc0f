"""Schedules and timestep spacings: the maths, the SD checkpoint values and diffusers' choices."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from ddpm import NoiseSchedule, make_timesteps, previous_timesteps

# float32 rounding of a product of n numbers: each multiplication adds at most 2^-24 relative
# error, so a cumulative product of 1000 factors is within 1000 * 2^-24 (6e-5) of the exact one.
CUMPROD_F32_BOUND = 1000 * 2.0**-24


def test_sd_schedule_equals_the_alphas_cumprod_sd_checkpoints_store():
    """SD v1 checkpoints store ``alphas_cumprod`` computed by the latent-diffusion code:
    betas = linspace(sqrt(0.00085), sqrt(0.012), 1000) ** 2 in float64, cumprod of (1 - beta) in
    float64, then saved as a float32 buffer. Recomputed here independently with numpy."""
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
    stored = torch.from_numpy(np.cumprod(1.0 - betas).astype(np.float32))
    ours = NoiseSchedule.from_name("scaled_linear").alpha_bar.float()
    assert torch.equal(ours, stored)  # bit for bit
    # Landmarks anyone can check: the first entry is 1 - beta_start, the last about 0.00466.
    assert ours[0].item() == pytest.approx(1 - 0.00085, rel=1e-7)
    assert ours[-1].item() == pytest.approx(0.0046600983, rel=1e-6)


def test_sd_schedule_matches_diffusers_float32_cumprod():
    """diffusers accumulates the product in float32: equal within the float32 rounding bound."""
    ref = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).alphas_cumprod
    ours = NoiseSchedule.from_name("scaled_linear").alpha_bar
    rel = ((ours - ref.double()) / ours).abs().max().item()
    assert rel < CUMPROD_F32_BOUND


@pytest.mark.parametrize("name, diffusers_name", [("linear", "linear"), ("cosine", "squaredcos_cap_v2")])
def test_betas_match_diffusers(name, diffusers_name):
    ref = DDPMScheduler(beta_schedule=diffusers_name).betas
    ours = NoiseSchedule.from_name(name).betas
    # diffusers computes linear betas in float32 (2^-24 relative) and cosine ones in float64 then
    # casts; both are a float32 rounding away from ours.
    torch.testing.assert_close(ours.float(), ref.float(), rtol=2**-23, atol=0)


def test_cosine_schedule_is_eq17_of_nichol_dhariwal():
    """alpha_bar_t = f(t) / f(0), f(t) = cos^2(((t/T + s) / (1 + s)) pi / 2) (Eq. 17), where unclipped.

    Code index t is the paper's t + 1 (alpha_bar after t + 1 steps)."""
    T, s = 1000, 0.008
    sched = NoiseSchedule.from_name("cosine", T)

    def f(t):
        return math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2

    expected = torch.tensor([f(t + 1) / f(0) for t in range(T)], dtype=torch.float64)
    unclipped = sched.betas < 0.999
    assert unclipped.sum() > 990  # only the last few betas are clipped
    # The product of unclipped betas telescopes exactly; compare where no clip happened before.
    first_clip = int((~unclipped).nonzero()[0]) if (~unclipped).any() else T
    torch.testing.assert_close(sched.alpha_bar[:first_clip], expected[:first_clip], rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", ["linear", "scaled_linear", "cosine"])
def test_alpha_bar_and_snr_decrease(name):
    sched = NoiseSchedule.from_name(name)
    ab = sched.alpha_bar
    assert bool((ab > 0).all() and (ab < 1).all())
    assert bool((ab[1:] < ab[:-1]).all())
    assert bool((sched.snr[1:] < sched.snr[:-1]).all())
    torch.testing.assert_close(sched.snr, ab / (1 - ab))


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("n, offset", [(50, 1), (50, 0), (10, 0), (20, 1), (7, 1), (1000, 0)])
def test_timesteps_match_diffusers(spacing, n, offset):
    ref = DDIMScheduler(num_train_timesteps=1000, steps_offset=offset, timestep_spacing=spacing)
    ref.set_timesteps(n)
    ours = make_timesteps(n, 1000, spacing, offset)
    assert torch.equal(ours, ref.timesteps.long())


def test_sd_default_timesteps():
    ts = make_timesteps(50, 1000, "leading", 1)
    assert ts[:3].tolist() == [981, 961, 941] and ts[-1].item() == 1 and len(ts) == 50
    assert previous_timesteps(ts)[-2:].tolist() == [1, -1]


def test_unknown_schedule_name():
    with pytest.raises(ValueError, match="unknown schedule 'sqrt'.*'linear', 'scaled_linear', 'cosine'"):
        NoiseSchedule.from_name("sqrt")


def test_bad_betas():
    with pytest.raises(ValueError, match=r"betas must lie in \(0, 1\)"):
        NoiseSchedule(torch.tensor([0.1, 1.5], dtype=torch.float64))
    with pytest.raises(ValueError, match="num_train_timesteps must be a positive int"):
        NoiseSchedule.from_name("linear", 0)


def test_more_sampling_steps_than_training_steps():
    with pytest.raises(ValueError, match="num_inference_steps=1001 is more than num_train_timesteps=1000"):
        make_timesteps(1001, 1000)
    with pytest.raises(ValueError, match="num_inference_steps must be a positive int, got 0"):
        make_timesteps(0, 1000)


def test_offset_pushing_timesteps_out_of_range():
    with pytest.raises(ValueError, match=r"timesteps in \[1, 1000\], expected them inside \[0, 999\]"):
        make_timesteps(1000, 1000, "leading", 1)


def test_unknown_spacing():
    with pytest.raises(ValueError, match="unknown timestep spacing 'karras'"):
        make_timesteps(50, 1000, "karras")
