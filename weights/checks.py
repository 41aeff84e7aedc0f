"""Every key and every shape checked: the one way weights enter a model in this project.

A mismatch is a :class:`WeightsMismatchError` that lists what is missing, unexpected and
mis-shaped, so a wrong conversion is found at load time and not as a bad image later.
"""
from __future__ import annotations

from typing import Mapping

import torch


class WeightsMismatchError(ValueError):
    """The state dict does not fit the model: the message lists every difference."""

    def __init__(self, what: str, missing: list[str], unexpected: list[str], misshaped: list[str]) -> None:
        self.missing, self.unexpected, self.misshaped = missing, unexpected, misshaped

        def block(title: str, items: list[str]) -> str:
            shown = items[:20] + ([f"... and {len(items) - 20} more"] if len(items) > 20 else [])
            return f"\n  {title} ({len(items)}):" + "".join(f"\n    {k}" for k in shown) if items else ""

        super().__init__(
            f"{what}: the weights do not fit the model"
            + block("missing", missing)
            + block("unexpected", unexpected)
            + block("mis-shaped (key: got -> expected)", misshaped)
        )


def check_state_dict(
    expected: Mapping[str, torch.Size | tuple[int, ...]],
    state_dict: Mapping[str, torch.Tensor],
    what: str = "state dict",
) -> None:
    """Raise :class:`WeightsMismatchError` unless ``state_dict`` has exactly the expected keys and shapes."""
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    misshaped = sorted(
        f"{k}: {tuple(state_dict[k].shape)} -> {tuple(expected[k])}"
        for k in set(expected) & set(state_dict)
        if tuple(state_dict[k].shape) != tuple(expected[k])
    )
    if missing or unexpected or misshaped:
        raise WeightsMismatchError(what, missing, unexpected, misshaped)


def check_values(own: Mapping[str, torch.Tensor], state_dict: Mapping[str, torch.Tensor], what: str) -> None:
    """Every tensor of a kind the model can take (a float for a float parameter, an integer for an
    integer buffer such as CLIP's position ids) and every float finite; the first offenders are named.
    A cast would turn int8 or bool weights into numbers silently, and NaN weights give a black image."""
    wrong = [f"{k}: {v.dtype} (expected {'a float' if own[k].is_floating_point() else own[k].dtype})"
             for k, v in state_dict.items()
             if v.is_complex() or v.dtype == torch.bool or v.is_floating_point() != own[k].is_floating_point()]
    if wrong:
        raise ValueError(f"{what}: {len(wrong)} tensors have the wrong kind of values: {wrong[:5]}")
    bad = [f"{k} ({int((~torch.isfinite(v)).sum())} of {v.numel()})" for k, v in state_dict.items()
           if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ValueError(f"{what}: {len(bad)} tensors hold NaN or inf values: {bad[:5]}; the file is damaged "
                         f"or comes from a diverged training run")


def load_checked(
    model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], what: str = "state dict", assign: bool = False
) -> None:
    """Check every key and shape against ``model``, then load (strict) with dtypes cast to the model's.

    ``assign=True`` makes the given tensors the parameters instead of copying into them: a model
    built on the ``meta`` device (no memory, no random init) becomes a real one. Afterwards no
    parameter or buffer may be left on ``meta``.
    """
    expected = {k: v.shape for k, v in model.state_dict().items()}
    check_state_dict(expected, state_dict, what)
    own = model.state_dict()
    check_values(own, state_dict, what)
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state_dict.items()}, strict=True, assign=assign)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise ValueError(f"{what}: still on the meta device after loading (not in the state dict): {left[:10]}")
