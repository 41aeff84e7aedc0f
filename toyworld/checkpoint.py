"""Resumable training state in safetensors (no pickles): model, EMA and AdamW tensors + a JSON sidecar.

    NAME.safetensors   "model.<param>", "ema.<param>", "adam.<i>.exp_avg", "adam.<i>.exp_avg_sq"
    NAME.json          {"step": ..., "adam_steps": {i: step}, "history": {...}, ...}

Both files are written atomically, the weights first, so a crash mid-save leaves the last
complete checkpoint (the JSON names the step its weights belong to).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from weights.io import read_json, read_safetensors, write_json, write_safetensors


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
    write_safetensors({k: v.contiguous() for k, v in tensors.items()}, path.with_suffix(".safetensors"))
    write_json({**meta, "adam_steps": adam_steps, "param_groups": state["param_groups"]}, path.with_suffix(".json"))


def load_checkpoint(path: Path, model: nn.Module, ema: nn.Module | None,
                    optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore what :func:`save_checkpoint` wrote (every key checked by strict loading); returns the meta."""
    meta = read_json(path.with_suffix(".json"))
    tensors = read_safetensors(path.with_suffix(".safetensors"), dtype=None)
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
