"""One loader for every network of a Stable Diffusion checkpoint: U-Net, VAE, text encoder.

    layout      what is on disk                                         config
    original    one SD checkpoint holding every network under its own   none: SD v1 unless given,
                prefix (model.diffusion_model.*, first_stage_model.*,   checked by the shapes
                cond_stage_model.transformer.*), e.g. v1-5-pruned-emaonly
    diffusers   MODEL/<name>/<weights file> (or that subfolder itself)  MODEL/<name>/config.json
    project     NAME/<name>.safetensors                                 NAME/<name>.json

What differs between the networks (their names, model and config classes, the renaming of each
layout's keys) is one :class:`Component` record; ``unet_loading.py``, ``vae_loading.py`` and
``clip_loading.py`` each hold one. The procedure is the same for all: find the files, read the
config, rename the header's keys to the project's layout and check every key and shape against
the model built on the ``meta`` device (no memory, no work), and only then read the tensors and
make them the parameters (``load_checked(..., assign=True)``). A wrong file fails in a moment and
a right one is never first filled with random numbers.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from .checks import check_state_dict, load_checked
from .diffusers_layout import diffusers_to_project
from .io import (
    PathLike, WeightsFileError, is_pickled, read_json, read_safetensors_shapes, read_weights,
    write_json, write_safetensors,
)

DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
DIFFUSERS_CONFIG = "config.json"

Renamer = Callable[[Mapping[str, Any], Any, str], dict[str, Any]]
"""(state dict or {name: shape}, config, what) -> the same values under the project's names."""


def layout_renamers(original: Renamer, diffusers: Renamer | None = None) -> dict[str, Renamer]:
    """The renaming of each layout: ``original`` as given; diffusers' names by default through the
    three renames of :mod:`weights.diffusers_layout`; the project's own names as they are."""
    return {
        "original": original,
        "diffusers": diffusers or (lambda sd, config, what: diffusers_to_project(sd)),
        "project": lambda sd, config, what: dict(sd),
    }


@dataclass(frozen=True)
class Component:
    """What the loader needs to know about one network."""

    name: str  # file and folder name: "unet", "vae", "text_encoder"
    title: str  # for messages: "U-Net"
    model_type: type[nn.Module]  # built as model_type(config); has .config
    config_type: type  # has sd_v1(), from_dict(), to_dict()
    read_diffusers_config: Callable[[dict[str, Any]], Any]
    write_diffusers_config: Callable[[Any], dict[str, Any]]
    to_project: Mapping[str, Renamer]  # one per layout: see layout_renamers()
    to_diffusers: Callable[[Mapping[str, torch.Tensor]], dict[str, torch.Tensor]]
    original_prefix: str
    diffusers_weights: str = DIFFUSERS_WEIGHTS


@dataclass(frozen=True)
class Source:
    """Where one network's weights (and its config, if stored) are, and in which layout."""

    layout: str  # "original" | "diffusers" | "project"
    weights: Path
    config: Path | None  # None for an original single file


def find_source(
    source: PathLike, component: str, diffusers_weights: str, original_prefix: str
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


def resolve_config(component: Component, src: Source, given: Any) -> Any:
    """The stored config (checked against ``given``), or ``given``, or SD v1 for an original file."""
    if given is not None and not isinstance(given, component.config_type):
        raise ValueError(f"config must be a {component.config_type.__name__} or None, got {type(given).__name__}")
    if src.config is None:
        return given or component.config_type.sd_v1()
    stored = read_json(src.config)
    try:
        read = component.read_diffusers_config if src.layout == "diffusers" else component.config_type.from_dict
        stored = read(stored)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{src.config}: {e}") from e
    if given is not None and given != stored:
        raise ValueError(f"config {given} differs from the one stored in {src.config}: {stored}")
    return stored


def _describe(component: Component, src: Source) -> str:
    return f"{component.title} weights {src.weights} ({src.layout} layout)"


def check_header(component: Component, src: Source, config: Any, model: nn.Module | None = None) -> None:
    """Every key and shape of a safetensors file against the model, from the header alone (no tensor
    is read); ``model`` defaults to one built on the ``meta`` device (no memory, no random init)."""
    if model is None:
        with torch.device("meta"):
            model = component.model_type(config)
    what = _describe(component, src)
    shapes = component.to_project[src.layout](read_safetensors_shapes(src.weights), config, what)
    meta = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    check_state_dict({k: v.shape for k, v in model.state_dict().items()}, meta, what)


def load_component(
    component: Component, source: PathLike, config: Any = None, allow_pickle_weights_only: bool = False
) -> nn.Module:
    """The network (fp32, CPU, eval mode) with the weights of ``source`` in any of the three layouts.

    ``config`` is needed only for an original single file that is not SD v1 (the toy model's);
    for the other layouts it is read from the folder, and a given one must equal it.
    """
    src = find_source(source, component.name, component.diffusers_weights, component.original_prefix)
    config = resolve_config(component, src, config)
    to_project = component.to_project[src.layout]
    with torch.device("meta"):
        model = component.model_type(config)  # shapes only: no memory, no random init
    what = _describe(component, src)
    if not is_pickled(src.weights):  # check names and shapes from the header before reading any tensor
        check_header(component, src, config, model)
    tensors = read_weights(src.weights, torch.float32, allow_pickle_weights_only)
    load_checked(model, to_project(tensors, config, what), what, assign=True)
    return model.eval()


def _check_model(component: Component, model: nn.Module) -> None:
    if not isinstance(model, component.model_type):
        raise ValueError(f"expected a {component.model_type.__name__} ({component.title}), got {type(model).__name__}")


def save_component(
    state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any], folder: PathLike, name: str
) -> None:
    """Write ``folder/name.safetensors`` and ``folder/name.json``, each atomically (weights first)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise WeightsFileError(f"{folder} is a file; expected a folder to save {name} into")
    write_safetensors(state_dict, folder / f"{name}.safetensors", metadata={"format": "pt"})
    write_json(dict(config), folder / f"{name}.json")


def save_model(component: Component, model: nn.Module, folder: PathLike) -> None:
    """Save in the project's layout: ``folder/<name>.safetensors`` + ``folder/<name>.json``."""
    _check_model(component, model)
    save_component(model.state_dict(), model.config.to_dict(), folder, component.name)


def export_to_diffusers(component: Component, model: nn.Module, folder: PathLike) -> None:
    """Write ``folder/<name>/{<weights file>, config.json}``, the layout diffusers' and transformers'
    ``from_pretrained(folder, subfolder=<name>)`` read."""
    _check_model(component, model)
    folder = Path(folder) / component.name
    weights = component.to_diffusers(model.state_dict())
    write_safetensors(weights, folder / component.diffusers_weights, metadata={"format": "pt"})
    write_json(component.write_diffusers_config(model.config), folder / DIFFUSERS_CONFIG)
