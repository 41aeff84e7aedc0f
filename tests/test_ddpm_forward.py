"""The forward process (Ho et al. Eq. 2, 4) and its posterior (Eq. 6-7)."""
from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler

from ddpm import NoiseSchedule, q_posterior, q_sample, q_step

SCHEDULES = ["linear", "scaled_linear", "cosine"]


@pytest.mark.parametrize("name", SCHEDULES)
def test_eq4_moments_follow_from_iterating_eq2(name):
    """Iterating Eq. 2 maps mean m and variance v to sqrt(1-beta) m and (1-beta) v + beta.
    Starting from (x_0, 0) this must give Eq. 4's (sqrt(alpha_bar_t) x_0, 1 - alpha_bar_t) at every t."""
    sched = NoiseSchedule.from_name(name)
    mean, var = torch.tensor(1.0, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64)
    means, variances = [], []
    for beta in sched.betas:
        mean, var = (1 - beta).sqrt() * mean, (1 - beta) * var + beta
        means.append(mean)
        variances.append(var)
    torch.testing.assert_close(torch.stack(means), sched.alpha_bar.sqrt(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(torch.stack(variances), 1 - sched.alpha_bar, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("t", [0, 10, 250, 999])
def test_closed_form_q_sample_agrees_with_iterated_q_step(sd_schedule, t):
    """Monte Carlo: x_t from t+1 applications of Eq. 2 has Eq. 4's moments.

    N = 20000 chains for each of 2 starting values. The sample mean has standard error
    sqrt((1 - ab) / N) and the sample variance sqrt(2 / (N - 1)) (1 - ab); 5 standard errors is a
    tolerance a correct implementation exceeds with probability below 1e-6 (and the seed is fixed)."""
    g = torch.Generator().manual_seed(t)
    N = 20000
    x0 = torch.tensor([-1.5, 0.7], dtype=torch.float64).repeat(N, 1)  # (N, 2)
    x = x0.clone()
    for s in range(t + 1):
        x = q_step(sd_schedule, x, s, torch.randn(x.shape, generator=g, dtype=torch.float64))
    ab = sd_schedule.alpha_bar[t]
    closed = q_sample(sd_schedule, x0, t, torch.randn(x.shape, generator=g, dtype=torch.float64))
    for samples in (x, closed):
        se_mean = ((1 - ab) / N).sqrt()
        se_var = (2 / (N - 1)) ** 0.5 * (1 - ab)
        assert (samples.mean(0) - ab.sqrt() * x0[0]).abs().max() < 5 * se_mean
        assert (samples.var(0) - (1 - ab)).abs().max() < 5 * se_var


def gaussian_conditioning(mu1, mu2, s11, s12, s22, x2):
    """x1 | x2 for jointly Gaussian (x1, x2): mean mu1 + s12/s22 (x2 - mu2), variance s11 - s12^2/s22."""
    return mu1 + s12 / s22 * (x2 - mu2), s11 - s12**2 / s22


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("t, t_prev", [(1, 0), (500, 499), (999, 998), (981, 961), (40, 0), (0, -1), (20, -1)])
def test_posterior_equals_gaussian_conditioning(name, t, t_prev):
    """Eq. 6-7 against the joint Gaussian of (x_{t_prev}, x_t) given x_0, conditioned directly.

    Given x_0: x_prev = sqrt(ab_prev) x_0 + sqrt(1 - ab_prev) e1 and
    x_t = sqrt(ab_t / ab_prev) x_prev + sqrt(1 - ab_t / ab_prev) e2, so
    Var(x_prev) = 1 - ab_prev, Cov(x_prev, x_t) = sqrt(ab_t / ab_prev) (1 - ab_prev), Var(x_t) = 1 - ab_t."""
    sched = NoiseSchedule.from_name(name)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 5, generator=g, dtype=torch.float64)
    x_t = torch.randn(3, 5, generator=g, dtype=torch.float64)
    ab_t = sched.alpha_bar[t]
    ab_prev = sched.alpha_bar[t_prev] if t_prev >= 0 else torch.tensor(1.0, dtype=torch.float64)
    mean_ref, var_ref = gaussian_conditioning(
        mu1=ab_prev.sqrt() * x0, mu2=ab_t.sqrt() * x0,
        s11=1 - ab_prev, s12=(ab_t / ab_prev).sqrt() * (1 - ab_prev), s22=1 - ab_t, x2=x_t,
    )
    mean, var = q_posterior(sched, x0, x_t, t, None if t_prev == t - 1 else t_prev)
    torch.testing.assert_close(mean, mean_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(var, var_ref, rtol=1e-10, atol=1e-15)


def test_posterior_per_item_timesteps(sd_schedule):
    g = torch.Generator().manual_seed(1)
    x0, x_t = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    t = torch.tensor([5, 700])
    mean, var = q_posterior(sd_schedule, x0, x_t, t)
    for i in range(2):
        m_i, v_i = q_posterior(sd_schedule, x0[i:i + 1], x_t[i:i + 1], int(t[i]))
        torch.testing.assert_close(mean[i:i + 1], m_i)
        torch.testing.assert_close(var[i].reshape(()), v_i)
    assert var.shape == (2, 1, 1, 1)


def test_q_sample_matches_diffusers_add_noise(sd_schedule):
    ref = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    g = torch.Generator().manual_seed(2)
    x0, noise = torch.randn(4, 4, 8, 8, generator=g), torch.randn(4, 4, 8, 8, generator=g)
    t = torch.tensor([0, 10, 500, 999])
    # diffusers' float32 cumprod differs from ours by < 6e-5 relative (see test_ddpm_schedule).
    torch.testing.assert_close(q_sample(sd_schedule, x0, t, noise), ref.add_noise(x0, noise, t), rtol=1e-5, atol=1e-5)


def test_bad_input(sd_schedule):
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"t out of range: got values in \[0, 1000\], expected integers in \[0, 999\]"):
        q_sample(sd_schedule, x, torch.tensor([0, 1000]), x)
    with pytest.raises(ValueError, match=r"t out of range: got values in \[-1, -1\]"):
        q_sample(sd_schedule, x, -1, x)
    with pytest.raises(ValueError, match="t must hold integer timesteps, got dtype torch.float32"):
        q_sample(sd_schedule, x, torch.tensor([0.5, 1.0]), x)
    with pytest.raises(ValueError, match=r"noise has shape \(2, 4\), expected the shape of x0 \(2, 3\)"):
        q_sample(sd_schedule, x, 3, torch.zeros(2, 4))
    with pytest.raises(ValueError, match="noise has dtype torch.float64, expected the dtype of x0"):
        q_sample(sd_schedule, x, 3, torch.zeros(2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"t has shape \(3,\), expected a scalar or shape \(2,\)"):
        q_step(sd_schedule, x, torch.tensor([1, 2, 3]), x)
    with pytest.raises(ValueError, match="x0 must be a floating-point tensor"):
        q_sample(sd_schedule, torch.zeros(2, 3, dtype=torch.long), 3, torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="t_prev must be earlier than t"):
        q_posterior(sd_schedule, x, x, 5, 7)
