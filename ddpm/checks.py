"""Input checks shared by the samplers.

Every public function of ``ddpm`` and ``ddim`` validates what it is given *before* any heavy
work starts and raises a ``ValueError`` that names the offending value and what was expected.
"""
from __future__ import annotations

import torch


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    """Raise if ``value`` is not one of ``choices``."""
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; expected one of {', '.join(map(repr, choices))}")


def check_timesteps(t: torch.Tensor | int, num_train_timesteps: int, name: str = "t") -> torch.Tensor:
    """Return ``t`` as an int64 tensor, raising if any entry lies outside ``[0, T-1]``."""
    t = torch.as_tensor(t)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer timesteps, got dtype {t.dtype}")
    t = t.long()
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_train_timesteps):
        raise ValueError(
            f"{name} out of range: got values in [{int(t.min())}, {int(t.max())}], "
            f"expected integers in [0, {num_train_timesteps - 1}] (num_train_timesteps={num_train_timesteps})"
        )
    return t


def check_like(reference: torch.Tensor, ref_name: str, **others: torch.Tensor) -> None:
    """Raise unless every tensor in ``others`` has the shape and dtype of ``reference``."""
    for name, x in others.items():
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.shape != reference.shape:
            raise ValueError(
                f"{name} has shape {tuple(x.shape)}, expected the shape of {ref_name} {tuple(reference.shape)}"
            )
        if x.dtype != reference.dtype:
            raise ValueError(f"{name} has dtype {x.dtype}, expected the dtype of {ref_name} ({reference.dtype})")
    if not reference.is_floating_point():
        raise ValueError(f"{ref_name} must be a floating-point tensor, got dtype {reference.dtype}")


def check_batch_timesteps(t: torch.Tensor, x: torch.Tensor, x_name: str = "x") -> None:
    """A timestep tensor is a scalar (one t for the whole batch) or has one entry per batch item."""
    if t.ndim == 0:
        return
    if t.ndim != 1 or t.shape[0] != x.shape[0]:
        raise ValueError(
            f"t has shape {tuple(t.shape)}, expected a scalar or shape ({x.shape[0]},) "
            f"matching the batch of {x_name} {tuple(x.shape)}"
        )
