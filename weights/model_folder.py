"""A whole model in the project's layout: one folder, three networks, a tokenizer, a manifest.

    NAME/
      model.json                             the manifest below
      unet.safetensors        + unet.json              (UNetConfig)
      vae.safetensors         + vae.json               (VAEConfig)
      text_encoder.safetensors + text_encoder.json     (CLIPTextConfig)
      tokenizer/               vocab.json + merges.txt (CLIP's BPE) or words.json (the toy model's words)

``model.json`` names the parts and the noise schedule the U-Net was trained with, which no
weights file records. SD v1 (Rombach et al. 2022, ``v1-inference.yaml``) trained with

    beta_t = (sqrt(0.00085) + (t / 999) (sqrt(0.012) - sqrt(0.00085)))^2,  t = 0..999   ("scaled_linear")

and samples with timesteps offset by 1 (``steps_offset``); latents are the VAE's output times its
``scaling_factor`` (0.18215 for SD v1), copied here so a reader of the manifest sees it.
``image_size`` is the resolution the model was trained at, which the pipeline samples at by
default: 512 for SD v1 (the default when the key is absent), 64 for the toy model.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from ddpm.schedule import NoiseSchedule
from ldm.clip_text import CLIPTextModel
from ldm.clip_tokenizer import CLIPTokenizer
from ldm.tokenizer import PromptTokenizer, WordTokenizer
from ldm.vae import AutoencoderKL
from unet.model import UNet

from .clip_loading import load_text_encoder
from .io import PathLike, WeightsFileError, read_json
from .unet_loading import load_unet
from .vae_loading import load_vae

MANIFEST = "model.json"
FORMAT = "diffusion-from-scratch/model-folder/1"
PARTS = ("unet", "vae", "text_encoder")
TOKENIZER_FOLDER = "tokenizer"
CLIP_BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
SD_V1_SCHEDULE = {  # the training schedule of SD v1 (v1-inference.yaml; diffusers' scheduler_config.json)
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "num_train_timesteps": 1000,
    "steps_offset": 1,
}
SD_V1_IMAGE_SIZE = 512  # SD v1 was trained (and samples best) at 512 x 512


def schedule_from_settings(settings: dict[str, Any]) -> tuple[NoiseSchedule, int, str]:
    """A manifest's ``scheduler`` dict -> (training schedule, steps_offset, timestep spacing)."""
    name = settings.get("beta_schedule", "scaled_linear")
    kwargs = {k: settings[k] for k in ("beta_start", "beta_end") if k in settings and name != "cosine"}
    schedule = NoiseSchedule.from_name(name, settings.get("num_train_timesteps", 1000), **kwargs)
    return schedule, int(settings.get("steps_offset", 1)), settings.get("timestep_spacing", "leading")


def tokenizer_kind(tokenizer: PromptTokenizer | None) -> str | None:
    """How the tokenizer is stored: "clip-bpe" (vocab.json + merges.txt), "words" (words.json) or None."""
    if tokenizer is None:
        return None
    if isinstance(tokenizer, CLIPTokenizer):
        return "clip-bpe"
    if isinstance(tokenizer, WordTokenizer):
        return "words"
    raise ValueError(f"tokenizer must be a CLIPTokenizer or a WordTokenizer, got {type(tokenizer).__name__}")


def load_tokenizer(path: PathLike) -> PromptTokenizer:
    """A tokenizer from OpenAI's ``bpe_simple_vocab_16e6.txt.gz``, a folder with vocab.json + merges.txt
    or words.json, or a model folder holding such a ``tokenizer/``."""
    path = Path(path)
    if path.is_file():
        if not path.name.endswith(".gz"):
            raise ValueError(f"tokenizer file {path} is not a .gz BPE merges file; expected {CLIP_BPE_FILE} "
                             f"or a folder with vocab.json + merges.txt")
        return CLIPTokenizer.from_bpe_file(path)
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer {path} does not exist; expected {CLIP_BPE_FILE} or a tokenizer folder")
    for folder in (path, path / TOKENIZER_FOLDER):
        if (folder / "vocab.json").is_file():
            return CLIPTokenizer.from_folder(folder)
        if (folder / "words.json").is_file():
            return WordTokenizer.load(folder)
    raise FileNotFoundError(f"{path} holds no tokenizer: expected vocab.json + merges.txt or words.json, "
                            f"there or in {TOKENIZER_FOLDER}/")


def installed_clip_bpe() -> Path | None:
    """OpenAI's merges file inside an installed ``clip`` package, found without importing it."""
    spec = importlib.util.find_spec("clip")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        if (Path(folder) / CLIP_BPE_FILE).is_file():
            return Path(folder) / CLIP_BPE_FILE
    return None


def manifest(scaling_factor: float, tokenizer: PromptTokenizer | None, schedule: dict[str, Any],
             image_size: int = SD_V1_IMAGE_SIZE) -> dict[str, Any]:
    """The content of ``model.json``."""
    kind = tokenizer_kind(tokenizer)
    check_image_size(image_size, "image_size")
    return {
        "format": FORMAT,
        "parts": {**{p: f"{p}.safetensors" for p in PARTS}, "tokenizer": TOKENIZER_FOLDER + "/" if kind else None},
        "tokenizer": kind,
        "scheduler": dict(schedule),
        "latent_scale": scaling_factor,
        "image_size": image_size,
    }


MAX_IMAGE_SIDE = 2048  # px: 16 times SD v1's pixels; larger sides fail in allocation or run for hours
MANIFEST_KEYS = ("format", "parts", "tokenizer", "scheduler", "latent_scale", "image_size")
SCHEDULE_NAMES = ("linear", "scaled_linear", "cosine")


def check_image_size(value: Any, where: str, multiple: int = 8) -> int:
    """A native resolution is a multiple of ``multiple`` (8, the VAE's factor, unless the model's
    VAE and U-Net factors are known: their product) of at most ``MAX_IMAGE_SIDE``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < multiple or value % multiple \
            or value > MAX_IMAGE_SIDE:
        raise ValueError(f"{where} must be a multiple of {multiple} in [{multiple}, {MAX_IMAGE_SIDE}], got {value!r}")
    return value


def check_scheduler_settings(settings: Any, where: str) -> dict[str, Any]:
    """The noise-schedule settings a manifest or a diffusers scheduler_config.json gives, checked:
    a known schedule, 1..10000 training steps, 0 < beta_start < beta_end < 1, 0 <= steps_offset < T."""
    if not isinstance(settings, dict):
        raise WeightsFileError(f"{where}: the scheduler settings must be a JSON object, got {settings!r:.100}")
    unknown = sorted(set(settings) - set(SD_V1_SCHEDULE) - {"timestep_spacing"})
    if unknown:
        raise WeightsFileError(f"{where}: unknown scheduler settings {unknown}; expected some of "
                               f"{sorted(SD_V1_SCHEDULE) + ['timestep_spacing']}")
    s = {**SD_V1_SCHEDULE, **settings}

    def fail(name: str, expected: str) -> WeightsFileError:
        return WeightsFileError(f"{where}: scheduler setting {name}={s[name]!r}; expected {expected}")

    if s["beta_schedule"] not in SCHEDULE_NAMES:
        raise fail("beta_schedule", f"one of {SCHEDULE_NAMES}")
    T = s["num_train_timesteps"]
    if isinstance(T, bool) or not isinstance(T, int) or not 1 <= T <= 10000:
        raise fail("num_train_timesteps", "an int in [1, 10000]")
    for name in ("beta_start", "beta_end"):
        v = s[name]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1:
            raise fail(name, "a number in (0, 1)")
    if not s["beta_start"] < s["beta_end"]:
        raise fail("beta_end", f"a number above beta_start={s['beta_start']}")
    off = s["steps_offset"]
    if isinstance(off, bool) or not isinstance(off, int) or not 0 <= off < T:
        raise fail("steps_offset", f"an int in [0, {T - 1}]")
    if "timestep_spacing" in s and s["timestep_spacing"] not in ("leading", "trailing", "linspace"):
        raise fail("timestep_spacing", "one of ('leading', 'trailing', 'linspace')")
    return dict(settings)


def manifest_image_size(data: dict[str, Any], folder: PathLike) -> int:
    """The manifest's ``image_size``; folders written before the key existed are SD v1's 512."""
    return check_image_size(data.get("image_size", SD_V1_IMAGE_SIZE), f"image_size in {Path(folder) / MANIFEST}")


def read_manifest(folder: PathLike) -> dict[str, Any]:
    """``folder/model.json``, checked to be this project's manifest."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise WeightsFileError(f"{folder} has no {MANIFEST}; expected a folder written by "
                               f"`python -m weights.convert SOURCE {folder}`")
    data = read_json(path)
    if data.get("format") != FORMAT or not isinstance(data.get("scheduler"), dict):
        raise WeightsFileError(f"{path} is not a model manifest: expected format {FORMAT!r} and a scheduler")
    unknown = sorted(set(data) - set(MANIFEST_KEYS))
    if unknown:
        raise WeightsFileError(f"{path}: unknown manifest fields {unknown}; expected some of {list(MANIFEST_KEYS)} "
                               f"(a newer version's folder, or an edit by hand?)")
    check_scheduler_settings(data["scheduler"], str(path))
    return data


def load_model_folder(path: PathLike) -> tuple[UNet, AutoencoderKL, CLIPTextModel, PromptTokenizer]:
    """The four parts of a converted model folder: (unet, vae, text_encoder, tokenizer), fp32, eval mode."""
    path = Path(path)
    data = read_manifest(path)
    if data.get("tokenizer") is None:
        raise FileNotFoundError(
            f"{path} has no tokenizer (its {MANIFEST} says so); convert it again with one: `python -m "
            f"weights.convert {path} NEW_FOLDER --tokenizer TOKENIZER` (an SD folder's tokenizer/ or {CLIP_BPE_FILE})")
    for part in PARTS:  # every file before any tensor: a missing VAE should not cost a U-Net load first
        for name in (f"{part}.safetensors", f"{part}.json"):
            if not (path / name).is_file():
                raise WeightsFileError(f"{path} is missing {name} (the {part} part); expected the folder that "
                                       f"`python -m weights.convert SOURCE {path}` writes")
    tokenizer = load_tokenizer(path / TOKENIZER_FOLDER)
    return load_unet(path), load_vae(path), load_text_encoder(path), tokenizer
