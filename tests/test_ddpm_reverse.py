"""Parameterisations, the reverse step (Ho et al. Eq. 11, Algorithm 2), the loss (Eq. 14), and parity
with diffusers' DDPMScheduler."""
from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler

from ddpm import (
    NoiseSchedule,
    ddpm_sample,
    ddpm_step,
    diffusion_loss,
    eps_to_x0,
    predict_x0_and_eps,
    q_posterior,
    q_sample,
    v_target,
    v_to_eps,
    v_to_x0,
    x0_to_eps,
)
from tests.conftest import assert_trajectories_close, fake_model, point_oracle

TS = torch.tensor([0, 1, 17, 250, 500, 981, 999])


@pytest.fixture
def truth(sd_schedule):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(len(TS), 3, 4, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(len(TS), 3, 4, 4, generator=g, dtype=torch.float64)
    return x0, eps, q_sample(sd_schedule, x0, TS, eps)


def test_eps_x0_v_conversions_round_trip(sd_schedule, truth):
    """From x_t and any one of (eps, x_0, v) the other two are recovered exactly (float64)."""
    x0, eps, x_t = truth
    v = v_target(sd_schedule, x0, TS, eps)
    tol = dict(rtol=1e-9, atol=1e-9)  # float64; x_0 from eps divides by sqrt(ab) >= 0.068 at t = 999
    torch.testing.assert_close(eps_to_x0(sd_schedule, x_t, TS, eps), x0, **tol)
    torch.testing.assert_close(x0_to_eps(sd_schedule, x_t, TS, x0), eps, **tol)
    torch.testing.assert_close(v_to_x0(sd_schedule, x_t, TS, v), x0, **tol)
    torch.testing.assert_close(v_to_eps(sd_schedule, x_t, TS, v), eps, **tol)
    for kind, out in [("epsilon", eps), ("sample", x0), ("v_prediction", v)]:
        got_x0, got_eps = predict_x0_and_eps(sd_schedule, out, x_t, TS, kind)
        torch.testing.assert_close(got_x0, x0, **tol)
        torch.testing.assert_close(got_eps, eps, **tol)


def test_v_is_the_velocity_of_the_angle(sd_schedule, truth):
    """With a = cos(phi), s = sin(phi): x_t = cos(phi) x_0 + sin(phi) eps and v = d x_t / d phi."""
    x0, eps, _ = truth
    phi = torch.atan2((1 - sd_schedule.alpha_bar[TS]).sqrt(), sd_schedule.alpha_bar[TS].sqrt()).reshape(-1, 1, 1, 1)
    torch.testing.assert_close(v_target(sd_schedule, x0, TS, eps), -torch.sin(phi) * x0 + torch.cos(phi) * eps)


@pytest.mark.parametrize("t", [1, 10, 500, 999])
def test_eq11_is_the_posterior_mean_at_the_predicted_x0(sd_schedule, truth, t):
    """mu_theta = 1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - ab_t) eps) (Eq. 11) equals Eq. 7 at x_0_hat."""
    _, eps, x_t = truth
    beta, ab = sd_schedule.betas[t], sd_schedule.alpha_bar[t]
    eq11 = (x_t - beta / (1 - ab).sqrt() * eps) / (1 - beta).sqrt()
    mean, _ = q_posterior(sd_schedule, eps_to_x0(sd_schedule, x_t, t, eps), x_t, t)
    torch.testing.assert_close(ddpm_step(sd_schedule, eps, x_t, t, t - 1, noise=torch.zeros_like(x_t)).sample, eq11)
    torch.testing.assert_close(mean, eq11)


def test_step_variances(sd_schedule, truth):
    """fixed_small adds sqrt(beta_tilde) z, fixed_large sqrt(beta) z (section 3.2); the last step adds none."""
    _, eps, x_t = truth
    z = torch.ones_like(x_t)
    t = 500
    mean = ddpm_step(sd_schedule, eps, x_t, t, noise=torch.zeros_like(x_t)).sample
    _, beta_tilde = q_posterior(sd_schedule, x_t, x_t, t)
    small = ddpm_step(sd_schedule, eps, x_t, t, noise=z, variance="fixed_small").sample
    large = ddpm_step(sd_schedule, eps, x_t, t, noise=z, variance="fixed_large").sample
    torch.testing.assert_close(small - mean, beta_tilde.sqrt().expand_as(z))
    torch.testing.assert_close(large - mean, sd_schedule.betas[t].sqrt().expand_as(z).to(z.dtype))
    last = ddpm_step(sd_schedule, eps, x_t, 0, -1, noise=z)
    torch.testing.assert_close(last.sample, last.pred_x0)  # at t = 0 the mean is x_0_hat itself


def test_sampler_with_an_oracle_returns_the_data_point(sd_schedule):
    """If all data sits at c, the exact eps-prediction makes every x_0 estimate equal c, and the last
    step returns it exactly (its x_t coefficient is 0 because 1 - alpha_bar_prev = 0)."""
    c = torch.tensor([[0.3, -1.2, 2.0]], dtype=torch.float64)
    for steps in (None, 50):
        x, traj = ddpm_sample(point_oracle(sd_schedule, c), (1, 3), sd_schedule, steps, dtype=torch.float64,
                              generator=torch.Generator().manual_seed(0), progress=False, return_trajectory=True)
        torch.testing.assert_close(x, c, rtol=1e-9, atol=1e-9)
        assert len(traj) == (steps or 1000) + 1


def diffusers_ddpm_trajectory(ref, model, x, generator):
    out = [x]
    for t in ref.timesteps:
        x = ref.step(model(x, t.repeat(x.shape[0])), t, x, generator=generator).prev_sample
        out.append(x)
    return out


@pytest.mark.parametrize(
    "steps, offset, variance, prediction_type",
    [(50, 1, "fixed_small", "epsilon"), (50, 1, "fixed_small", "v_prediction"), (20, 1, "fixed_small", "sample"),
     (50, 0, "fixed_large", "epsilon"), (1000, 0, "fixed_small", "epsilon")],
)
def test_parity_with_diffusers_ddpm_scheduler(steps, offset, variance, prediction_type):
    """SD config (scaled_linear 0.00085-0.012, 1000 steps, clip_sample=False), same seeded noise:
    every step of the whole trajectory agrees. (fixed_large is compared with offset 0: diffusers
    adds noise at its last step t = 1 when offset = 1, where Algorithm 2 adds none.)"""
    ref = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=offset,
                        clip_sample=False, variance_type=variance, prediction_type=prediction_type)
    ref.set_timesteps(steps)
    ours_sched = NoiseSchedule.from_name("scaled_linear")
    shape = (2, 4, 8, 8)
    x_ref = torch.randn(shape, generator=torch.Generator().manual_seed(7))
    ref_traj = diffusers_ddpm_trajectory(ref, fake_model, x_ref, torch.Generator().manual_seed(8))
    g = torch.Generator().manual_seed(8)
    _, traj = ddpm_sample(fake_model, shape, ours_sched, steps, steps_offset=offset, variance=variance,
                          prediction_type=prediction_type, x_T=x_ref, generator=g, progress=False,
                          return_trajectory=True)
    assert len(traj) == len(ref_traj)
    assert_trajectories_close(traj, ref_traj)


def test_ddpm_loss_is_eq14(sd_schedule):
    """L_simple with the oracle is exactly 0 for point data; for any model it is the MSE to eps."""
    c = torch.full((8, 3), 0.5)
    assert diffusion_loss(point_oracle(sd_schedule, c[:1]), c, sd_schedule).item() < 1e-10
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    zero_model = lambda x, t: torch.zeros_like(x)  # noqa: E731
    loss = diffusion_loss(zero_model, c, sd_schedule, generator=g1)
    torch.randint(0, 1000, (8,), generator=g2)  # the same draws as inside: t, then eps
    eps = torch.randn(c.shape, generator=g2)
    torch.testing.assert_close(loss, (eps**2).mean())


def test_bad_input(sd_schedule):
    x = torch.zeros(1, 3)
    with pytest.raises(ValueError, match="unknown variance 'learned'"):
        ddpm_step(sd_schedule, x, x, 5, variance="learned")
    with pytest.raises(ValueError, match="unknown prediction_type 'score'"):
        ddpm_step(sd_schedule, x, x, 5, prediction_type="score")
    with pytest.raises(ValueError, match="one timestep for the whole batch"):
        ddpm_step(sd_schedule, x, x, torch.tensor([5]))
    with pytest.raises(ValueError, match=r"noise has shape \(1, 4\), expected the shape of x_t \(1, 3\)"):
        ddpm_step(sd_schedule, x, x, 5, noise=torch.zeros(1, 4))
    with pytest.raises(ValueError, match=r"x_T has shape \(1, 3\), expected \(2, 3\)"):
        ddpm_sample(fake_model, (2, 3), sd_schedule, 10, x_T=x, progress=False)
    with pytest.raises(ValueError, match="num_inference_steps=2000 is more than num_train_timesteps=1000"):
        ddpm_sample(fake_model, (1, 3), sd_schedule, 2000, progress=False)
    with pytest.raises(ValueError, match="model_output has shape"):
        ddpm_step(sd_schedule, torch.zeros(1, 2), x, 5)
