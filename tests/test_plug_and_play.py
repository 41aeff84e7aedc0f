"""Plug-and-Play's mechanics (editing/plug_and_play.py) on tiny random models, and its round trip on the toy model.

- zero injection fractions are plain image-to-image from the inverted latent, bit for bit;
- the inversion keeps z_t^G at exactly the sampling timesteps, whatever ``inversion_steps`` visits;
- the injected sites are the documented ones on SD v1 (meta device) and on the toy U-Net, and a
  recording editor sees injection at exactly those sites and steps during a translation;
- the injection itself, by hand: the targets get the source's residual and q, k; v is never handed over;
- on the shipped toy model, the source caption with full injection reconstructs unseen images;
- bad input is refused, or handled as documented (grey, RGBA, odd-sized images).

Semantics over 20+ translations (mask kept, attributes changed, SDEdit and ablations beside) take
minutes: benchmarks/pnp.py measures them.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from editing.plug_and_play import (GuidanceInversion, InjectionSites, PlugAndPlay, injection_sites,
                                   invert_guidance_image, plug_and_play, sdedit)
from ldm.pipeline import StableDiffusion
from tests.test_null_text import tiny_random_sd
from toyworld.evaluate import psnr_db
from toyworld.model import TOY_GUIDANCE_SCALE, toy_unet_config
from toyworld.render import ToyDataset
from toyworld.train import TRAIN_SEED
from toyworld.world import caption
from unet.config import UNetConfig
from unet.editor import Editor, RecordingEditor
from unet.model import UNet

STEPS = 10
TARGET, NEGATIVE = "a small green square", "a big blue circle"  # words of the tiny model's vocabulary
SD_FEATURE = "up_blocks.1.resnets.1"
SD_ATTENTION = [f"up_blocks.{level}.attentions.{j}.transformer_blocks.0.attn1"
                for level, js in ((1, (1, 2)), (2, (0, 1, 2)), (3, (0, 1, 2))) for j in js]  # decoder layers 4-11
TOY_FEATURE = "up_blocks.0.resnets.1"
TOY_ATTENTION = [f"up_blocks.{level}.attentions.{j}.transformer_blocks.0.attn1"
                 for level, j in ((0, 1), (1, 0), (1, 1))]


@pytest.fixture(scope="module")
def sd() -> StableDiffusion:
    """The toy model's U-Net layout (2 levels, 1 ResBlock per encoder level, attention at both) at the
    tiny test sizes, random weights."""
    return tiny_random_sd(seed=2)


@pytest.fixture(scope="module")
def inversion(sd) -> GuidanceInversion:
    z0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))  # (1, 4, 8, 8): unit scale, as SD's
    return invert_guidance_image(sd, z0, steps=STEPS, progress=False)


# ----------------------------------------------------------------------------------------------
# bits


@pytest.mark.parametrize("guidance", [7.5, 1.0])
def test_zero_injection_is_plain_image_to_image_bit_for_bit(sd, inversion, guidance):
    """With both fractions 0 no step injects, so no step runs the source branch: each is
    ``predict_noise`` on [uncond, cond] (or cond alone at s = 1) and Eq. 12, as in ``denoise``."""
    cond, uncond = sd.encode_prompts([TARGET]), sd.encode_prompts([NEGATIVE])
    z_T = inversion.latents.at(int(sd.timesteps(STEPS)[0]))
    plain = sd.denoise(z_T, cond, uncond if guidance != 1 else None, steps=STEPS, guidance_scale=guidance,
                       progress=False)
    kwargs = dict(negative_prompt=NEGATIVE, guidance_scale=guidance, progress=False)
    zero = plug_and_play(sd, inversion, TARGET, feature_injection=0.0, attention_injection=0.0, **kwargs)
    assert torch.equal(zero, plain)
    for f, a in ((0.1, 0.0), (0.0, 0.1)):  # one step of either injection changes the result
        assert not torch.equal(plug_and_play(sd, inversion, TARGET, feature_injection=f, attention_injection=a,
                                             **kwargs), plain)


def test_inversion_keeps_z_t_at_the_sampling_timesteps(sd, inversion):
    """``latents.at(t)`` is the inversion's latent at timestep t (``sd.invert`` lists them from z_0 up),
    for every timestep of the ``steps``-step sampler and no other, and ``latents.at(-1)`` is z_0; with
    twice the inversion steps the kept latents are every other one of that finer trajectory
    (t = 1 + 50 m is its entry m + 1)."""
    timesteps = sd.timesteps(STEPS).tolist()  # 901, 801, ..., 1
    empty = sd.encode_prompts([""])
    trajectory = sd.invert(inversion.z0, empty, steps=STEPS, progress=False)  # [z_0, z_1, z_101, ..., z_901]
    assert list(inversion.latents.timesteps) == [-1] + sorted(timesteps) and inversion.inversion_steps == STEPS
    assert torch.equal(inversion.latents.at(-1), trajectory[0])
    for i, t in enumerate(timesteps):
        assert torch.equal(inversion.latents.at(t), trajectory[STEPS - i]), f"step {i}, t = {t}"
    fine = invert_guidance_image(sd, inversion.z0, steps=STEPS, inversion_steps=2 * STEPS, progress=False)
    finer = sd.invert(inversion.z0, empty, steps=2 * STEPS, progress=False)  # t = 1, 51, 101, ..., 951
    assert list(fine.latents.timesteps) == [-1] + sorted(timesteps) and fine.inversion_steps == 2 * STEPS
    for i, t in enumerate(timesteps):
        assert torch.equal(fine.latents.at(t), finer[2 * STEPS - 1 - 2 * i]), f"step {i}, t = {t}"


# ----------------------------------------------------------------------------------------------
# sites and steps


def names(sites: InjectionSites) -> tuple[str, list[str]]:
    return sites.feature.name, [s.name for s in sites.attention]


def test_injection_sites_are_the_documented_ones():
    """SD v1: up_blocks[1].resnets[1] (16x16 of 64x64) and decoder self-attention layers 4-11, as the
    official code's ``register_conv_control_efficient`` / ``res_dict``; the toy U-Net: the same rule
    lands on its 4x4 decoder level, up_blocks[0].resnets[1] and the three self-attentions after it."""
    with torch.device("meta"):
        sd_unet, toy_unet = UNet(UNetConfig.sd_v1()), UNet(toy_unet_config())
    sd_sites = injection_sites(sd_unet.sites)
    assert names(sd_sites) == (SD_FEATURE, SD_ATTENTION)
    assert sd_sites.feature.downsample == 4 and {s.downsample for s in sd_sites.attention} == {4, 2, 1}
    assert names(injection_sites(toy_unet.sites)) == (TOY_FEATURE, TOY_ATTENTION)
    # the knobs move the choice as documented
    assert injection_sites(sd_unet.sites, level_size=0.5).feature.name == "up_blocks.2.resnets.1"
    assert injection_sites(sd_unet.sites, feature_resnet=0).feature.name == "up_blocks.1.resnets.0"
    first = "up_blocks.1.attentions.0.transformer_blocks.0.attn1"
    assert names(injection_sites(sd_unet.sites, attention_from=0))[1] == [first, *SD_ATTENTION]


class InjectionLog(PlugAndPlay):
    """PlugAndPlay that notes (step, site, what) wherever it hands back something else than it got,
    and checks what it hands back: every item the source's (item 0's) tensor."""

    def __init__(self, *args, compare: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.compare = compare  # False on the meta device: identity only, there are no values
        self.injected: set[tuple[int, str, str]] = set()
        self.batches: dict[int, int] = {}

    def changed(self, new: torch.Tensor, old: torch.Tensor) -> bool:
        if new is old:
            return False
        if self.compare:
            assert not torch.equal(new, old) and torch.equal(new, old[:1].expand_as(old))
        return True

    def resnet_residual(self, h, site):
        self.batches[self.step] = h.shape[0]
        out = super().resnet_residual(h, site)
        if self.changed(out, h):
            self.injected.add((self.step, site.name, "feature"))
        return out

    def attention_qk(self, q, k, site):
        q_new, k_new = super().attention_qk(q, k, site)
        if self.changed(q_new, q) | self.changed(k_new, k):
            self.injected.add((self.step, site.name, "qk"))
        return q_new, k_new


def expected(feature: str, attention: list[str], steps: int, f: float, a: float) -> set[tuple[int, str, str]]:
    return ({(i, feature, "feature") for i in range(int(f * steps))}
            | {(i, name, "qk") for i in range(int(a * steps)) for name in attention})


@pytest.mark.parametrize("guidance", [7.5, 1.0])
def test_a_translation_injects_at_exactly_those_sites_and_steps(sd, inversion, guidance):
    """Defaults 0.8 and 0.5 of 10 steps: features in steps 0-7, q and k in steps 0-4, every target item
    gets the source's tensor (checked by the log), and the source branch (a batch of 3: source,
    uncond, cond; 2 at s = 1) runs only in steps that inject; steps 8-9 run the target alone
    (uncond, cond; cond at s = 1), as plain sampling does."""
    log = InjectionLog(injection_sites(sd.unet.sites), STEPS)
    plug_and_play(sd, inversion, TARGET, negative_prompt=NEGATIVE, guidance_scale=guidance, editor=log, progress=False)
    assert log.injected == expected(TOY_FEATURE, TOY_ATTENTION, STEPS, 0.8, 0.5)
    pair = 2 if guidance != 1 else 1
    assert log.batches == {i: pair + 1 if i < 8 else pair for i in range(STEPS)}


class SourceFeatures(PlugAndPlay):
    """Keeps, per step, the source item's residual at the feature site (before the injection)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.kept: dict[int, torch.Tensor] = {}

    def resnet_residual(self, h, site):
        if site == self.sites.feature and self.injecting(self.step):  # the source branch runs
            self.kept[self.step] = h[0].clone()  # (C, H, W)
        return super().resnet_residual(h, site)


def test_the_source_branch_is_the_inverted_latent_at_the_same_timestep(sd, inversion):
    """Step i's source item is the U-Net on (z_{t_i}^G, "", t_i): its features at the feature site are
    those of a batch of three copies of that input run with no injection (the same batch size, so
    the same kernels: equal bits)."""
    log = SourceFeatures(injection_sites(sd.unet.sites), STEPS)
    plug_and_play(sd, inversion, TARGET, negative_prompt=NEGATIVE, editor=log, progress=False)
    empty = sd.encode_prompts([""]).expand(3, -1, -1)  # (3, 77, D)
    assert sorted(log.kept) == list(range(8))
    for i, t in enumerate(sd.timesteps(STEPS).tolist()[:8]):
        recorder = RecordingEditor(probs=False, keep=True)
        with torch.no_grad():
            sd.unet(inversion.latents.at(t).expand(3, -1, -1, -1), t, empty, recorder)
        before = [r.site for r in recorder.records].index(log.sites.feature)  # records ahead of the feature site's
        feature = recorder.tensors[sum(len(r.shapes) for r in recorder.records[:before])]  # (3, C, H, W)
        assert torch.equal(log.kept[i], feature[0]), f"step {i}, t = {t}"


def test_sd_v1_u_net_injects_at_exactly_those_sites_and_steps_on_meta():
    """The SD v1 U-Net, on the meta device (no arithmetic: the log checks identity), called as a
    translation calls it, batch 3 at every step of 3, fractions 0.7 (features: steps 0-1) and 0.4
    (q, k: step 0); step 2 injects nothing. (A meta forward costs ~2 s of Python: few steps.)"""
    with torch.device("meta"):
        unet = UNet(UNetConfig.sd_v1())
        log = InjectionLog(injection_sites(unet.sites), 3, 0.7, 0.4, compare=False)
        for i, t in enumerate((667, 334, 1)):
            log.begin_step(i, t)
            unet(torch.zeros(3, 4, 64, 64), torch.tensor(t), torch.zeros(3, 77, 768), editor=log)
    assert log.injected == expected(SD_FEATURE, SD_ATTENTION, 3, 0.7, 0.4)


# ----------------------------------------------------------------------------------------------
# the injection by hand


def test_injection_by_hand():
    """Eq. 4-5 on constructed tensors: while its window is open, the feature site's residual and the
    listed self-attentions' q and k of every item become item 0's (the source's); the source itself,
    every other site and every step after the window are handed back untouched (the same object)."""
    with torch.device("meta"):
        sites = UNet(toy_unet_config()).sites
    chosen = injection_sites(sites)
    editor = PlugAndPlay(chosen, steps=10, feature_injection=0.3, attention_injection=0.2)
    g = torch.Generator().manual_seed(0)
    h = torch.randn(3, 64, 4, 4, generator=g)  # (source, uncond, cond) at the 4x4 feature site
    q, k = torch.randn(3, 4, 16, 16, generator=g), torch.randn(3, 4, 16, 16, generator=g)  # (3, heads, N, d)
    other_resnet = next(s for s in sites if s.kind == "resnet" and s != chosen.feature)
    cross = next(s for s in sites if s.kind == "cross" and s.location == "up")
    down_self = next(s for s in sites if s.kind == "self" and s.location == "down")
    for i in range(10):
        editor.begin_step(i, 1000 - 100 * i)
        assert editor.injecting(i) == (i < 3)
        out = editor.resnet_residual(h, chosen.feature)
        if i < 3:
            assert all(torch.equal(out[b], h[0]) for b in range(3)), f"step {i}"
        else:
            assert out is h
        q_new, k_new = editor.attention_qk(q, k, chosen.attention[-1])
        if i < 2:
            assert all(torch.equal(q_new[b], q[0]) and torch.equal(k_new[b], k[0]) for b in range(3)), f"step {i}"
        else:
            assert q_new is q and k_new is k
        assert editor.resnet_residual(h, other_resnet) is h
        for site in (cross, down_self):
            assert all(a is b for a, b in zip(editor.attention_qk(q, k, site), (q, k)))
    assert PlugAndPlay.attention_probs is Editor.attention_probs  # the map that multiplies v: not touched
    assert not any(editor.wants_probs(s) for s in sites)  # the fused kernel everywhere: v is never seen


# ----------------------------------------------------------------------------------------------
# the toy model


UNSEEN_SEED = 31415  # ToyDataset seed of the test images; the toy model trained on seed TRAIN_SEED's
TOY_IMAGES = 3


@pytest.fixture(scope="module")
def toy_round_trip() -> dict[str, torch.Tensor]:
    """PSNR (dB on [0, 1]) against the rendered image: the VAE alone, D(E(x)); Plug-and-Play with the
    true caption as the target and full injection (1, 1); the same without injection (0, 0). 50 steps,
    guidance 5 (the toy model's), negative prompt "" (its vocabulary has no English words)."""
    assert UNSEEN_SEED != TRAIN_SEED
    toy = StableDiffusion.from_folder("weights/toy")
    data = ToyDataset(UNSEEN_SEED)
    psnr: dict[str, list[float]] = {"vae": [], "full": [], "none": []}
    for k in range(TOY_IMAGES):
        x, _, scene = data[k]
        x = x[None]  # (1, 3, 64, 64) in [0, 1]
        inv = invert_guidance_image(toy, x, steps=50, progress=False)
        psnr["vae"].append(psnr_db(toy.decode(inv.z0), x).item())
        for name, f in (("full", 1.0), ("none", 0.0)):
            z = plug_and_play(toy, inv, caption(scene), negative_prompt="", guidance_scale=TOY_GUIDANCE_SCALE,
                              feature_injection=f, attention_injection=f, progress=False)
            psnr[name].append(psnr_db(toy.decode(z), x).item())
    return {name: torch.tensor(values) for name, values in psnr.items()}


def test_full_injection_reconstructs_the_guidance_image(toy_round_trip):
    """Measured on these 3 images (benchmarks/pnp.py prints them, images 0-2): full injection 24.28,
    23.93, 33.30 dB; the VAE alone 29.85, 31.68, 37.00 dB (5.7 dB above on average); no injection
    22.11, 22.74, 32.40 dB (full injection gains 2.17, 1.19, 0.90 dB). Over 20 images the round trip
    averaged 26.6 dB (min 19.9) against the VAE's 32.6 (min 27.2). It stays below the VAE because the
    target branch samples with the caption at s = 5 while the inversion ran with "" at s = 1 (plain
    DDIM sampling with "" at s = 1 gets 31.5 dB back): the injected features and q, k hold the layout
    against that drift, not every pixel. The images are fixed, so the figures only move by float
    rounding; the bounds leave >= 0.6 dB of room each: >= 22 dB each, within 7 dB of the VAE on
    average, and injection gains on every image, >= 0.3 dB."""
    vae, full, none = toy_round_trip["vae"], toy_round_trip["full"], toy_round_trip["none"]
    assert full.min() >= 22.0, f"full injection {full} dB (VAE alone {vae})"
    assert (vae - full).mean() <= 7.0, f"full injection {full} dB vs VAE alone {vae}"
    assert (full - none).min() >= 0.3, f"full injection {full} vs none {none}"


# ----------------------------------------------------------------------------------------------
# bad input, and images handled as documented


def png(path, array: np.ndarray, mode: str | None = None):
    Image.fromarray(array, mode).save(path)
    return path


def test_unreadable_files_are_refused(sd, tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ValueError, match=r"notes.png is not an image PIL can read"):
        invert_guidance_image(sd, tmp_path / "notes.png", steps=2, progress=False)
    with pytest.raises(FileNotFoundError, match=r"missing.png does not exist"):
        invert_guidance_image(sd, tmp_path / "missing.png", steps=2, progress=False)
    with pytest.raises(FileNotFoundError, match=r"\(it is a folder\)"):
        invert_guidance_image(sd, tmp_path, steps=2, progress=False)
    with pytest.raises(ValueError, match=r"one image latent \(1, 4, h, w\), got a batch of shape \(2, 4, 8, 8\)"):
        invert_guidance_image(sd, torch.zeros(2, 4, 8, 8), steps=2, progress=False)


def test_grey_rgba_and_odd_sized_images_are_handled(sd, tmp_path):
    """ldm.images.load_image's rules: grey becomes RGB (replicated), RGBA is composited onto white,
    a size that is not a multiple of 32 (the tiny model's) is centre-cropped to one with a warning."""
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (64, 64), dtype=np.uint8)
    as_rgb = png(tmp_path / "grey_rgb.png", np.repeat(grey[:, :, None], 3, axis=2))
    a = invert_guidance_image(sd, png(tmp_path / "grey.png", grey, "L"), steps=2, progress=False)
    b = invert_guidance_image(sd, as_rgb, steps=2, progress=False)
    assert all(torch.equal(x, y) for x, y in zip(a.latents, b.latents))

    rgba = rng.integers(0, 256, (64, 64, 4), dtype=np.uint8)
    x = rgba.astype(np.float32) / 255  # (64, 64, 4) in [0, 1]
    on_white = x[:, :, :3] * x[:, :, 3:] + (1 - x[:, :, 3:])  # (64, 64, 3): alpha rgb + (1 - alpha) white
    a = invert_guidance_image(sd, png(tmp_path / "rgba.png", rgba, "RGBA"), steps=2, progress=False)
    b = invert_guidance_image(sd, torch.from_numpy(on_white).permute(2, 0, 1)[None], steps=2, progress=False)
    assert all(torch.equal(x, y) for x, y in zip(a.latents, b.latents))

    odd = png(tmp_path / "odd.png", rng.integers(0, 256, (70, 99, 3), dtype=np.uint8))
    with pytest.warns(UserWarning, match=r"is 99x70 \(width x height\); centre-cropped to 96x64"):
        inv = invert_guidance_image(sd, odd, steps=2, progress=False)
    assert inv.z0.shape == (1, 4, 8, 12)  # the VAE's 8x smaller latent of the 96x64 crop
    z = plug_and_play(sd, inv, TARGET, negative_prompt=NEGATIVE, progress=False)
    assert z.shape == (1, 4, 8, 12) and torch.isfinite(z).all()


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(feature_injection=1.5), ValueError, r"feature_injection must be a fraction of the steps in \[0, 1\], got 1.5"),
    (dict(attention_injection=-0.1), ValueError, r"attention_injection must be a fraction .* got -0.1"),
    (dict(feature_injection=float("nan")), ValueError, r"feature_injection must be a fraction .* got nan"),
    (dict(attention_injection=True), ValueError, r"attention_injection must be a fraction .* got True"),
    (dict(prompt=""), ValueError, r"prompt must be a non-empty str describing the translation, got ''"),
    (dict(prompt="   "), ValueError, r"prompt must be a non-empty str .* got '   '"),
    (dict(prompt=None), ValueError, r"prompt must be a non-empty str .* got None"),
    (dict(negative_prompt=None), ValueError, r"negative_prompt must be a str, got None"),
    (dict(guidance_scale=float("inf")), ValueError, r"guidance_scale must be a finite number, got inf"),
    (dict(level_size=0.0), ValueError, r"level_size must be a fraction of the latent side in \(0, 1\]"),
    (dict(prompt="a purple circle"), ValueError, r"unknown word 'purple' in prompt 'a purple circle'"),
    (dict(negative_prompt="ugly, blurry, black, low res, unrealistic"), ValueError, r"unknown word 'ugly"),
])
def test_bad_translation_arguments_are_refused(sd, inversion, kwargs, error, message):
    kwargs = dict(dict(prompt=TARGET, negative_prompt=NEGATIVE), **kwargs)
    with pytest.raises(error, match=message):
        plug_and_play(sd, inversion, kwargs.pop("prompt"), progress=False, **kwargs)


def test_wrong_objects_are_refused(sd, inversion):
    with pytest.raises(TypeError, match=r"editor must be a PlugAndPlay .* got RecordingEditor"):
        plug_and_play(sd, inversion, TARGET, negative_prompt=NEGATIVE, editor=RecordingEditor(), progress=False)
    editor = PlugAndPlay(injection_sites(sd.unet.sites), STEPS)
    with pytest.raises(ValueError, match=r"give an editor or feature_injection, level_size, not both"):
        plug_and_play(sd, inversion, TARGET, editor=editor, feature_injection=0.5, level_size=0.5, progress=False)
    with pytest.raises(ValueError, match=r"the inversion is for 10 steps, this editor for 4"):
        plug_and_play(sd, inversion, TARGET, negative_prompt=NEGATIVE,
                      editor=PlugAndPlay(injection_sites(sd.unet.sites), 4), progress=False)
    with pytest.raises(ValueError, match=r"no source branch: attach_source"):
        editor.extra_items(0, 901)
    with pytest.raises(TypeError, match=r"inversion must be the GuidanceInversion of .* got Tensor"):
        plug_and_play(sd, inversion.z0, TARGET, negative_prompt=NEGATIVE, progress=False)


def test_bad_sites_inversion_steps_and_sdedit_strengths_are_refused(sd, inversion):
    sites = sd.unet.sites
    with pytest.raises(ValueError, match=r"feature_resnet=2: decoder level up_blocks.0 has 2 ResBlocks"):
        injection_sites(sites, feature_resnet=2)
    with pytest.raises(ValueError, match=r"no decoder self-attention from up_blocks.1, index 2 on"):
        injection_sites(sites, level_size=1.0, attention_from=2)
    z0 = inversion.z0
    # 10 sampling steps visit 901, 801, ..., 1; 15 inversion steps visit 1, 67, 133, ...: 801 is not among them
    with pytest.raises(ValueError, match=r"inversion_steps=15 visits no z_t at the sampling timesteps \[101, 201"):
        invert_guidance_image(sd, z0, steps=STEPS, inversion_steps=15, progress=False)
    with pytest.raises(ValueError, match=r"num_inference_steps=1001 is more than num_train_timesteps=1000"):
        invert_guidance_image(sd, z0, steps=STEPS, inversion_steps=1001, progress=False)
    for strength in (0.0, 1.5, True):
        with pytest.raises(ValueError, match=rf"strength must be in \(0, 1\], got {strength}"):
            sdedit(sd, z0, TARGET, strength=strength, steps=STEPS, progress=False)
    with pytest.raises(ValueError, match=r"strength 0.05 of 10 steps leaves no step to run"):
        sdedit(sd, z0, TARGET, strength=0.05, steps=STEPS, progress=False)
    with pytest.raises(ValueError, match=r"num_inference_steps must be a positive int, got 0"):
        sdedit(sd, z0, TARGET, steps=0, progress=False)
    with pytest.raises(ValueError, match=r"prompt must be a non-empty str, got ''"):
        sdedit(sd, z0, "", steps=STEPS, progress=False)
