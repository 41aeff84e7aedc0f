"""Whole-checkpoint conversion (``python -m weights.convert``): original single file and diffusers
folders in, the project's model folder or a diffusers folder out, at tiny random configs.

- original file -> project folder: every tensor of every network comes back bit for bit;
- original -> diffusers -> project -> diffusers: diffusers' own ``StableDiffusionPipeline`` loads
  the result, and its U-Net, VAE, text encoder and tokenizer compute what ours compute;
- the disk: nothing overwritten without --force, nothing half-written after a failure;
- bad input: each error names the path or value.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline

from ldm.clip_config import CLIPTextConfig
from ldm.clip_text import CLIPTextModel
from ldm.clip_tokenizer import CLIPTokenizer
from ldm.tokenizer import WordTokenizer
from ldm.vae import AutoencoderKL
from ldm.vae_config import VAEConfig
from tests.test_tokenizer import clip_bpe_path
from unet.config import UNetConfig
from unet.model import UNet
from weights import clip_loading, original_unet, original_vae
from weights.convert import convert, export_diffusers, main
from weights.checks import WeightsMismatchError
from weights.io import WeightsFileError, write_safetensors
from weights.unet_loading import save_unet
from weights.vae_loading import save_vae
from weights.model_folder import SD_V1_SCHEDULE, load_model_folder, manifest, read_manifest

# CLIPTextConfig.tiny() has 1000 ids; CLIP's real tokenizer needs 49408 (and eos 49407) to fit.
TEXT = dataclasses.replace(CLIPTextConfig.tiny(), vocab_size=49408, bos_token_id=49406, eos_token_id=49407,
                           pad_token_id=49407)
CONFIGS = {"unet": UNetConfig.tiny(), "vae": VAEConfig.tiny(), "text_encoder": TEXT}
PROMPT = "a big red circle on a blue background"


def test_tiny_configs_fit_together():
    """The premise of every test below: the tiny networks plug into each other as SD v1's do."""
    assert CONFIGS["unet"].cross_attention_dim == TEXT.hidden_size
    assert CONFIGS["unet"].in_channels == CONFIGS["unet"].out_channels == CONFIGS["vae"].latent_channels


@pytest.fixture(scope="module")
def models() -> dict[str, torch.nn.Module]:
    """Random networks; every parameter moved off its initial value (no zero-initialised layer
    stays all zeros, so a dropped or swapped tensor changes outputs)."""
    torch.manual_seed(0)
    built = {"unet": UNet(CONFIGS["unet"]), "vae": AutoencoderKL(CONFIGS["vae"]),
             "text_encoder": CLIPTextModel(TEXT)}
    with torch.no_grad():
        for model in built.values():
            for p in model.parameters():
                p.add_(0.02 * torch.randn_like(p))
    return {k: m.eval() for k, m in built.items()}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("convert")


@pytest.fixture(scope="module")
def original_file(models, workdir) -> Path:
    """An original single-file SD v1 checkpoint holding the three random networks."""
    checkpoint = {
        **original_unet.project_to_original(models["unet"].state_dict(), CONFIGS["unet"]),
        **original_vae.project_to_original(models["vae"].state_dict(), CONFIGS["vae"]),
        **clip_loading.project_to_original(models["text_encoder"].state_dict()),
    }
    path = workdir / "tiny-sd.safetensors"
    write_safetensors(checkpoint, path)
    return path


@pytest.fixture(scope="module")
def tokenizer_folder(workdir) -> Path:
    """CLIP's vocab.json + merges.txt, made from OpenAI's merges file."""
    return CLIPTokenizer.from_bpe_file(clip_bpe_path()).save(workdir / "clip-tokenizer")


@pytest.fixture(scope="module")
def diffusers_folder(original_file, tokenizer_folder, workdir) -> Path:
    return convert(original_file, workdir / "tiny-diffusers", to="diffusers", tokenizer=tokenizer_folder,
                   configs=CONFIGS, log=lambda line: None)


def assert_same_tensors(got: torch.nn.Module, want: torch.nn.Module) -> None:
    got, want = got.state_dict(), want.state_dict()
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k], want[k]), k


def test_original_file_to_project_folder(models, original_file, tokenizer_folder, workdir):
    lines = []
    dest = convert(original_file, workdir / "tiny-project", tokenizer=tokenizer_folder, configs=CONFIGS,
                   log=lines.append)
    unet, vae, text_encoder, tokenizer = load_model_folder(dest)
    for got, name in ((unet, "unet"), (vae, "vae"), (text_encoder, "text_encoder")):
        assert_same_tensors(got, models[name])  # renamed there and back: the same bits
    reference = CLIPTokenizer.from_folder(tokenizer_folder)
    assert tokenizer.vocab == reference.vocab and tokenizer.merges == reference.merges
    manifest = read_manifest(dest)
    assert manifest["scheduler"] == SD_V1_SCHEDULE and manifest["latent_scale"] == CONFIGS["vae"].scaling_factor
    assert manifest["tokenizer"] == "clip-bpe"
    assert manifest["image_size"] == 512  # an original file records no size: SD v1's
    assert [line.split(":")[0].strip() for line in lines if "/3]" in line] == [
        "[1/3] U-Net", "[2/3] VAE", "[3/3] text encoder"]  # progress per part
    assert not [p.name for p in workdir.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_cli_takes_configs_as_json_and_the_installed_clip_tokenizer(models, original_file, workdir, capsys):
    """No --tokenizer: an original file has none, so the installed clip package's merges are used."""
    args = []
    for name, flag in (("unet", "--unet-config"), ("vae", "--vae-config"), ("text_encoder", "--text-config")):
        path = workdir / f"{name}-config.json"
        path.write_text(json.dumps(CONFIGS[name].to_dict()))
        args += [flag, str(path)]
    assert main([str(original_file), str(workdir / "cli-project"), *args]) == 0
    assert "installed clip package" in capsys.readouterr().out
    unet, _, _, tokenizer = load_model_folder(workdir / "cli-project")
    assert_same_tensors(unet, models["unet"])
    assert tokenizer.vocab == CLIPTokenizer.from_bpe_file(clip_bpe_path()).vocab


def test_diffusers_in_project_out_diffusers_out_loads_in_stable_diffusion_pipeline(models, diffusers_folder, workdir):
    project = convert(diffusers_folder, workdir / "from-diffusers", log=lambda line: None)
    exported = export_diffusers(project, workdir / "exported", log=lambda line: None)
    pipe = StableDiffusionPipeline.from_pretrained(exported, safety_checker=None)
    assert isinstance(pipe.scheduler, DDIMScheduler)
    for key, value in {**SD_V1_SCHEDULE, "set_alpha_to_one": False, "clip_sample": False}.items():
        assert pipe.scheduler.config[key] == value, key

    ours = CLIPTokenizer.from_folder(project)
    ids = ours([PROMPT])  # (1, 77)
    theirs = pipe.tokenizer([PROMPT], padding="max_length", max_length=pipe.tokenizer.model_max_length,
                            truncation=True, return_tensors="pt").input_ids
    assert torch.equal(ids, theirs)

    # Same weights, fp32, the same operations up to summation order: fp32 rounding is ~1e-7 of the
    # output's scale per layer; 1e-5 of the scale leaves 100x of that, while one wrong or missing
    # tensor changes the output by O(its scale).
    def close(got, want):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5 * want.abs().max().item())

    torch.manual_seed(1)
    with torch.no_grad():
        context = models["text_encoder"](ids).last_hidden_state  # (1, 77, 32)
        close(pipe.text_encoder(ids).last_hidden_state, context)
        x, t = torch.randn(1, 4, 16, 16), torch.tensor([321])
        close(pipe.unet(x, t, encoder_hidden_states=context).sample, models["unet"](x, t, context))
        image = torch.randn(1, 3, 32, 32)
        close(pipe.vae.encode(image).latent_dist.mean, models["vae"].encode(image).mean)
        close(pipe.vae.decode(x[:, :, :4, :4]).sample, models["vae"].decode(x[:, :, :4, :4]))


def test_image_size_survives_project_to_diffusers_to_project(original_file, tokenizer_folder, workdir):
    project = convert(original_file, workdir / "p", tokenizer=tokenizer_folder, configs=CONFIGS, log=lambda line: None)
    data = read_manifest(project)
    (project / "model.json").write_text(json.dumps({**data, "image_size": 96}))  # as the toy model's 64
    exported = export_diffusers(project, workdir / "d", log=lambda line: None)
    factor = CONFIGS["vae"].downsample_factor
    assert json.loads((exported / "unet" / "config.json").read_text())["sample_size"] == 96 // factor
    back = convert(exported, workdir / "p2", log=lambda line: None)
    assert read_manifest(back)["image_size"] == 96


def test_a_word_tokenizer_model_exports_to_diffusers_and_back(models, workdir):
    # The toy model's tokenizer has no transformers class: the diffusers folder keeps it as
    # words.json, lists no tokenizer, and diffusers' pipeline runs on prompt embeddings.
    words = WordTokenizer(["big", "red", "circle"])  # ids 0-2, then <pad> 3, <bos> 4, <eos> 5
    text = dataclasses.replace(TEXT, vocab_size=words.vocab_size, bos_token_id=words.bos_id,
                               eos_token_id=words.eos_id, pad_token_id=words.pad_id)
    torch.manual_seed(5)
    text_encoder = CLIPTextModel(text)
    project = workdir / "words-project"
    clip_loading.save_text_encoder(text_encoder, project)
    save_unet(models["unet"], project)
    save_vae(models["vae"], project)
    words.save(project / "tokenizer")
    (project / "model.json").write_text(json.dumps(manifest(0.18215, words, SD_V1_SCHEDULE, image_size=64)))

    lines = []
    exported = convert(project, workdir / "words-diffusers", to="diffusers", log=lines.append)
    assert any("words.json" in line and "prompt_embeds" in line for line in lines)
    assert json.loads((exported / "model_index.json").read_text())["tokenizer"] == [None, None]
    pipe = StableDiffusionPipeline.from_pretrained(exported, safety_checker=None, tokenizer=None)
    ids = words(["big red circle"])  # (1, 77)
    with torch.no_grad():
        context = text_encoder(ids).last_hidden_state
        torch.testing.assert_close(pipe.text_encoder(ids).last_hidden_state, context, rtol=0,
                                   atol=1e-5 * context.abs().max().item())  # fp32 rounding, as above
    back = convert(exported, workdir / "words-back", log=lambda line: None)
    assert load_model_folder(back)[3].words == words.words
    assert read_manifest(back)["image_size"] == 64


def test_refuses_a_non_empty_dest_unless_forced(original_file, tokenizer_folder, workdir):
    dest = workdir / "occupied"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="occupied exists and is not empty; pass --force"):
        convert(original_file, dest, tokenizer=tokenizer_folder, configs=CONFIGS, log=lambda line: None)
    assert (dest / "keep.txt").read_text() == "mine"
    convert(original_file, dest, tokenizer=tokenizer_folder, configs=CONFIGS, force=True, log=lambda line: None)
    assert not (dest / "keep.txt").exists() and (dest / "model.json").is_file()  # replaced, not merged


def test_a_failure_half_way_leaves_dest_as_it_was(original_file, tokenizer_folder, workdir):
    """The log callback raises after the VAE is written (the second of three parts)."""
    dest = workdir / "kept"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")

    def fail_after_vae(line: str) -> None:
        if "[2/3]" in line:
            raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        convert(original_file, dest, tokenizer=tokenizer_folder, configs=CONFIGS, force=True, log=fail_after_vae)
    assert [p.name for p in dest.iterdir()] == ["keep.txt"]
    assert not [p.name for p in workdir.iterdir() if p.name.startswith(".kept")]  # the partial copy is gone


def test_a_source_without_tokenizer_converts_and_says_so(diffusers_folder, workdir):
    source = workdir / "no-tokenizer"
    source.mkdir()
    for part in ("unet", "vae", "text_encoder"):
        (source / part).symlink_to(diffusers_folder / part)
    lines = []
    dest = convert(source, workdir / "no-tokenizer-project", log=lines.append)
    assert any("carries no tokenizer" in line and "--tokenizer" in line for line in lines)
    assert read_manifest(dest)["tokenizer"] is None
    with pytest.raises(FileNotFoundError, match="has no tokenizer"):
        load_model_folder(dest)


def test_weights_that_do_not_fit_fail_before_any_part_is_written(original_file, tokenizer_folder, workdir):
    """A VAE config that is not the file's: the error comes from the header check, before the U-Net
    (the first part) is converted, and no temporary folder is made."""
    lines = []
    wrong_vae = dataclasses.replace(CONFIGS["vae"], layers_per_block=2)
    with pytest.raises(WeightsMismatchError, match=r"VAE weights .*tiny-sd.safetensors \(original layout\)"):
        convert(original_file, workdir / "misfit", tokenizer=tokenizer_folder, configs={**CONFIGS, "vae": wrong_vae},
                log=lines.append)
    assert not [line for line in lines if "[1/3]" in line]
    assert not [p.name for p in workdir.iterdir() if "misfit" in p.name]


def test_bad_input(original_file, diffusers_folder, workdir, capsys):
    with pytest.raises(WeightsFileError, match="missing.safetensors does not exist"):
        convert(workdir / "missing.safetensors", workdir / "out", log=lambda line: None)
    no_vae = workdir / "no-vae"
    no_vae.mkdir()
    for part in ("unet", "text_encoder", "tokenizer"):
        (no_vae / part).symlink_to(diffusers_folder / part)
    with pytest.raises(WeightsFileError, match=r"no-vae holds none of vae.safetensors .* vae/diffusion_pytorch"):
        convert(no_vae, workdir / "out", log=lambda line: None)
    unet_only = workdir / "unet-only.safetensors"
    write_safetensors(original_unet.project_to_original(UNet(CONFIGS["unet"]).state_dict(), CONFIGS["unet"]), unet_only)
    with pytest.raises(WeightsFileError, match=r"unet-only.safetensors has no keys under \['first_stage_model."):
        convert(unet_only, workdir / "out", log=lambda line: None)
    with pytest.raises(WeightsFileError, match="neither a project model folder"):
        convert(workdir / "clip-tokenizer", workdir / "out", log=lambda line: None)
    with pytest.raises(ValueError, match="to='onnx'; expected one of"):
        convert(original_file, workdir / "out", to="onnx")
    with pytest.raises(ValueError, match="is the source"):
        convert(diffusers_folder, diffusers_folder, force=True, log=lambda line: None)
    wide_text = dataclasses.replace(TEXT, hidden_size=64)
    with pytest.raises(ValueError, match="cross_attention_dim 32 differs from the text encoder's hidden_size 64"):
        convert(original_file, workdir / "out", configs={**CONFIGS, "text_encoder": wide_text}, log=lambda line: None)
    with pytest.raises(ValueError, match=r"the tokenizer \(49408 ids, eos 49407\) does not fit"):
        convert(original_file, workdir / "out", configs={**CONFIGS, "text_encoder": CLIPTextConfig.tiny()},
                log=lambda line: None)
    pickled = workdir / "pickled.ckpt"
    torch.save({"state_dict": {"model.diffusion_model.x": torch.zeros(1)}}, pickled)
    with pytest.raises(WeightsFileError, match="pickled.ckpt is a pickled PyTorch file"):
        convert(pickled, workdir / "out", log=lambda line: None)
    (workdir / "a-file").write_text("")
    with pytest.raises(FileExistsError, match="a-file is a file"):
        convert(original_file, workdir / "a-file", force=True, log=lambda line: None)
    with pytest.raises(ValueError, match=r"unknown parts \['text'\]"):
        convert(original_file, workdir / "out", configs={"text": TEXT}, log=lambda line: None)
    with pytest.raises(FileNotFoundError, match="tokenizer .*nope does not exist"):
        convert(original_file, workdir / "out", tokenizer=workdir / "nope", configs=CONFIGS, log=lambda line: None)
    (workdir / "vocab-only.json").write_text("{}")
    with pytest.raises(ValueError, match=r"vocab-only.json is not a .gz BPE merges file"):
        convert(original_file, workdir / "out", tokenizer=workdir / "vocab-only.json", configs=CONFIGS,
                log=lambda line: None)
    (workdir / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty holds no tokenizer"):
        convert(original_file, workdir / "out", tokenizer=workdir / "empty", configs=CONFIGS, log=lambda line: None)
    with pytest.raises(WeightsFileError, match="clip-tokenizer has no model.json"):
        load_model_folder(workdir / "clip-tokenizer")
    with pytest.raises(ValueError, match="must be a CLIPTokenizer or a WordTokenizer, got object"):
        manifest(0.18215, object(), SD_V1_SCHEDULE)
    assert main([str(workdir / "missing.safetensors"), str(workdir / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "missing.safetensors does not exist" in err
    assert not (workdir / "out").exists()
