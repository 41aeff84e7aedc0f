"""The text-to-image pipeline (ldm/pipeline.py) and its CLI (ldm/cli/generate.py), on tiny random models.

- parity: the same weights, prompts and seed give diffusers' StableDiffusionPipeline's images and
  latents, step by step, with DDIM (eta 0 and 1), DDPM, and a negative prompt;
- seeds: the same seed gives the same bits; the seed's noise is one randn of the whole batch;
- the editor: begin_step / end_step see every step with its t, the U-Net sees 2B items under
  guidance, a do-nothing editor changes no bit, end_step's latents are the ones carried on;
- guidance: s = 0 is the unconditional model; inversion refuses s < 1;
- bad input, missing files, the progress bar, image encoding, the CLI.
"""
from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, StableDiffusionPipeline
from PIL import Image

from ddim.inversion import ddim_invert
from ldm.clip_config import CLIPTextConfig
from ldm.clip_text import CLIPTextModel
from ldm.clip_tokenizer import CLIPTokenizer
from ldm.cli.generate import main
from ldm.pipeline import StableDiffusion
from ldm.tokenizer import WordTokenizer
from ldm.vae import AutoencoderKL
from ldm.vae_config import VAEConfig
from ldm.figure_style import GAP
from tests.test_tokenizer import clip_bpe_path
from unet.config import UNetConfig
from unet.editor import Editor, RecordingEditor
from unet.model import UNet
from weights import save_text_encoder, save_unet, save_vae
from weights.convert import export_diffusers
from weights.io import WeightsFileError, write_json
from weights.model_folder import MANIFEST, SD_V1_SCHEDULE, TOKENIZER_FOLDER, manifest

# CLIP's real BPE tokenizer (diffusers' pipeline reads only that) needs 49408 ids and eos 49407.
CLIP_TEXT = dataclasses.replace(CLIPTextConfig.tiny(), vocab_size=49408, bos_token_id=49406, eos_token_id=49407,
                                pad_token_id=49407)
WORDS = ["a", "big", "small", "red", "blue", "green", "circle", "square", "on", "background"]
n = len(WORDS)  # WordTokenizer: <pad> = n, <bos> = n + 1, <eos> = n + 2
WORD_TEXT = dataclasses.replace(CLIPTextConfig.tiny(), vocab_size=n + 3, pad_token_id=n, bos_token_id=n + 1,
                                eos_token_id=n + 2)
PROMPTS = ["a big red circle on a blue background", "a small green square"]
SIZE = 64  # the tiny models' native size: latents 8 x 8
SEED = 3


def random_parts(text_config: CLIPTextConfig, seed: int) -> tuple[UNet, AutoencoderKL, CLIPTextModel]:
    """Tiny random networks, every parameter moved off its initial value (no layer stays zero)."""
    torch.manual_seed(seed)
    parts = UNet(UNetConfig.tiny()), AutoencoderKL(VAEConfig.tiny()), CLIPTextModel(text_config)
    with torch.no_grad():
        for model in parts:
            for p in model.parameters():
                p.add_(0.02 * torch.randn_like(p))
    return parts


def save_project(folder: Path, parts, tokenizer, image_size: int = SIZE) -> Path:
    unet, vae, text_encoder = parts
    save_unet(unet, folder)
    save_vae(vae, folder)
    save_text_encoder(text_encoder, folder)
    tokenizer.save(folder / TOKENIZER_FOLDER)
    write_json(manifest(vae.config.scaling_factor, tokenizer, SD_V1_SCHEDULE, image_size), folder / MANIFEST)
    return folder


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory) -> Path:
    return save_project(tmp_path_factory.mktemp("pipeline") / "clip-model", random_parts(CLIP_TEXT, 0),
                        CLIPTokenizer.from_bpe_file(clip_bpe_path()))


@pytest.fixture(scope="module")
def word_folder(tmp_path_factory) -> Path:
    return save_project(tmp_path_factory.mktemp("pipeline") / "word-model", random_parts(WORD_TEXT, 1),
                        WordTokenizer(WORDS))


@pytest.fixture(scope="module")
def pipe(clip_folder) -> StableDiffusion:
    return StableDiffusion.from_folder(clip_folder)


@pytest.fixture(scope="module")
def reference(clip_folder) -> StableDiffusionPipeline:
    exported = export_diffusers(clip_folder, clip_folder.parent / "diffusers", log=lambda line: None)
    ref = StableDiffusionPipeline.from_pretrained(exported, safety_checker=None, requires_safety_checker=False)
    ref.set_progress_bar_config(disable=True)
    return ref


@dataclass
class StepRecorder(RecordingEditor):
    """Records begin_step / end_step (and, as a RecordingEditor, every U-Net site's tensor shapes);
    asks for no attention probabilities, so the U-Net computes exactly what it computes without it."""

    probs: bool = False
    begun: list[tuple[int, int]] = field(default_factory=list)
    ended: list[tuple[int, int]] = field(default_factory=list)
    latents: list[torch.Tensor] = field(default_factory=list)

    def begin_step(self, i, t):
        self.begun.append((i, int(t)))

    def end_step(self, latents, i, t):
        self.ended.append((i, int(t)))
        self.latents.append(latents.clone())
        return latents


def test_manifest_image_size_and_schedule_reach_the_pipeline(pipe):
    assert pipe.image_size == SIZE and pipe.size_multiple == 8 * 4  # VAE f = 8, tiny U-Net 2^2
    assert pipe.steps_offset == 1 and pipe.final_alpha_bar == pipe.schedule.alpha_bar[0].item()
    assert pipe.timesteps(50).tolist() == list(range(981, 0, -20))  # SD v1's 981, 961, ..., 1
    reference = DDIMScheduler(**{k: v for k, v in SD_V1_SCHEDULE.items()})
    reference.set_timesteps(25)
    assert pipe.timesteps(25).tolist() == reference.timesteps.tolist()


# ---------------------------------------------------------------------------------------- parity
PARITY_CASES = {  # steps, sampler, eta, negative prompts
    "ddim-10": (10, "ddim", 0.0, None),
    "ddim-25-negative": (25, "ddim", 0.0, ["", "blurry photo"]),
    "ddim-eta1-10": (10, "ddim", 1.0, None),
    "ddpm-10-negative": (10, "ddpm", 0.0, ["", "blurry photo"]),
}


@pytest.mark.parametrize("case", PARITY_CASES)
def test_end_to_end_parity_with_diffusers(case, pipe, reference):
    """Same weights, prompts, seed and steps as diffusers' StableDiffusionPipeline (guidance 7.5).

    diffusers draws the starting latents as one randn of (B, 4, 8, 8) from the CPU generator and
    the step noise (DDIM eta > 0, DDPM) as one randn of (B, 4, 8, 8) per step from the same
    generator, in the order this pipeline does, so eta = 1 and DDPM match too.

    Bounds, from measurement (python -m pytest tests/test_pipeline.py -k parity -s prints them):
    images in [0, 1]: max abs difference measured 1.3e-6 .. 1.9e-6 over these four cases, from fp32
    rounding (6e-8 relative) through ~N U-Net calls and the decoder, and diffusers' fp32 alphas_cumprod
    against our fp64 one; bound 2e-5, 10x that. Latents (the random U-Net under guidance 7.5 grows
    them to |z| ~ 30): measured <= 1e-6 of their largest magnitude at every step; bound 1e-5 of it.
    A wrong detail is far above both: measured on the 10-step DDIM case, final alpha 1 instead of
    alpha_bar[0] moves the images by 1.6e-3, guidance 7.4 instead of 7.5 by 1.1e-3, steps_offset 0
    by 8.7e-3, and the latents by 1e-3 of their scale or more.
    """
    steps, sampler, eta, negative = PARITY_CASES[case]
    scheduler_type = DDIMScheduler if sampler == "ddim" else DDPMScheduler
    reference.scheduler = scheduler_type.from_config(reference.scheduler.config)
    theirs_latents = []

    def keep_latents(pipeline, i, t, kwargs):  # diffusers' per-step callback: the latents after step i
        theirs_latents.append(kwargs["latents"].clone())
        return kwargs

    theirs = reference(PROMPTS, negative_prompt=negative, num_inference_steps=steps, guidance_scale=7.5, eta=eta,
                       generator=torch.Generator().manual_seed(SEED), output_type="np", height=SIZE, width=SIZE,
                       callback_on_step_end=keep_latents).images  # (B, H, W, 3) in [0, 1]
    recorder = StepRecorder()
    ours = pipe.text_to_image(PROMPTS, negative_prompt=negative, steps=steps, sampler=sampler, eta=eta, seed=SEED,
                              editor=recorder, progress=False)

    assert len(recorder.latents) == len(theirs_latents) == steps
    scale = max(z.abs().max().item() for z in theirs_latents)
    latent_err = max((a - b).abs().max().item() for a, b in zip(recorder.latents, theirs_latents)) / scale
    image_err = np.abs(ours.images.permute(0, 2, 3, 1).numpy() - theirs).max()
    print(f"\n{case}: images max abs diff {image_err:.3g}; latents max diff / scale {latent_err:.3g} (scale {scale:.3g})")
    assert torch.equal(ours.latents, recorder.latents[-1])
    assert latent_err <= 1e-5, f"latents differ by {latent_err:.3g} of their scale"
    assert image_err <= 2e-5, f"images differ by {image_err:.3g}"


# ---------------------------------------------------------------------------------------- seeds
def small(pipe, prompts=PROMPTS[:1], **kwargs):
    """A cheap run: 3 DDIM steps at 32 x 32 (latents 4 x 4)."""
    kwargs = {"steps": 3, "height": 32, "width": 32, "progress": False, **kwargs}
    return pipe.text_to_image(prompts, **kwargs)


def test_same_seed_same_bits_and_the_seed_is_one_randn_of_the_batch(pipe):
    a, b = small(pipe, PROMPTS, seed=0), small(pipe, PROMPTS, seed=0)
    assert torch.equal(a.images, b.images) and torch.equal(a.latents, b.latents)
    c = small(pipe, PROMPTS, seed=1)
    assert (a.images - c.images).abs().max() > 1e-3
    noise = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))  # the whole batch at once
    assert torch.equal(small(pipe, PROMPTS, latents=noise).images, a.images)
    assert torch.equal(small(pipe, PROMPTS, generator=torch.Generator().manual_seed(0)).images, a.images)
    # Prompt 0's noise is the first half of the batch's randn, so alone it starts elsewhere:
    assert not torch.equal(small(pipe, PROMPTS[:1], seed=0).latents, a.latents[:1])


def test_ddpm_and_eta_draw_step_noise_from_the_generator(pipe):
    for kwargs in ({"sampler": "ddpm"}, {"eta": 1.0}):
        a, b = small(pipe, seed=0, **kwargs), small(pipe, seed=0, **kwargs)
        assert torch.equal(a.images, b.images)
        noise = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
        # Same start, but a fresh generator's step noise differs from seed 0's continuation:
        other = small(pipe, latents=noise, generator=torch.Generator().manual_seed(5), **kwargs)
        assert not torch.equal(other.latents, a.latents)


# ---------------------------------------------------------------------------------------- the editor
def test_editor_sees_every_step_and_the_doubled_batch(pipe):
    recorder = StepRecorder()
    plain = small(pipe, PROMPTS, seed=0, steps=4)
    edited = small(pipe, PROMPTS, seed=0, steps=4, editor=recorder)
    steps = [(i, t) for i, t in enumerate(pipe.timesteps(4).tolist())]
    assert recorder.begun == recorder.ended == steps
    sites_per_call = len(pipe.unet.sites)
    assert len(recorder.records) == 4 * sites_per_call  # one U-Net call per step
    assert {r.shapes[0][0] for r in recorder.records} == {2 * len(PROMPTS)}  # [uncond, cond]
    assert torch.equal(edited.images, plain.images)  # a recording editor changes nothing
    assert torch.equal(small(pipe, PROMPTS, seed=0, steps=4, editor=Editor()).images, plain.images)

    single = StepRecorder()
    small(pipe, PROMPTS, seed=0, steps=2, guidance_scale=1.0, editor=single)
    assert {r.shapes[0][0] for r in single.records} == {len(PROMPTS)}  # s = 1: the conditional half only


def test_end_step_latents_are_carried_on(pipe):
    class ZeroAtStep(Editor):
        def __init__(self, step):
            self.step = step

        def end_step(self, latents, i, t):
            return torch.zeros_like(latents) if i == self.step else latents

    assert torch.equal(small(pipe, seed=0, editor=ZeroAtStep(2)).latents, torch.zeros(1, 4, 4, 4))  # the last step
    plain = small(pipe, seed=0)
    assert (small(pipe, seed=0, editor=ZeroAtStep(0)).latents - plain.latents).abs().max() > 1e-2

    class Wrong(Editor):
        def end_step(self, latents, i, t):
            return latents[:, :2]

    with pytest.raises(ValueError, match=r"editor.end_step returned \(1, 2, 4, 4\) at step 0, expected \(1, 4, 4, 4\)"):
        small(pipe, seed=0, editor=Wrong())


def test_denoise_start_step_and_per_step_uncond(pipe):
    cond, uncond = pipe.encode_prompts(PROMPTS[:1]), pipe.encode_prompts([""])
    z = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    full = pipe.denoise(z, cond, uncond, steps=4, progress=False)
    per_step = pipe.denoise(z, cond, steps=4, uncond_per_step=[uncond] * 4, progress=False)
    assert torch.equal(per_step, full)  # the same context at every step: the same computation
    changed = pipe.denoise(z, cond, steps=4, uncond_per_step=[uncond] * 3 + [cond], progress=False)
    assert (changed - full).abs().max() > 1e-3  # the last step's unconditional context is used

    # start_step: resuming from the loop's own latent after step 1 finishes the loop bit for bit.
    recorder = StepRecorder()
    assert torch.equal(pipe.denoise(z, cond, uncond, steps=4, editor=recorder, progress=False), full)
    resumed = StepRecorder()
    late = pipe.denoise(recorder.latents[1], cond, uncond, steps=4, start_step=2, editor=resumed, progress=False)
    assert resumed.begun == [(2, 251), (3, 1)]  # 4 steps visit 751, 501, 251, 1
    assert torch.equal(late, full)


def test_guidance_zero_is_the_unconditional_model(pipe):
    """eps_u + 0 (eps_c - eps_u) = eps_u: guidance 0 with prompt P samples what guidance 1 with ""
    samples. Not bit-equal: the U-Net runs on 2 items instead of 1 (another batched summation order);
    the fp32 difference measured at most 9.5e-7 on the images over seeds 0-3, bound 1e-5."""
    zero = small(pipe, ["a big red circle"], seed=0, guidance_scale=0.0)
    empty = small(pipe, [""], seed=0, guidance_scale=1.0)
    torch.testing.assert_close(zero.images, empty.images, rtol=0, atol=1e-5)
    assert (small(pipe, ["a big red circle"], seed=0, guidance_scale=1.0).images - empty.images).abs().max() > 1e-3


# ---------------------------------------------------------------------------------------- inversion
def test_invert_is_ddim_inversion_with_the_pipeline_schedule(pipe):
    cond = pipe.encode_prompts(PROMPTS[:1])
    z0 = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    ours = pipe.invert(z0, cond, steps=5, progress=False)
    theirs = ddim_invert(lambda x, t: pipe.unet(x, t, cond), z0, pipe.schedule, 5, progress=False)
    assert len(ours) == 6 and torch.equal(ours[0], z0)
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match=r"guidance_scale=0.5 < 1 is not allowed for inversion: it extrapolates"):
        pipe.invert(z0, cond, steps=5, guidance_scale=0.5)
    with pytest.raises(ValueError, match="guidance_scale=2.0 needs the unconditional context uncond"):
        pipe.invert(z0, cond, steps=5, guidance_scale=2.0)


# ---------------------------------------------------------------------------------------- progress
def test_progress_bar_can_be_turned_off(pipe, capsys):
    small(pipe, seed=0, progress=False)
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""
    small(pipe, seed=0, progress=True)
    assert "DDIM: 100%" in capsys.readouterr().err  # the control: the bar is there when asked for


# ---------------------------------------------------------------------------------------- images
def test_encode_image_and_decode(pipe):
    pixels = np.random.default_rng(0).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    z = pipe.encode_image(pixels)
    assert z.shape == (1, 4, 8, 8)
    x = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255
    assert torch.equal(z, pipe.vae.encode(2 * x - 1).mean * pipe.vae.config.scaling_factor)  # the posterior mean
    images = pipe.decode(z)
    assert images.shape == (1, 3, 64, 64) and images.min() >= 0 and images.max() <= 1
    assert pipe.encode_image([pixels, pixels[::-1]]).shape == (2, 4, 8, 8)
    with pytest.warns(UserWarning, match=r"is 70x50 \(width x height\); centre-cropped to 64x32"):
        assert pipe.encode_image(np.zeros((50, 70), dtype=np.uint8)).shape == (1, 4, 4, 8)  # multiples of 32
    with pytest.warns(UserWarning, match="resized to 32x32"):
        assert pipe.encode_image(Image.fromarray(pixels), height=32, width=32).shape == (1, 4, 4, 4)
    with pytest.raises(ValueError, match=r"different sizes \[\(32, 64\), \(64, 64\)\]; pass height and width"), \
            pytest.warns(UserWarning, match="64x40"):
        pipe.encode_image([pixels, pixels[:40]])


# ---------------------------------------------------------------------------------------- bad input
def test_bad_input(pipe):
    with pytest.raises(ValueError, match="expected at least one prompt, got an empty list"):
        pipe.text_to_image([])
    with pytest.raises(ValueError, match="got the single string 'a cat'; pass"):
        pipe.text_to_image("a cat")
    with pytest.raises(ValueError, match=r"height=65 must be a positive multiple of 32 \(the VAE divides sizes by 8"):
        small(pipe, height=65)
    with pytest.raises(ValueError, match="width=40 must be a positive multiple of 32"):
        small(pipe, width=40)  # a multiple of 8, but the tiny U-Net halves the 5-wide latent twice
    with pytest.raises(ValueError, match=r"negative_prompt has 3 entries, expected one per prompt \(2\)"):
        small(pipe, PROMPTS, negative_prompt=["", "", ""])
    with pytest.raises(ValueError, match="num_inference_steps must be a positive int, got 0"):
        small(pipe, steps=0)
    with pytest.raises(ValueError, match="eta must be a number >= 0, got -0.5"):
        small(pipe, eta=-0.5)
    with pytest.raises(ValueError, match="eta=1.0 applies to the DDIM sampler only"):
        small(pipe, sampler="ddpm", eta=1.0)
    with pytest.raises(ValueError, match="unknown sampler 'euler'"):
        small(pipe, sampler="euler")
    with pytest.raises(ValueError, match="guidance_scale must be a finite number, got nan"):
        small(pipe, guidance_scale=float("nan"))
    with pytest.raises(ValueError, match="give seed or generator, not both"):
        small(pipe, seed=0, generator=torch.Generator())
    with pytest.raises(ValueError, match=r"latents have shape \(1, 4, 8, 8\), expected \(1, 4, 4, 4\)"):
        small(pipe, latents=torch.zeros(1, 4, 8, 8))
    with pytest.raises(TypeError, match="editor must be an unet.Editor or None, got str"):
        small(pipe, editor="p2p")
    cond, z = pipe.encode_prompts(PROMPTS[:1]), torch.zeros(1, 4, 4, 4)
    with pytest.raises(ValueError, match="guidance_scale=7.5 needs the unconditional context"):
        pipe.denoise(z, cond, None, steps=2)
    with pytest.raises(ValueError, match=r"start_step must be an int in \[0, 1\] for steps=2, got 2"):
        pipe.denoise(z, cond, cond, steps=2, start_step=2)
    with pytest.raises(ValueError, match=r"uncond_per_step has 1 entries, expected one per step \(2\)"):
        pipe.denoise(z, cond, steps=2, uncond_per_step=[cond])
    with pytest.raises(ValueError, match=r"cond must be \(1, tokens, 32\), got \(1, 77, 16\)"):
        pipe.denoise(z, cond[..., :16], cond, steps=2)


def test_long_prompts_are_truncated_with_a_warning(pipe):
    long = " ".join(["red"] * 80)
    with pytest.warns(UserWarning, match="has 80 tokens but only 75 fit in 77 positions"):
        context = pipe.encode_prompts([long])
    assert context.shape == (1, 77, 32)
    torch.testing.assert_close(context, pipe.encode_prompts([" ".join(["red"] * 75)]), rtol=0, atol=0)


def test_missing_parts_are_named(clip_folder, tmp_path):
    for missing, error, match in (
        ("vae.safetensors", WeightsFileError, r"is missing vae.safetensors \(the vae part\)"),
        ("text_encoder.json", WeightsFileError, r"is missing text_encoder.json"),
        (TOKENIZER_FOLDER, FileNotFoundError, r"tokenizer .*broken/tokenizer does not exist"),
        (MANIFEST, WeightsFileError, "broken has no model.json"),
    ):
        broken = tmp_path / "broken"
        shutil.rmtree(broken, ignore_errors=True)
        shutil.copytree(clip_folder, broken)
        target = broken / missing
        shutil.rmtree(target) if target.is_dir() else target.unlink()
        with pytest.raises(error, match=match):
            StableDiffusion.from_folder(broken)


# ---------------------------------------------------------------------------------------- the CLI
def test_cli_writes_the_pipelines_image(word_folder, tmp_path, capsys):
    out = tmp_path / "out" / "circle.png"
    args = ["--weights", str(word_folder), "--prompt", "a big red circle", "--seed", "4", "--steps", "3",
            "--height", "32", "--width", "32", "--quiet"]
    assert main([*args, "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    want = StableDiffusion.from_folder(word_folder).text_to_image(
        ["a big red circle"], seed=4, steps=3, height=32, width=32, progress=False).to_pil()[0]
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(want))

    grid = tmp_path / "grid.png"
    assert main([*args, "--prompt", "a small blue square", "--negative", "green", "--out", str(grid)]) == 0
    # two 32 x 32 images side by side, each enlarged 6x to 192 px, GAP px apart, captions beneath
    assert Image.open(grid).width == 2 * 192 + 3 * GAP and Image.open(grid).height > GAP + 192
    assert "grid of 2 images" in capsys.readouterr().out
    assert not [p for p in tmp_path.rglob(".*")]  # no temporary file left behind


@pytest.mark.parametrize("bad, message", [
    (["--steps", "0"], "argument --steps: expected a positive integer, got 0"),
    (["--steps", "ten"], "argument --steps: expected a positive integer, got 'ten'"),
    (["--height", "65"], "argument --height: expected a multiple of 8"),
    (["--eta", "-1"], "argument --eta: expected a finite number >= 0, got -1"),
    (["--guidance", "nan"], "argument --guidance: expected a finite number, got nan"),
    (["--sampler", "euler"], "argument --sampler: invalid choice: 'euler'"),
    (["--out", "image.xyz"], "cannot write .xyz"),
    (["--negative", "a", "--negative", "b"], "--negative given 2 times; give it once or once per --prompt"),
    (["--sampler", "ddpm", "--eta", "0.5"], "--eta applies to --sampler ddim only"),
])
def test_cli_rejects_bad_arguments(bad, message, word_folder, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--weights", str(word_folder), "--prompt", "a red circle", "--out", str(tmp_path / "x.png"), *bad])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_cli_reports_load_errors(word_folder, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--weights", str(tmp_path / "nowhere"), "--prompt", "a", "--out", str(tmp_path / "x.png")])
    assert "nowhere is not a folder" in capsys.readouterr().err
    assert main(["--weights", str(tmp_path), "--prompt", "a", "--out", str(tmp_path / "x.png")]) == 2
    assert "has no model.json" in capsys.readouterr().err
    assert main(["--weights", str(word_folder), "--prompt", "a purple circle", "--steps", "1", "--quiet",
                 "--out", str(tmp_path / "x.png")]) == 2
    assert "unknown word 'purple'" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
