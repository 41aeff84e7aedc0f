"""The training objective and a small, generic training loop (Ho et al. 2020, section 3.4).

    L_simple = E_{t, x_0, eps} || eps - eps_theta(sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, t) ||^2
                                                                                 Eq. 14, Algorithm 1

with t uniform over the T timesteps and eps ~ N(0, I). For the x_0 and v parameterisations the
target changes (parameterization.py) and the loss stays a plain mean squared error.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .forward import q_sample
from .parameterization import training_target
from .schedule import NoiseSchedule

Batch = torch.Tensor | tuple[torch.Tensor, dict[str, Any]]
"""A training batch: x_0, or (x_0, extra keyword arguments for the model such as ``context``)."""


def diffusion_loss(
    model: Callable[..., torch.Tensor],
    x0: torch.Tensor,
    schedule: NoiseSchedule,
    *,
    prediction_type: str = "epsilon",
    generator: torch.Generator | None = None,
    model_kwargs: dict[str, Any] | None = None,
    t: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """One Monte-Carlo estimate of L_simple (Eq. 14) on the batch ``x0``: Algorithm 1, lines 2-5.

    t (uniform over the timesteps) and the noise eps are drawn from ``generator`` in that order,
    unless given (a data-parallel trainer draws them for the whole batch and passes each process's
    share)."""
    if not isinstance(x0, torch.Tensor) or not x0.is_floating_point():
        raise ValueError(f"x0 must be a floating-point tensor, got {type(x0).__name__}")
    B = x0.shape[0]
    if (t is None) != (noise is None):
        raise ValueError("give both t and noise, or neither")
    if t is None:
        t = torch.randint(0, schedule.num_train_timesteps, (B,), generator=generator)
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
    if t.shape != (B,) or noise.shape != x0.shape:
        raise ValueError(f"t {tuple(t.shape)} and noise {tuple(noise.shape)} must have shapes ({B},) and {tuple(x0.shape)}")
    t, eps = t.to(x0.device), noise.to(x0.device)
    x_t = q_sample(schedule, x0, t, eps)
    target = training_target(schedule, x0, t, eps, prediction_type)
    prediction = model(x_t, t, **(model_kwargs or {}))
    return F.mse_loss(prediction, target)


def train(
    model: torch.nn.Module,
    batches: Iterator[Batch],
    schedule: NoiseSchedule,
    steps: int,
    *,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    grad_clip: float | None = 1.0,
    prediction_type: str = "epsilon",
    generator: torch.Generator | None = None,
    progress: bool = True,
) -> list[float]:
    """Minimise L_simple with AdamW for ``steps`` steps; returns the loss of every step.

    ``batches`` yields x_0 tensors, or (x_0, model_kwargs) pairs for a conditional model.
    Used by the notebooks (a 2-D DDPM) and by the toy world's U-Net training.
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    losses: list[float] = []
    model.train()
    bar = tqdm(range(steps), desc="train", disable=not progress)
    for _ in bar:
        batch = next(batches)
        x0, kwargs = batch if isinstance(batch, tuple) else (batch, {})
        loss = diffusion_loss(model, x0, schedule, prediction_type=prediction_type,
                              generator=generator, model_kwargs=kwargs)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        losses.append(loss.item())
        if len(losses) % 50 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / 50:.4f}")
    model.eval()
    return losses
