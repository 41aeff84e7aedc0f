"""The reverse (denoising) process and the ancestral sampler (Ho et al. 2020, section 3.2).

    p_theta(x_{t-1} | x_t) = N(mu_theta(x_t, t), sigma_t^2 I)                         Eq. 1
    mu_theta(x_t, t) = 1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - alpha_bar_t) eps_theta)  Eq. 11

Eq. 11 is the posterior mean of Eq. 7 with x_0 replaced by the network's estimate of it, so one
function serves the three parameterisations: turn the output into x_0 (parameterization.py),
then take the posterior mean. Section 3.2 offers two variances with the same results:
``fixed_small`` sigma_t^2 = beta_tilde_t (optimal for a deterministic x_0) and ``fixed_large``
sigma_t^2 = beta_t (optimal for x_0 ~ N(0, I)). No noise is added on the last step (Algorithm 2).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from tqdm import tqdm

from .checks import check_choice, check_like, check_timesteps
from .forward import broadcast_to_batch, posterior_coefficients
from .parameterization import PREDICTION_TYPES, predict_x0_and_eps
from .schedule import NoiseSchedule, make_timesteps, timestep_pairs

VARIANCES = ("fixed_small", "fixed_large")

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""A denoiser: ``model(x_t, t)`` with ``t`` an int64 tensor of shape (B,), returning x_t's shape."""


class StepOutput(NamedTuple):
    sample: torch.Tensor  # the latent after the step: x_{t_prev} when sampling, x_t when inverting
    pred_x0: torch.Tensor  # the step's estimate of x_0


def draw_noise(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise shaped like ``like``; one ``randn`` call, as diffusers draws it.

    The noise is drawn on the generator's device (the CPU by default) and then moved, so a seed
    gives the same numbers whatever device the model runs on.
    """
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(like.shape, generator=generator, dtype=like.dtype, device=device).to(like.device)


def ddpm_step(
    schedule: NoiseSchedule,
    model_output: torch.Tensor,
    x_t: torch.Tensor,
    t: int,
    t_prev: int | None = None,
    *,
    prediction_type: str = "epsilon",
    variance: str = "fixed_small",
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> StepOutput:
    """Sample x_{t_prev} ~ p_theta(x_{t_prev} | x_t) (Algorithm 2, line 4; mean of Eq. 11).

    ``t_prev`` defaults to ``t - 1``; a larger jump uses the respaced posterior (see forward.py).
    ``t_prev = -1`` is the last step: the mean is returned without noise.
    """
    check_choice("variance", variance, VARIANCES)
    t_tensor = check_timesteps(t, schedule.num_train_timesteps)
    if t_tensor.ndim != 0:
        raise ValueError(f"ddpm_step takes one timestep for the whole batch, got t of shape {tuple(t_tensor.shape)}")
    t_prev = int(t_tensor) - 1 if t_prev is None else int(t_prev)
    pred_x0, _ = predict_x0_and_eps(schedule, model_output, x_t, t_tensor, prediction_type)
    coef_x0, coef_xt, beta_tilde = posterior_coefficients(schedule, t_tensor, torch.tensor(t_prev))
    mean = broadcast_to_batch(coef_x0, x_t) * pred_x0 + broadcast_to_batch(coef_xt, x_t) * x_t
    if t_prev < 0:
        return StepOutput(mean, pred_x0)
    if variance == "fixed_small":
        var = beta_tilde
    else:  # fixed_large: the (effective) beta of the jump
        var = 1 - schedule.alpha_bar[t_tensor] / schedule.alpha_bar[t_prev]
    if noise is None:
        noise = draw_noise(x_t, generator)
    check_like(x_t, "x_t", noise=noise)
    return StepOutput(mean + broadcast_to_batch(var.sqrt(), x_t) * noise, pred_x0)


MAX_SEED = 2**63 - 1


def seeded_generator(seed: int | None, generator: torch.Generator | None = None) -> torch.Generator | None:
    """The generator a sampler draws from: ``torch.Generator().manual_seed(seed)``, or ``generator``.

    A seed is an int in [0, 2^63 - 1]. ``manual_seed`` takes 64 bits and wraps what lies outside
    that range onto it, so 2^63 would draw seed 0's noise and -1 that of 2^64 - 1: such seeds are
    refused rather than silently aliased."""
    if seed is not None and generator is not None:
        raise ValueError("give seed or generator, not both")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if seed is None:
        return generator
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be an int in [0, 2^63 - 1], got {seed!r} (larger or negative seeds would "
                         f"alias others: 2^63 draws the noise of seed 0)")
    return torch.Generator().manual_seed(seed)


def initial_noise(
    shape: tuple[int, ...] | None,
    x_T: torch.Tensor | None,
    generator: torch.Generator | None,
    dtype: torch.dtype,
    device: torch.device | str,
) -> torch.Tensor:
    """The sampler's starting point: the given ``x_T`` (checked against ``shape`` if both are given)
    or one ``randn`` of ``shape``."""
    if x_T is None:
        if shape is None:
            raise ValueError("give the shape of the samples, or a starting x_T")
        return draw_noise(torch.empty(shape, dtype=dtype, device=device), generator)
    if shape is not None and tuple(x_T.shape) != tuple(shape):
        raise ValueError(f"x_T has shape {tuple(x_T.shape)}, expected {tuple(shape)}")
    return x_T


def sampling_loop(
    model: Model,
    x: torch.Tensor,
    timesteps: torch.Tensor,
    step: Callable[[torch.Tensor, torch.Tensor, int, int], StepOutput],
    *,
    desc: str,
    progress: bool,
    return_trajectory: bool,
) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
    """Walk down ``timesteps``: at each (t, t_prev), ``x = step(model(x, t), x, t, t_prev).sample``."""
    trajectory = [x]
    for t, t_prev in tqdm(timestep_pairs(timesteps), desc=desc, disable=not progress):
        out = model(x, torch.full((x.shape[0],), t, dtype=torch.long, device=x.device))
        x = step(out, x, t, t_prev).sample
        trajectory.append(x)
    return (x, trajectory) if return_trajectory else x


@torch.no_grad()
def ddpm_sample(
    model: Model,
    shape: tuple[int, ...] | None,
    schedule: NoiseSchedule,
    num_inference_steps: int | None = None,
    *,
    spacing: str = "leading",
    steps_offset: int = 0,
    prediction_type: str = "epsilon",
    variance: str = "fixed_small",
    generator: torch.Generator | None = None,
    x_T: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    progress: bool = True,
    return_trajectory: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
    """The ancestral sampler (Algorithm 2): x_T ~ N(0, I), then ``ddpm_step`` down to x_0.

    ``num_inference_steps=None`` visits all T timesteps; fewer visit the ``spacing`` sub-sequence.
    ``steps_offset`` defaults to 0 here (all T steps fit only without an offset); ``ddim_sample``
    defaults to SD's offset of 1. ``shape`` may be None when ``x_T`` is given.
    ``x_T`` defaults to one ``randn`` of ``shape`` from ``generator``; the step noise then
    comes from the same generator. With ``return_trajectory`` also returns [x_T, ..., x_0].
    """
    T = schedule.num_train_timesteps
    timesteps = make_timesteps(num_inference_steps or T, T, spacing, steps_offset)
    check_choice("variance", variance, VARIANCES)
    check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
    x = initial_noise(shape, x_T, generator, dtype, device)

    def step(out: torch.Tensor, x: torch.Tensor, t: int, t_prev: int) -> StepOutput:
        return ddpm_step(schedule, out, x, t, t_prev, prediction_type=prediction_type,
                         variance=variance, generator=generator)

    return sampling_loop(model, x, timesteps, step, desc="DDPM", progress=progress,
                         return_trajectory=return_trajectory)
