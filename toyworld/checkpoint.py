"""Resumable training state in one safetensors file (no pickles): model, EMA and AdamW tensors, and
the step, history and optimiser settings as JSON in the file's own metadata.

    NAME.safetensors   tensors "model.<param>", "ema.<param>", "adam.<i>.exp_avg", "adam.<i>.exp_avg_sq";
                       metadata {"checkpoint": JSON {"step": ..., "adam_steps": {i: step}, "history": ...}}

One file written atomically (weights/atomic.py) is one unit: a crash mid-save leaves the previous
checkpoint whole, and the weights can never belong to another step than the meta that says so.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

import json

from weights.io import WeightsFileError, read_safetensors, read_safetensors_header, write_safetensors

META_KEY = "checkpoint"


def checkpoint_file(path: Path) -> Path:
    return path.with_suffix(".safetensors")


def exists(path: Path) -> bool:
    """Whether a checkpoint was saved at ``path`` (NAME, without the suffix)."""
    return checkpoint_file(path).is_file()


def read_meta(path: Path) -> dict[str, Any]:
    """The step, history and optimiser meta of the checkpoint at ``path``, from its header alone."""
    header = read_safetensors_header(checkpoint_file(path))
    try:
        return json.loads(header["__metadata__"][META_KEY])
    except (KeyError, TypeError, json.JSONDecodeError) as e:
        raise WeightsFileError(f"{checkpoint_file(path)} is not a training checkpoint of this project (no "
                               f"{META_KEY!r} metadata: {e!r}); delete it, or point --run at another folder") from None


def save_checkpoint(path: Path, model: nn.Module, ema: nn.Module | None, optimizer: torch.optim.Optimizer,
                    meta: dict[str, Any]) -> None:
    tensors = {f"model.{k}": v.detach().cpu() for k, v in model.state_dict().items()}
    if ema is not None:
        tensors.update({f"ema.{k}": v.detach().cpu() for k, v in ema.state_dict().items()})
    state = optimizer.state_dict()
    adam_steps = {}
    for i, s in state["state"].items():
        tensors[f"adam.{i}.exp_avg"] = s["exp_avg"].cpu()
        tensors[f"adam.{i}.exp_avg_sq"] = s["exp_avg_sq"].cpu()
        adam_steps[str(i)] = float(s["step"])
    text = json.dumps({**meta, "adam_steps": adam_steps, "param_groups": state["param_groups"]})
    write_safetensors({k: v.contiguous() for k, v in tensors.items()}, checkpoint_file(path), metadata={META_KEY: text})


def load_checkpoint(path: Path, model: nn.Module, ema: nn.Module | None,
                    optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore what :func:`save_checkpoint` wrote (every key checked by strict loading); returns the meta."""
    meta = read_meta(path)
    tensors = read_safetensors(checkpoint_file(path), dtype=None)
    device = next(model.parameters()).device
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    if ema is not None:
        ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    state = {
        "state": {int(i): {"step": torch.tensor(step), "exp_avg": tensors[f"adam.{i}.exp_avg"].to(device),
                           "exp_avg_sq": tensors[f"adam.{i}.exp_avg_sq"].to(device)}
                  for i, step in meta.pop("adam_steps").items()},
        "param_groups": meta.pop("param_groups"),
    }
    optimizer.load_state_dict(state)
    return meta
