"""DDIM (Song et al. 2021): Eq. 12 and 16, the eta = 1 / DDPM identity, exactness with an oracle,
inversion, and parity with diffusers' DDIMScheduler."""
from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler

from ddim import ddim_invert, ddim_invert_step, ddim_sample, ddim_sigma, ddim_step
from ddpm import NoiseSchedule, ddpm_step, make_timesteps, q_posterior, q_sample, timestep_pairs
from tests.conftest import assert_trajectories_close, fake_model, gaussian_oracle, point_oracle

PAIRS = [(999, 998), (500, 499), (1, 0), (981, 961), (501, 481), (21, 1)]


@pytest.mark.parametrize("t, t_prev", PAIRS)
def test_eta1_sigma_is_the_ddpm_posterior_std(sd_schedule, t, t_prev):
    """sigma_t(1)^2 (Eq. 16) equals beta_tilde of Eq. 7, for adjacent and for respaced pairs."""
    zero = torch.zeros(1, dtype=torch.float64)
    _, beta_tilde = q_posterior(sd_schedule, zero, zero, t, t_prev)
    sigma = ddim_sigma(sd_schedule, t, t_prev, eta=1.0, final_alpha_bar=1.0)
    torch.testing.assert_close(sigma, beta_tilde.sqrt().reshape(()), rtol=1e-12, atol=0)
    assert ddim_sigma(sd_schedule, t, t_prev, eta=0.0) == 0


@pytest.mark.parametrize("t, t_prev", PAIRS)
def test_eta1_step_is_the_ddpm_ancestral_step(sd_schedule, t, t_prev):
    """With eta = 1, Eq. 12 is the DDPM step with fixed_small variance, given the same noise."""
    g = torch.Generator().manual_seed(t)
    x_t, eps, z = (torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64) for _ in range(3))
    ddim = ddim_step(sd_schedule, eps, x_t, t, t_prev, eta=1.0, final_alpha_bar=1.0, noise=z).sample
    ddpm = ddpm_step(sd_schedule, eps, x_t, t, t_prev, variance="fixed_small", noise=z).sample
    torch.testing.assert_close(ddim, ddpm, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("start", [999, 640, 200, 37])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_eta0_with_an_eps_oracle_returns_x0_exactly(sd_schedule, start, spacing):
    """If eps_theta returns the true noise of x_t = sqrt(ab) x_0 + sqrt(1 - ab) eps, every x_0 estimate
    (Eq. 9) is x_0, every DDIM step stays on that line at the new noise level, and the last step lands
    on x_0 itself (final_alpha_bar = 1). Float64, from any starting t."""
    g = torch.Generator().manual_seed(start)
    x0 = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)
    eps = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)
    timesteps = make_timesteps(25, 1000, spacing)
    timesteps = torch.cat([torch.tensor([start]), timesteps[timesteps < start]])
    x = q_sample(sd_schedule, x0, start, eps)
    oracle = point_oracle(sd_schedule, x0)
    for t, t_prev in timestep_pairs(timesteps):
        out = ddim_step(sd_schedule, oracle(x, torch.tensor([t])), x, t, t_prev, final_alpha_bar=1.0)
        torch.testing.assert_close(out.pred_x0, x0, rtol=1e-9, atol=1e-9)
        expected = x0 if t_prev < 0 else q_sample(sd_schedule, x0, t_prev, eps)
        torch.testing.assert_close(out.sample, expected, rtol=1e-9, atol=1e-9)
        x = out.sample


def test_inversion_then_sampling_reconstructs_with_error_shrinking_in_steps(sd_schedule):
    """DDIM inversion followed by DDIM sampling with the same model returns to the start. The
    inversion's approximation eps(x_{t_prev}, t) ~ eps(x_t, t) costs an error that shrinks like 1/n
    (the step is first order): n x error stays within a factor 1.5 of its value at n = 5.
    The model is the exact eps-predictor for Gaussian data N(0.5, 0.6^2)."""
    model = gaussian_oracle(sd_schedule, mu=0.5, sigma=0.6)
    x0 = 0.5 + 0.6 * torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    errors = {}
    for n in (5, 10, 25, 50, 100, 250):
        latents = ddim_invert(model, x0, sd_schedule, n, progress=False)
        assert len(latents) == n + 1 and torch.equal(latents[0], x0)
        recon, traj = ddim_sample(model, x0.shape, sd_schedule, n, x_T=latents[-1], progress=False,
                                  return_trajectory=True)
        errors[n] = (recon - x0).abs().max().item()
        # latents[-1 - i] is the latent sampling meets after i steps: no intermediate is further
        # off than the end (a pairing shifted by one step is twice as far).
        worst = max((a - b).abs().max().item() for a, b in zip(traj, latents[::-1]))
        assert worst <= 1.1 * errors[n]
    steps = sorted(errors)
    assert all(errors[a] > errors[b] for a, b in zip(steps, steps[1:])), errors
    assert all(n * errors[n] < 1.5 * 5 * errors[5] for n in steps), errors


def test_inversion_step_is_the_ode_step_reversed(sd_schedule):
    """Eq. 13 of Song et al.: x_t / sqrt(ab_t) = x_prev / sqrt(ab_prev) + (sqrt(1/ab_t - 1) - sqrt(1/ab_prev - 1)) eps."""
    g = torch.Generator().manual_seed(2)
    x_prev, eps = torch.randn(3, 5, generator=g, dtype=torch.float64), torch.randn(3, 5, generator=g, dtype=torch.float64)
    t_prev, t = 480, 500
    ab, ab_prev = sd_schedule.alpha_bar[t], sd_schedule.alpha_bar[t_prev]
    expected = ab.sqrt() * (x_prev / ab_prev.sqrt() + ((1 / ab - 1).sqrt() - (1 / ab_prev - 1).sqrt()) * eps)
    torch.testing.assert_close(ddim_invert_step(sd_schedule, eps, x_prev, t_prev, t).sample, expected)


def diffusers_ddim_trajectory(ref, model, x, eta, generator):
    out = [x]
    for t in ref.timesteps:
        x = ref.step(model(x, t.repeat(x.shape[0])), t, x, eta=eta, generator=generator).prev_sample
        out.append(x)
    return out


@pytest.mark.parametrize(
    "steps, spacing, eta, prediction_type",
    [(50, "leading", 0.0, "epsilon"), (50, "leading", 0.5, "epsilon"), (50, "leading", 1.0, "epsilon"),
     (50, "trailing", 0.0, "epsilon"), (20, "leading", 0.0, "v_prediction"), (10, "leading", 0.3, "sample"),
     (250, "leading", 0.0, "epsilon")],
)
def test_parity_with_diffusers_ddim_scheduler(steps, spacing, eta, prediction_type):
    """SD config: scaled_linear 0.00085-0.012, 1000 steps, steps_offset=1, set_alpha_to_one=False,
    clip_sample=False. Identical timesteps, and every step of the trajectory agrees (seeded noise
    for eta > 0: one randn of the latent batch per step, drawn from the same generator)."""
    ref = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1,
                        set_alpha_to_one=False, clip_sample=False, timestep_spacing=spacing,
                        prediction_type=prediction_type)
    ref.set_timesteps(steps)
    assert torch.equal(make_timesteps(steps, 1000, spacing, 1), ref.timesteps.long())
    x_T = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(11))
    ref_traj = diffusers_ddim_trajectory(ref, fake_model, x_T, eta, torch.Generator().manual_seed(12))
    _, traj = ddim_sample(fake_model, x_T.shape, NoiseSchedule.from_name("scaled_linear"), steps, eta=eta,
                          spacing=spacing, prediction_type=prediction_type, x_T=x_T,
                          generator=torch.Generator().manual_seed(12), progress=False, return_trajectory=True)
    assert len(traj) == len(ref_traj)
    assert_trajectories_close(traj, ref_traj)


def test_seeded_sampling_is_bitwise_reproducible(sd_schedule):
    runs = [ddim_sample(fake_model, (2, 4, 8, 8), sd_schedule, 10, eta=0.7,
                        generator=torch.Generator().manual_seed(5), progress=False) for _ in range(2)]
    assert torch.equal(*runs)


def test_bad_input(sd_schedule):
    x = torch.zeros(1, 3)
    with pytest.raises(ValueError, match="eta must be >= 0, got -0.1"):
        ddim_sample(fake_model, (1, 3), sd_schedule, 10, eta=-0.1, progress=False)
    with pytest.raises(ValueError, match="t_prev must satisfy -1 <= t_prev < t, got t=5 t_prev=5"):
        ddim_step(sd_schedule, x, x, 5, 5)
    with pytest.raises(ValueError, match="inversion goes up in t"):
        ddim_invert_step(sd_schedule, x, x, 10, 5)
    with pytest.raises(ValueError, match="num_inference_steps=1001 is more than num_train_timesteps=1000"):
        ddim_sample(fake_model, (1, 3), sd_schedule, 1001, progress=False)
    with pytest.raises(ValueError, match="num_inference_steps=5000 is more than"):
        ddim_invert(fake_model, x, sd_schedule, 5000, progress=False)
    with pytest.raises(ValueError, match=r"final_alpha_bar must lie in \(0, 1\], got 1.5"):
        ddim_step(sd_schedule, x, x, 5, 4, final_alpha_bar=1.5)
    with pytest.raises(ValueError, match="unknown prediction_type 'x0'"):
        ddim_sample(fake_model, (1, 3), sd_schedule, 10, prediction_type="x0", progress=False)
    with pytest.raises(ValueError, match=r"noise has shape \(2, 3\), expected the shape of x_t \(1, 3\)"):
        ddim_step(sd_schedule, x, x, 5, 4, eta=1.0, noise=torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"t out of range: got values in \[1000, 1000\]"):
        ddim_step(sd_schedule, x, x, 1000, 4)
    with pytest.raises(ValueError, match="give the shape of the samples, or a starting x_T"):
        ddim_sample(fake_model, None, sd_schedule, 10, progress=False)
    with pytest.raises(ValueError, match="x0 must be a floating-point tensor"):
        ddim_invert(fake_model, torch.zeros(1, 3, dtype=torch.long), sd_schedule, 10, progress=False)
