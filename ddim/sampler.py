"""The DDIM sampler (Song, Meng & Ermon 2021, "Denoising Diffusion Implicit Models", section 4).

DDIM writes alpha_t for DDPM's alpha_bar_t; here the code keeps DDPM's names. One step from t to
the previous visited timestep t' (section 4.2: any descending sub-sequence tau works):

    x_0_hat = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)                       Eq. 9
    x_t'    = sqrt(alpha_bar_t') x_0_hat                       "predicted x_0"
            + sqrt(1 - alpha_bar_t' - sigma_t^2) eps           "direction pointing to x_t"
            + sigma_t z,   z ~ N(0, I)                         "random noise"             Eq. 12
    sigma_t(eta) = eta sqrt((1 - alpha_bar_t') / (1 - alpha_bar_t)) sqrt(1 - alpha_bar_t / alpha_bar_t')  Eq. 16

eta = 0 is deterministic (an implicit model); eta = 1 makes sigma_t the DDPM posterior standard
deviation sqrt(beta_tilde_t), and the step is DDPM's ancestral step.

After the last visited timestep the sampler lands on "t' = -1" with alpha_bar = ``final_alpha_bar``:
1 for DDPM-style sampling to the clean image, or ``alpha_bar[0]`` as SD v1 does
(diffusers' ``set_alpha_to_one=False``), which is the default here.
"""
from __future__ import annotations

import torch

from ddpm.checks import check_choice, check_like, check_timesteps
from ddpm.forward import broadcast_to_batch
from ddpm.parameterization import PREDICTION_TYPES, predict_x0_and_eps
from ddpm.reverse import Model, StepOutput, draw_noise, initial_noise, sampling_loop
from ddpm.schedule import NoiseSchedule, make_timesteps


def resolve_final_alpha_bar(schedule: NoiseSchedule, final_alpha_bar: float | None) -> float:
    """``None`` means SD v1's choice, alpha_bar[0]; otherwise a number in (0, 1]."""
    if final_alpha_bar is None:
        return float(schedule.alpha_bar[0])
    if not 0 < final_alpha_bar <= 1:
        raise ValueError(f"final_alpha_bar must lie in (0, 1], got {final_alpha_bar}")
    return float(final_alpha_bar)


def ddim_sigma(schedule: NoiseSchedule, t: int, t_prev: int, eta: float, final_alpha_bar: float | None = None) -> torch.Tensor:
    """sigma_t(eta) of Eq. 16 for the jump t -> t_prev (float64 scalar)."""
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    alpha_bar = schedule.alpha_bar[t]
    alpha_bar_prev = schedule.alpha_bar_at(torch.tensor(t_prev), resolve_final_alpha_bar(schedule, final_alpha_bar))
    return eta * ((1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev)).sqrt()


def ddim_step(
    schedule: NoiseSchedule,
    model_output: torch.Tensor,
    x_t: torch.Tensor,
    t: int,
    t_prev: int,
    *,
    eta: float = 0.0,
    prediction_type: str = "epsilon",
    final_alpha_bar: float | None = None,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> StepOutput:
    """One DDIM update x_t -> x_{t_prev} (Eq. 12). ``t_prev = -1`` lands on ``final_alpha_bar``."""
    t_tensor = check_timesteps(t, schedule.num_train_timesteps)
    if t_tensor.ndim != 0:
        raise ValueError(f"ddim_step takes one timestep for the whole batch, got t of shape {tuple(t_tensor.shape)}")
    if not -1 <= int(t_prev) < int(t):
        raise ValueError(f"t_prev must satisfy -1 <= t_prev < t, got t={int(t)} t_prev={int(t_prev)}")
    final = resolve_final_alpha_bar(schedule, final_alpha_bar)
    pred_x0, eps = predict_x0_and_eps(schedule, model_output, x_t, t_tensor, prediction_type)  # Eq. 9
    alpha_bar_prev = schedule.alpha_bar_at(torch.tensor(int(t_prev)), final)
    sigma = ddim_sigma(schedule, int(t), int(t_prev), eta, final)
    direction = broadcast_to_batch((1 - alpha_bar_prev - sigma**2).sqrt(), x_t) * eps
    x_prev = broadcast_to_batch(alpha_bar_prev.sqrt(), x_t) * pred_x0 + direction
    if eta > 0:
        if noise is None:
            noise = draw_noise(x_t, generator)
        check_like(x_t, "x_t", noise=noise)
        x_prev = x_prev + broadcast_to_batch(sigma, x_t) * noise
    return StepOutput(x_prev, pred_x0)


@torch.no_grad()
def ddim_sample(
    model: Model,
    shape: tuple[int, ...] | None,
    schedule: NoiseSchedule,
    num_inference_steps: int = 50,
    *,
    eta: float = 0.0,
    spacing: str = "leading",
    steps_offset: int = 1,
    prediction_type: str = "epsilon",
    final_alpha_bar: float | None = None,
    generator: torch.Generator | None = None,
    x_T: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    progress: bool = True,
    return_trajectory: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
    """Sample with DDIM over ``num_inference_steps`` timesteps (SD v1 defaults: 50, leading, offset 1).

    With the default offset of 1 the leading spacing cannot visit all 1000 steps (it would reach
    t = 1000): pass ``steps_offset=0`` for that. ``shape`` may be None when ``x_T`` is given.

    ``x_T`` defaults to one ``randn`` of ``shape`` from ``generator``. With ``return_trajectory``
    also returns [x_T, ..., x_final].
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
    resolve_final_alpha_bar(schedule, final_alpha_bar)
    timesteps = make_timesteps(num_inference_steps, schedule.num_train_timesteps, spacing, steps_offset)
    x = initial_noise(shape, x_T, generator, dtype, device)

    def step(out: torch.Tensor, x: torch.Tensor, t: int, t_prev: int) -> StepOutput:
        return ddim_step(schedule, out, x, t, t_prev, eta=eta, prediction_type=prediction_type,
                         final_alpha_bar=final_alpha_bar, generator=generator)

    return sampling_loop(model, x, timesteps, step, desc="DDIM", progress=progress,
                         return_trajectory=return_trajectory)
