"""DDIM inversion: run the deterministic sampler backwards, from an image to its noise.

With eta = 0, Eq. 12 of Song et al. 2021 is an Euler step of an ODE (section 4.3, Eq. 13-14):

    x_t' / sqrt(alpha_bar_t') = x_t / sqrt(alpha_bar_t)
        + (sqrt((1 - alpha_bar_t') / alpha_bar_t') - sqrt((1 - alpha_bar_t) / alpha_bar_t)) eps(x_t, t)

Integrated the other way (t' > t) it *encodes* an image into the latent x_T that DDIM would decode
back to it. One inversion step from t_prev up to t reuses the step formula with the two noise
levels swapped, and evaluates the model at the destination t with the current x_{t_prev}:

    x_0_hat = (x_{t_prev} - sqrt(1 - alpha_bar_{t_prev}) eps) / sqrt(alpha_bar_{t_prev}),  eps = eps_theta(x_{t_prev}, t)
    x_t     = sqrt(alpha_bar_t) x_0_hat + sqrt(1 - alpha_bar_t) eps

This assumes eps_theta(x_t, t) ~ eps_theta(x_{t_prev}, t), which is why the reconstruction is
only approximate and improves as the steps get smaller (tested). It is the inversion used by
Prompt-to-Prompt's null-text inversion and by Plug-and-Play.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import overload

import torch
from tqdm import tqdm

from ddpm.checks import check_choice, check_timesteps
from ddpm.forward import broadcast_to_batch
from ddpm.parameterization import PREDICTION_TYPES, predict_x0_and_eps
from ddpm.reverse import Model, StepOutput
from ddpm.schedule import NoiseSchedule, make_timesteps, timestep_pairs

from .sampler import resolve_final_alpha_bar


def ddim_invert_step(
    schedule: NoiseSchedule,
    model_output: torch.Tensor,
    x_prev: torch.Tensor,
    t_prev: int,
    t: int,
    *,
    prediction_type: str = "epsilon",
    final_alpha_bar: float | None = None,
) -> StepOutput:
    """One inversion step x_{t_prev} -> x_t, with ``model_output = model(x_prev, t)``.

    ``t_prev = -1`` is the clean end, at alpha_bar = ``final_alpha_bar`` (SD: alpha_bar[0]).
    Returns the new latent and the step's estimate of x_0.
    """
    t_tensor = check_timesteps(t, schedule.num_train_timesteps)
    if not -1 <= int(t_prev) < int(t):
        raise ValueError(f"inversion goes up in t: expected -1 <= t_prev < t, got t_prev={int(t_prev)} t={int(t)}")
    # The output is read as eps at t; for eps-prediction it is used as it is.
    _, eps = predict_x0_and_eps(schedule, model_output, x_prev, t_tensor, prediction_type)
    alpha_bar_prev = schedule.alpha_bar_at(torch.tensor(int(t_prev)), resolve_final_alpha_bar(schedule, final_alpha_bar))
    alpha_bar = schedule.alpha_bar[t_tensor]
    pred_x0 = (x_prev - broadcast_to_batch((1 - alpha_bar_prev).sqrt(), x_prev) * eps) / broadcast_to_batch(alpha_bar_prev.sqrt(), x_prev)
    x_t = broadcast_to_batch(alpha_bar.sqrt(), x_prev) * pred_x0 + broadcast_to_batch((1 - alpha_bar).sqrt(), x_prev) * eps
    return StepOutput(x_t, pred_x0)


@dataclass(frozen=True)
class Trajectory(Sequence):
    """The latents of an inversion, from the clean end up: ``latents[k]`` sits at ``timesteps[k]``,
    with ``timesteps[0] = -1`` for x_0 and then the visited timesteps in increasing order.

    It reads as the list [x_0, x_{t_1}, ..., x_T] (``trajectory[-1]`` is the x_T that sampling
    starts from, ``trajectory[-1 - i]`` where sampling step i starts), and by timestep:
    ``trajectory.at(t)``. Every inversion of the library returns one: DDIM inversion, the pivots
    of null-text inversion, Plug-and-Play's guidance image.
    """

    timesteps: tuple[int, ...]
    latents: tuple[torch.Tensor, ...]

    def __post_init__(self) -> None:
        if len(self.timesteps) != len(self.latents) or not self.timesteps or self.timesteps[0] != -1 or \
                any(a >= b for a, b in zip(self.timesteps, self.timesteps[1:])):
            raise ValueError(f"a trajectory needs one latent per timestep, timesteps increasing from -1 (x_0); got "
                             f"{len(self.latents)} latents at {list(self.timesteps)[:6]}")

    def __len__(self) -> int:
        return len(self.latents)

    @overload
    def __getitem__(self, index: int) -> torch.Tensor: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[torch.Tensor, ...]: ...

    def __getitem__(self, index):
        return self.latents[index]

    @property
    def z0(self) -> torch.Tensor:
        """x_0, where the inversion started (an image's latent)."""
        return self.latents[0]

    def at(self, t: int) -> torch.Tensor:
        """The latent at timestep ``t`` (-1: x_0)."""
        try:
            return self.latents[self.timesteps.index(int(t))]
        except ValueError:
            raise ValueError(f"the trajectory holds no latent at t = {t}; it visits {list(self.timesteps)[:8]}...") from None

    def restricted(self, timesteps: Sequence[int]) -> "Trajectory":
        """Only the latents at ``timesteps`` (and x_0): a fine inversion kept at a coarser sampler's timesteps."""
        missing = sorted(set(int(t) for t in timesteps) - set(self.timesteps))
        if missing:
            raise ValueError(f"the trajectory holds no latent at the timesteps {missing[:5]}...")
        wanted = set(int(t) for t in timesteps) | {-1}
        kept = [(t, z) for t, z in zip(self.timesteps, self.latents) if t in wanted]
        return Trajectory(tuple(t for t, _ in kept), tuple(z for _, z in kept))


@torch.no_grad()
def ddim_invert(
    model: Model,
    x0: torch.Tensor,
    schedule: NoiseSchedule,
    num_inference_steps: int = 50,
    *,
    spacing: str = "leading",
    steps_offset: int = 1,
    prediction_type: str = "epsilon",
    final_alpha_bar: float | None = None,
    progress: bool = True,
) -> Trajectory:
    """Invert ``x0`` through the same timesteps ``ddim_sample`` would visit, in reverse.

    Returns every latent, from the start up, as a :class:`Trajectory` [x0, x_{t_1}, ..., x_{t_N}]
    with t_1 the smallest visited timestep, so ``latents[-1]`` is the x_T to hand to
    ``ddim_sample`` and ``latents[-1 - i]`` is the latent that sampling should meet after i steps.
    """
    check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
    if not isinstance(x0, torch.Tensor) or not x0.is_floating_point():
        raise ValueError(f"x0 must be a floating-point tensor, got {type(x0).__name__}")
    timesteps = make_timesteps(num_inference_steps, schedule.num_train_timesteps, spacing, steps_offset)
    ascending = timestep_pairs(timesteps)[::-1]  # (t, t_prev) of each sampling step, the last first
    latents = [x0]
    x = x0
    for t, t_prev in tqdm(ascending, desc="DDIM inversion", disable=not progress):
        out = model(x, torch.full((x.shape[0],), t, dtype=torch.long, device=x.device))
        x = ddim_invert_step(schedule, out, x, t_prev, t, prediction_type=prediction_type,
                             final_alpha_bar=final_alpha_bar).sample
        latents.append(x)
    return Trajectory(tuple([-1] + timesteps.tolist()[::-1]), tuple(latents))
