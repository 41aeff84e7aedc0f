"""Convert a whole Stable Diffusion v1 checkpoint: ``python -m weights.convert SOURCE weights/NAME``.

SOURCE is any of the three layouts of :mod:`weights.components`, for all three networks at once:

    original    one .safetensors file: model.diffusion_model.*, first_stage_model.*,
                cond_stage_model.transformer.* (no tokenizer inside: see --tokenizer)
    diffusers   a folder with unet/, vae/, text_encoder/, tokenizer/ (and scheduler/)
    project     a folder written by this command (model.json, <part>.safetensors + .json, tokenizer/)

DEST gets the project's layout (:mod:`weights.model_folder`), or with ``--to diffusers`` a
folder that ``diffusers.StableDiffusionPipeline.from_pretrained(DEST, safety_checker=None)``
loads: unet/, vae/, text_encoder/, tokenizer/, scheduler/scheduler_config.json (DDIM with SD's
schedule) and model_index.json.

The order of work keeps the disk safe and errors early:
1. check SOURCE, DEST and every part's files and config (headers and JSON only, no tensors), and
   that the parts fit together: U-Net in_channels = VAE latent_channels, U-Net
   cross_attention_dim = text hidden_size, every token id < the text encoder's vocab_size;
2. convert part by part (one network in memory at a time) into a temporary sibling of DEST;
3. swap the temporary folder into place (weights/atomic.py: one atomic exchange on Linux). A failure
   leaves DEST as it was; the leftovers of a killed conversion are removed by the next one into
   the same place, which also puts back a DEST that a crash left set aside.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Mapping

from ldm.clip_config import CLIPTextConfig
from ldm.clip_tokenizer import BOS, EOS, CLIPTokenizer
from ldm.tokenizer import CONTEXT_LENGTH, PromptTokenizer
from ldm.vae_config import VAEConfig
from unet.config import UNetConfig

from .atomic import recover, swap_into_place, temporary_folder
from .clip_loading import TEXT_ENCODER
from .components import (
    DIFFUSERS_CONFIG, Component, check_header, export_to_diffusers, find_source, load_component, resolve_config,
    save_model,
)
from .io import PathLike, WeightsFileError, read_json, read_safetensors_shapes, write_json
from .model_folder import (
    CLIP_BPE_FILE, MANIFEST, SD_V1_IMAGE_SIZE, SD_V1_SCHEDULE, TOKENIZER_FOLDER, installed_clip_bpe, load_tokenizer,
    check_image_size, check_scheduler_settings, manifest, manifest_image_size, read_manifest,
)
from .unet_loading import UNET
from .vae_loading import VAE

COMPONENTS: tuple[Component, ...] = (UNET, VAE, TEXT_ENCODER)
TARGETS = ("project", "diffusers")
DDIM_EXTRAS = {"clip_sample": False, "set_alpha_to_one": False, "prediction_type": "epsilon"}  # final alpha = alpha_bar_0
PIPELINE_PARTS = {  # model_index.json: part -> (library, class)
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "scheduler": ["diffusers", "DDIMScheduler"],
    "safety_checker": [None, None],
    "feature_extractor": [None, None],
}


def source_layout(source: Path) -> str:
    """"original", "diffusers" or "project", from file names and the safetensors header alone."""
    if source.is_file():
        keys = read_safetensors_shapes(source)  # a clear error for a pickled, truncated or foreign file
        missing = [c.original_prefix for c in COMPONENTS if not any(k.startswith(c.original_prefix) for k in keys)]
        if missing:
            raise WeightsFileError(f"{source} has no keys under {missing}; expected an original single-file SD v1 "
                                   f"checkpoint with all of {[c.original_prefix for c in COMPONENTS]}")
        return "original"
    if not source.is_dir():
        raise WeightsFileError(f"{source} does not exist; expected an original .safetensors file or a model folder")
    if (source / MANIFEST).is_file() or (source / f"{UNET.name}.safetensors").is_file():
        return "project"
    if (source / "model_index.json").is_file() or (source / UNET.name).is_dir():
        return "diffusers"
    raise WeightsFileError(f"{source} is neither a project model folder ({MANIFEST}, unet.safetensors ...) nor a "
                           f"diffusers one (model_index.json, unet/, vae/, text_encoder/)")


def source_schedule(source: Path, layout: str) -> dict[str, Any]:
    """The noise schedule a source records (a diffusers scheduler_config.json, a project model.json), else SD v1's."""
    if layout == "project" and (source / MANIFEST).is_file():
        stored = read_manifest(source)["scheduler"]
    elif layout == "diffusers" and (source / "scheduler" / "scheduler_config.json").is_file():
        stored = read_json(source / "scheduler" / "scheduler_config.json")
    else:
        stored = {}
    return {k: stored.get(k, v) for k, v in SD_V1_SCHEDULE.items()}


def source_image_size(source: Path, layout: str, latent_factor: int) -> int:
    """The resolution the model was trained at: a project manifest's ``image_size``, a diffusers
    U-Net's ``sample_size`` (in latent pixels) times the VAE's factor, else SD v1's 512."""
    if layout == "project" and (source / MANIFEST).is_file():
        return manifest_image_size(read_manifest(source), source)
    config = source / "unet" / DIFFUSERS_CONFIG
    if layout == "diffusers" and config.is_file() and isinstance(read_json(config).get("sample_size"), int):
        return read_json(config)["sample_size"] * latent_factor
    return SD_V1_IMAGE_SIZE


def find_tokenizer(source: Path, layout: str, given: PathLike | None, log: Callable[[str], None]) -> PromptTokenizer | None:
    """--tokenizer; else the source folder's tokenizer/; else, for an original file, the installed
    ``clip`` package's merges file; else None (with a message saying how to add one)."""
    if given is not None:
        return load_tokenizer(given)
    if layout != "original":
        if (source / TOKENIZER_FOLDER).is_dir():
            return load_tokenizer(source / TOKENIZER_FOLDER)
    else:
        bpe = installed_clip_bpe()
        if bpe is not None:
            log(f"tokenizer: CLIP's merges from the installed clip package, {bpe}")
            return CLIPTokenizer.from_bpe_file(bpe)
    log(f"WARNING: {source} carries no tokenizer, and none was given: the model folder will have none. "
        f"Convert again with --tokenizer PATH (an SD folder's tokenizer/, or OpenAI's {CLIP_BPE_FILE}, "
        f"which `pip install openai-clip` installs and this command then finds by itself).")
    return None


def check_parts_fit(configs: Mapping[str, Any], tokenizer: PromptTokenizer | None) -> None:
    """The shapes where the networks meet: z (VAE latents) -> U-Net input, context (text) -> cross-attention."""
    unet, vae, text = configs["unet"], configs["vae"], configs["text_encoder"]
    if unet.in_channels != vae.latent_channels or unet.out_channels != vae.latent_channels:
        raise ValueError(f"U-Net in/out_channels {unet.in_channels}/{unet.out_channels} differ from the VAE's "
                         f"latent_channels {vae.latent_channels}")
    if unet.cross_attention_dim != text.hidden_size:
        raise ValueError(f"U-Net cross_attention_dim {unet.cross_attention_dim} differs from the text encoder's "
                         f"hidden_size {text.hidden_size}")
    if tokenizer is not None and (tokenizer.vocab_size > text.vocab_size or tokenizer.eos_id != text.eos_token_id):
        raise ValueError(f"the tokenizer ({tokenizer.vocab_size} ids, eos {tokenizer.eos_id}) does not fit the text "
                         f"encoder ({text.vocab_size} ids, eos {text.eos_token_id})")


def _resolved(path: Path, what: str) -> Path:
    try:
        return path.resolve()
    except (RuntimeError, OSError) as e:  # a symlink loop
        raise ValueError(f"{what} {path} cannot be resolved ({e}); expected a real path") from None


def check_dest(source: Path, dest: Path, force: bool) -> None:
    """DEST may be created or (with force) replaced: it is not the source, does not hold it, and is not
    inside it (replacing DEST deletes what is there, which must never be part of the source)."""
    src, dst = _resolved(source, "source"), _resolved(dest, "destination")
    if dst == src or dst in src.parents:
        raise ValueError(f"destination {dest} is the source {source} or holds it; convert into another folder")
    if src.is_dir() and src in dst.parents:
        raise ValueError(f"destination {dest} lies inside the source folder {source}; replacing it would delete "
                         f"part of the source; convert into a folder outside it")
    if dest.exists() and not dest.is_dir():
        raise FileExistsError(f"destination {dest} is a file; expected a folder to create")
    if dest.exists() and any(dest.iterdir()) and not force:
        raise FileExistsError(f"destination {dest} exists and is not empty; pass --force (force=True) to replace it")


def write_diffusers_extras(folder: Path, tokenizer: PromptTokenizer | None, schedule: Mapping[str, Any]) -> None:
    """tokenizer/ (with transformers' tokenizer_config.json), scheduler/ and model_index.json."""
    if tokenizer is not None:
        tokenizer.save(folder / TOKENIZER_FOLDER)
        write_json({"tokenizer_class": "CLIPTokenizer", "model_max_length": CONTEXT_LENGTH, "bos_token": BOS,
                    "eos_token": EOS, "unk_token": EOS, "pad_token": EOS, "do_lower_case": True,
                    "add_prefix_space": False}, folder / TOKENIZER_FOLDER / "tokenizer_config.json")
    write_json({"_class_name": "DDIMScheduler", **schedule, **DDIM_EXTRAS}, folder / "scheduler" / "scheduler_config.json")
    parts = dict(PIPELINE_PARTS, tokenizer=PIPELINE_PARTS["tokenizer"] if tokenizer is not None else [None, None])
    write_json({"_class_name": "StableDiffusionPipeline", **parts, "requires_safety_checker": False},
               folder / "model_index.json")


def convert(
    source: PathLike,
    dest: PathLike,
    to: str = "project",
    tokenizer: PathLike | None = None,
    configs: Mapping[str, Any] | None = None,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> Path:
    """Convert the whole model at ``source`` into ``dest`` (see the module docstring); returns ``dest``.

    ``configs`` ({"unet": UNetConfig, "vae": VAEConfig, "text_encoder": CLIPTextConfig}, any subset) is
    needed only for an original single file that is not SD v1; a folder's stored configs must equal it.
    """
    source, dest = Path(source), Path(dest)
    if to not in TARGETS:
        raise ValueError(f"to={to!r}; expected one of {TARGETS}")
    configs = dict(configs or {})
    unknown = sorted(set(configs) - {c.name for c in COMPONENTS})
    if unknown:
        raise ValueError(f"configs has unknown parts {unknown}; expected some of {[c.name for c in COMPONENTS]}")
    layout = source_layout(source)
    recover(dest, log)  # what an interrupted conversion into dest left: put back, clean up
    check_dest(source, dest, force)
    sources = {c.name: find_source(source, c.name, c.diffusers_weights, c.original_prefix) for c in COMPONENTS}
    configs = {c.name: resolve_config(c, sources[c.name], configs.get(c.name)) for c in COMPONENTS}
    tok = find_tokenizer(source, layout, tokenizer, log)
    words_only = to == "diffusers" and tok is not None and not isinstance(tok, CLIPTokenizer)
    check_parts_fit(configs, tok)
    for c in COMPONENTS:
        check_header(c, sources[c.name], configs[c.name])
    schedule = check_scheduler_settings(source_schedule(source, layout), f"{source}'s scheduler")
    image_size = source_image_size(source, layout, configs["vae"].downsample_factor)
    # The pipeline samples at image_size by default: the VAE and then the U-Net must divide it.
    check_image_size(image_size, f"{source}'s image size",
                     configs["vae"].downsample_factor * configs["unet"].downsample_factor)

    log(f"converting {source} ({layout} layout) -> {dest} ({to} layout)")
    tmp = temporary_folder(dest)
    try:
        for n, component in enumerate(COMPONENTS, 1):
            model = load_component(component, source, configs[component.name])
            count = sum(p.numel() for p in model.parameters())
            (save_model if to == "project" else export_to_diffusers)(component, model, tmp)
            log(f"  [{n}/{len(COMPONENTS)}] {component.title}: {count / 1e6:.1f}M parameters written")
            del model  # one network in memory at a time
        if to == "project":
            if tok is not None:
                tok.save(tmp / TOKENIZER_FOLDER)
            write_json(manifest(configs["vae"].scaling_factor, tok, schedule, image_size), tmp / MANIFEST)
        else:
            write_diffusers_extras(tmp, None if words_only else tok, schedule)
            if words_only:  # the toy model's word tokenizer: transformers has no such class
                tok.save(tmp / TOKENIZER_FOLDER)
                log(f"  tokenizer: {type(tok).__name__} kept as {TOKENIZER_FOLDER}/words.json; model_index.json "
                    f"lists none: load it with from_pretrained(folder, tokenizer=None) and call it with prompt_embeds")
            unet_config = read_json(tmp / "unet" / DIFFUSERS_CONFIG)  # diffusers' default sampling size
            write_json({**unet_config, "sample_size": image_size // configs["vae"].downsample_factor},
                       tmp / "unet" / DIFFUSERS_CONFIG)
        log(f"  tokenizer: {type(tok).__name__ if tok is not None else 'MISSING (see the warning above)'}")
        swap_into_place(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone after a successful rename; the debris after a failure
    log(f"done: {dest}")
    return dest


def export_diffusers(project_folder: PathLike, dest: PathLike, force: bool = False,
                     log: Callable[[str], None] = print) -> Path:
    """Export a project model folder as a diffusers StableDiffusionPipeline folder."""
    if source_layout(Path(project_folder)) != "project":
        raise WeightsFileError(f"{project_folder} is not a project model folder (no {MANIFEST} or unet.safetensors)")
    return convert(project_folder, dest, to="diffusers", force=force, log=log)


def _read_config(path: str | None, config_type: type) -> Any:
    return None if path is None else config_type.from_dict(read_json(path))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m weights.convert", description=__doc__.split("\n")[0])
    parser.add_argument("source", help="original SD v1 .safetensors, a diffusers folder or a project folder")
    parser.add_argument("dest", help="the folder to create, e.g. weights/sd-v1-5")
    parser.add_argument("--to", choices=TARGETS, default="project", help="the layout to write (default: project)")
    parser.add_argument("--tokenizer", help=f"an SD folder's tokenizer/ or OpenAI's {CLIP_BPE_FILE}")
    parser.add_argument("--unet-config", help="UNetConfig JSON, for an original file that is not SD v1")
    parser.add_argument("--vae-config", help="VAEConfig JSON, for an original file that is not SD v1")
    parser.add_argument("--text-config", help="CLIPTextConfig JSON, for an original file that is not SD v1")
    parser.add_argument("--force", action="store_true", help="replace a non-empty DEST")
    args = parser.parse_args(argv)
    try:
        given = {"unet": _read_config(args.unet_config, UNetConfig), "vae": _read_config(args.vae_config, VAEConfig),
                 "text_encoder": _read_config(args.text_config, CLIPTextConfig)}
        convert(args.source, args.dest, args.to, args.tokenizer, {k: v for k, v in given.items() if v is not None},
                args.force)
    except (ValueError, OSError, json.JSONDecodeError) as e:  # OSError: missing files, a full disk
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
