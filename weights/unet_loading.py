"""Load a U-Net from any of the three layouts; save it in the project's, export it to diffusers'.

    layout      what is on disk                                         config
    original    one SD checkpoint: model.diffusion_model.* (+ VAE,      none: SD v1 unless given,
                text encoder, EMA ...), e.g. v1-5-pruned-emaonly        checked by the shapes
    diffusers   MODEL/unet/diffusion_pytorch_model.safetensors          MODEL/unet/config.json
                (or that unet/ folder itself)
    project     NAME/unet.safetensors                                   NAME/unet.json (UNetConfig)

Whatever the layout, loading goes the same way: find the files, read the config, rename the
header's keys to the project's layout and check every key and shape against a U-Net built on
the ``meta`` device (no memory, no work), and only then read the tensors and make them the
parameters (``load_checked(..., assign=True)``), so a wrong file fails in a moment and a right
one is not first filled with random numbers.

The functions take a ``component`` name ("unet"), so the VAE and the text encoder can reuse
:func:`find_source` and :func:`save_component` with their own names and conversions.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from unet.config import UNetConfig
from unet.model import UNet

from .checks import check_state_dict, load_checked
from .diffusers_layout import diffusers_to_project, project_to_diffusers
from .io import (
    PathLike, WeightsFileError, is_pickled, read_json, read_safetensors_shapes, read_weights,
    write_json, write_safetensors,
)
from .original_unet import PREFIX, original_to_project

DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
DIFFUSERS_CONFIG = "config.json"


@dataclass(frozen=True)
class Source:
    """Where one network's weights (and its config, if stored) are, and in which layout."""

    layout: str  # "original" | "diffusers" | "project"
    weights: Path
    config: Path | None  # None for an original single file


def find_source(
    source: PathLike, component: str = "unet", diffusers_weights: str = DIFFUSERS_WEIGHTS,
    original_prefix: str = PREFIX,
) -> Source:
    """Work out the layout of ``source`` from file names and the safetensors header alone."""
    path = Path(source)
    if path.is_file():
        if is_pickled(path):  # only original checkpoints come as .ckpt; reading them needs an opt-in
            return Source("original", path, None)
        if any(k.startswith(original_prefix) for k in read_safetensors_shapes(path)):
            return Source("original", path, None)
        if path.name == f"{component}.safetensors" and path.with_suffix(".json").is_file():
            return Source("project", path, path.with_suffix(".json"))
        if path.name == diffusers_weights and (path.parent / DIFFUSERS_CONFIG).is_file():
            return Source("diffusers", path, path.parent / DIFFUSERS_CONFIG)
        raise WeightsFileError(
            f"{path} has no {original_prefix}* keys (not an original single-file checkpoint), and no "
            f"{path.with_suffix('.json').name} or {DIFFUSERS_CONFIG} beside it names its config"
        )
    if not path.is_dir():
        raise WeightsFileError(f"{path} does not exist; expected a weights file or a model folder")
    if (path / f"{component}.safetensors").exists():
        config = path / f"{component}.json"
        if not config.is_file():
            raise WeightsFileError(f"{path} has {component}.safetensors but no {config.name} (the project's config)")
        return Source("project", path / f"{component}.safetensors", config)
    for folder in (path / component, path):  # a whole diffusers model folder, or its component subfolder
        if (folder / diffusers_weights).exists() or (folder / DIFFUSERS_CONFIG).exists():
            for name in (diffusers_weights, DIFFUSERS_CONFIG):
                if not (folder / name).is_file():
                    raise WeightsFileError(f"diffusers folder {folder} has no {name}; expected {diffusers_weights} "
                                           f"and {DIFFUSERS_CONFIG}")
            return Source("diffusers", folder / diffusers_weights, folder / DIFFUSERS_CONFIG)
    raise WeightsFileError(
        f"{path} holds none of {component}.safetensors + {component}.json (project), "
        f"{component}/{diffusers_weights} + {component}/{DIFFUSERS_CONFIG} (diffusers) or {diffusers_weights}"
    )


def _unet_config(src: Source, given: UNetConfig | None) -> UNetConfig:
    """The stored config (checked against ``given``), or ``given``, or SD v1 for an original file."""
    if given is not None and not isinstance(given, UNetConfig):
        raise ValueError(f"config must be a UNetConfig or None, got {type(given).__name__}")
    if src.config is None:
        return given or UNetConfig.sd_v1()
    stored = read_json(src.config)
    try:
        stored = UNetConfig.from_diffusers(stored) if src.layout == "diffusers" else UNetConfig.from_dict(stored)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{src.config}: {e}") from e
    if given is not None and given != stored:
        raise ValueError(f"config {given} differs from the one stored in {src.config}: {stored}")
    return stored


# How each layout's names become the project's: (state dict or shapes, config, what) -> renamed.
TO_PROJECT: dict[str, Callable[[Mapping[str, Any], UNetConfig, str], dict[str, Any]]] = {
    "original": original_to_project,
    "diffusers": lambda sd, config, what: diffusers_to_project(sd),
    "project": lambda sd, config, what: dict(sd),
}


def load_unet(
    source: PathLike, config: UNetConfig | None = None, allow_pickle_weights_only: bool = False
) -> UNet:
    """A :class:`UNet` (fp32, CPU, eval mode) with the weights of ``source`` in any of the three layouts.

    ``config`` is needed only for an original single file that is not SD v1 (the toy model's);
    for the other layouts it is read from the folder, and a given one must equal it.
    """
    src = find_source(source)
    config = _unet_config(src, config)
    to_project = TO_PROJECT[src.layout]
    with torch.device("meta"):
        model = UNet(config)  # shapes only: no memory, no random init
    what = f"U-Net weights {src.weights} ({src.layout} layout)"
    if not is_pickled(src.weights):  # check names and shapes from the header before reading 3.4 GB
        shapes = to_project(read_safetensors_shapes(src.weights), config, what)
        check_state_dict({k: v.shape for k, v in model.state_dict().items()}, _as_meta(shapes), what)
    tensors = read_weights(src.weights, torch.float32, allow_pickle_weights_only)
    load_checked(model, to_project(tensors, config, what), what, assign=True)
    return model.eval()


def _as_meta(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    return {k: torch.empty(s, device="meta") for k, s in shapes.items()}


def save_component(
    state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any], folder: PathLike, name: str
) -> None:
    """Write ``folder/name.safetensors`` and ``folder/name.json``, each atomically (weights first)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise WeightsFileError(f"{folder} is a file; expected a folder to save {name} into")
    write_safetensors(state_dict, folder / f"{name}.safetensors", metadata={"format": "pt"})
    write_json(dict(config), folder / f"{name}.json")


def _check_unet(unet: UNet) -> None:
    if not isinstance(unet, UNet):
        raise ValueError(f"expected a unet.UNet, got {type(unet).__name__}")


def save_unet(unet: UNet, folder: PathLike) -> None:
    """Save in the project's layout: ``folder/unet.safetensors`` + ``folder/unet.json``."""
    _check_unet(unet)
    save_component(unet.state_dict(), unet.config.to_dict(), folder, "unet")


def export_unet_to_diffusers(unet: UNet, folder: PathLike) -> None:
    """Write ``folder/unet/{diffusion_pytorch_model.safetensors, config.json}`` for diffusers.

    ``diffusers.UNet2DConditionModel.from_pretrained(folder, subfolder="unet")`` loads it.
    """
    _check_unet(unet)
    folder = Path(folder) / "unet"
    write_safetensors(project_to_diffusers(unet.state_dict()), folder / DIFFUSERS_WEIGHTS, metadata={"format": "pt"})
    write_json(unet.config.to_diffusers(), folder / DIFFUSERS_CONFIG)
