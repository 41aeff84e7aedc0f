"""Plug-and-Play (Tumanyan et al. 2023): translate a real image to a new prompt by injecting the
guidance image's own features and self-attention into the generation.

1. Invert the guidance image (section 3, "Plug-and-Play Diffusion Features"): z_0^G = the VAE
   posterior mean, then DDIM inversion (Song et al. Eq. 12 run backwards; ddim/inversion.py) with
   the empty prompt and no guidance, keeping every z_t^G.
2. Translate: each sampling step runs, in one U-Net batch, the *source branch* (z_t^G with the
   empty prompt) and the target's classifier-free-guidance pair (z*_t with the negative and the
   target prompts). In the source branch the U-Net computes its features f_t^4 (the residual
   branch of one decoder ResBlock, before the skip is added) and the queries and keys q_t^l, k_t^l
   of decoder self-attention layers l >= 4; they replace the target's (section 4, "Feature
   injection" and "Self-attention injection"):

       z*_{t-1} = eps-step( z*_t, eps_theta(z*_t, P*, t ; f_t^4, {q_t^l, k_t^l}) )

   for the first ``feature_injection`` (tau_f = 0.8) and ``attention_injection`` (tau_A = 0.5)
   fractions of the steps; the values v stay the target's, so the *appearance* follows the prompt
   while the *structure* (which pixels attend to which, A = softmax(q k^T / sqrt(d))) is the
   guidance image's. The replacement covers both halves of the guidance pair, as the official code.

Which layers, relative to the U-Net: the *injection level* is the first decoder level whose maps
have a side of at least ``level_size`` (1/4) of the latent's: SD v1's up_blocks[1] (16x16 of
64x64), the toy model's up_blocks[0] (4x4 of 8x8). Features come from that level's ResBlock
``feature_resnet`` (1: SD's up_blocks[1].resnets[1], the paper's "layer 4"), attention from that
level's ``attention_from``-th (1) self-attention on through every finer decoder level: SD's
decoder layers 4-11 (up_blocks[1].attentions[1, 2], up_blocks[2], up_blocks[3]).

SDEdit (Meng et al. 2022), the baseline: noise z_0^G to t = strength x T with q(z_t | z_0)
(Ho et al. Eq. 4) and denoise with the target prompt; more strength, more freedom, less structure.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ddpm.forward import q_sample
from ddpm.reverse import seeded_generator
from ddim.inversion import Trajectory
from ldm.images import ImageLike
from ldm.pipeline import check_guidance_scale
from unet.editor import Editor, Site

from unet.editor import check_size, site_size

DEFAULT_NEGATIVE = "ugly, blurry, black, low res, unrealistic"  # the official translation's negative prompt


def check_fraction(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a fraction of the steps in [0, 1], got {value!r}")
    return float(value)


# ----------------------------------------------------------------------------------------------
# Which sites


@dataclass(frozen=True)
class InjectionSites:
    """The ResBlock whose features and the self-attention sites whose q, k are injected."""

    feature: Site
    attention: tuple[Site, ...]


def injection_sites(sites: Sequence[Site], level_size: float = 0.25, feature_resnet: int = 1,
                    attention_from: int = 1) -> InjectionSites:
    """The sites of the module docstring: on SD v1, up_blocks.1.resnets.1 and the decoder's
    self-attention layers 4-11; on the toy model, up_blocks.0.resnets.1 and three layers."""
    check_size("level_size", level_size)
    up = [s for s in sites if s.location == "up"]
    blocks = sorted({s.block for s in up if site_size(s) >= level_size})  # up_blocks run coarse to fine
    if not blocks:
        raise ValueError(f"no decoder level has maps of side >= {level_size} of the latent's")
    block = blocks[0]
    resnets = [s for s in up if s.block == block and s.kind == "resnet"]
    if not 0 <= feature_resnet < len(resnets):
        raise ValueError(f"feature_resnet={feature_resnet}: decoder level up_blocks.{block} has {len(resnets)} ResBlocks")
    attention = [s for s in up if s.kind == "self" and (s.block > block or (s.block == block and s.index >= attention_from))]
    if not attention:
        raise ValueError(f"no decoder self-attention from up_blocks.{block}, index {attention_from} on")
    return InjectionSites(resnets[feature_resnet], tuple(attention))


class PlugAndPlay(Editor):
    """Copies the source branch's (item 0) ResBlock features and self-attention q, k into the other
    items of the batch [source, uncond, cond] (or [source, cond] at guidance 1), while switched on.

    ``steps`` and the fractions give the windows: features during steps [0, int(feature_injection
    x steps)), q and k during [0, int(attention_injection x steps)). The source branch, z_t^G with
    its context, is the extra item the editor hands the sampling loop on the steps that inject
    (:meth:`extra_items`); :func:`plug_and_play` attaches it (:meth:`attach_source`).
    """

    def __init__(self, sites: InjectionSites, steps: int, feature_injection: float = 0.8,
                 attention_injection: float = 0.5) -> None:
        self.sites = sites
        self.steps = steps
        self.feature_steps = int(check_fraction("feature_injection", feature_injection) * steps)
        self.attention_steps = int(check_fraction("attention_injection", attention_injection) * steps)
        self.attention_names = {s.name for s in sites.attention}
        self.step = 0
        self.source: tuple[GuidanceInversion, torch.Tensor] | None = None

    def attach_source(self, inversion: "GuidanceInversion", context: torch.Tensor) -> None:
        """The source branch: the guidance image's z_t^G at each sampling timestep and the context
        (1, 77, D) it runs with (the empty prompt's)."""
        if inversion.steps != self.steps:
            raise ValueError(f"the inversion is for {inversion.steps} steps, this editor for {self.steps}")
        self.source = (inversion, context)

    def begin_step(self, i: int, t: int | torch.Tensor) -> None:
        self.step = i

    def injecting(self, i: int) -> bool:
        """Whether step i injects anything (then the source branch must run)."""
        return i < self.feature_steps or i < self.attention_steps

    def extra_items(self, i: int, t: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The source branch (z_t^G, its context) on the steps that inject; none on the others,
        where the loop runs the target alone, exactly as plain sampling."""
        if not self.injecting(i):
            return None
        if self.source is None:
            raise ValueError("this PlugAndPlay editor has no source branch: attach_source(inversion, context) first")
        inversion, context = self.source
        return inversion.latents.at(t), context  # (1, 4, h, w), (1, 77, D)

    def resnet_residual(self, h: torch.Tensor, site: Site) -> torch.Tensor:
        if site.name != self.sites.feature.name or self.step >= self.feature_steps:
            return h
        return h[:1].expand_as(h)  # (U, C, H, W): every item gets the source's f_t (feature injection)

    def attention_qk(self, q: torch.Tensor, k: torch.Tensor, site: Site) -> tuple[torch.Tensor, torch.Tensor]:
        if site.name not in self.attention_names or self.step >= self.attention_steps:
            return q, k
        return q[:1].expand_as(q), k[:1].expand_as(k)  # (U, heads, N, d) each: the source's q_t, k_t (self-attention injection)


# ----------------------------------------------------------------------------------------------
# Inversion


@dataclass
class GuidanceInversion:
    """z_t^G of the guidance image at every timestep of a ``steps``-step sampler."""

    latents: Trajectory  # z_0^G, then z_t^G at the sampling timesteps (``latents.at(t)``), each (1, 4, h, w)
    steps: int
    inversion_steps: int

    @property
    def z0(self) -> torch.Tensor:
        return self.latents.z0


def invert_guidance_image(sd, image: ImageLike | torch.Tensor, *, steps: int = 50, inversion_steps: int | None = None,
                          progress: bool = True) -> GuidanceInversion:
    """Step 1: z_0^G (posterior mean) -> DDIM inversion with "" and guidance 1, ``inversion_steps``
    steps (default: ``steps``; the official code uses 999, whose timesteps 1..999 contain every
    sampling timestep of 50 steps). Keeps z_t^G for the ``steps``-step sampler's timesteps, in memory.

    Why 50 and not 999 (``benchmarks/pnp.py``, 20 unseen toy images): 999 steps improve the plain
    DDIM reconstruction (31.5 -> 32.3 dB mean, worst image 16.3 -> 26.9 dB) but not Plug-and-Play's
    (round trip 26.59 vs 26.61 dB; translation success and mask IoU equal or lower), at 19x the time."""
    timesteps = sd.timesteps(steps).tolist()
    inversion_steps = steps if inversion_steps is None else inversion_steps
    inv_timesteps = sd.timesteps(inversion_steps).tolist()
    missing = sorted(set(timesteps) - set(inv_timesteps))
    if missing:
        raise ValueError(f"inversion_steps={inversion_steps} visits no z_t at the sampling timesteps {missing[:5]}...; "
                         f"use {steps} or 999 (timesteps 1..999 hold them all)")
    z0 = sd.image_latents(image)  # (1, 4, h, w): latents as they are, an image through the VAE
    empty = sd.encode_prompts([""])  # (1, 77, D)
    trajectory = sd.invert(z0, empty, steps=inversion_steps, guidance_scale=1.0, progress=progress)
    return GuidanceInversion(trajectory.restricted(timesteps), steps, inversion_steps)


# ----------------------------------------------------------------------------------------------
# Translation


@torch.no_grad()
def plug_and_play(sd, inversion: GuidanceInversion, prompt: str, *, negative_prompt: str = DEFAULT_NEGATIVE,
                  guidance_scale: float = 7.5, feature_injection: float | None = None,
                  attention_injection: float | None = None, level_size: float | None = None,
                  editor: PlugAndPlay | None = None, progress: bool = True) -> torch.Tensor:
    """Step 2: the translated latent z*_0 (1, 4, h, w), from z*_T = z_T^G, through the sampling
    loop with a :class:`PlugAndPlay` editor (``sd.denoise``). Steps without injection skip the
    source branch: with both fractions 0 this is exactly ``sd.denoise`` from z_T^G.

    The editor is built from ``feature_injection`` (default 0.8), ``attention_injection`` (0.5)
    and ``level_size`` (0.25), or given whole as ``editor`` (a :class:`PlugAndPlay` or a subclass
    built for ``inversion.steps`` steps), not both."""
    if not isinstance(inversion, GuidanceInversion):
        raise TypeError(f"inversion must be the GuidanceInversion of invert_guidance_image, "
                        f"got {type(inversion).__name__}")
    if editor is not None and not isinstance(editor, PlugAndPlay):
        raise TypeError(f"editor must be a PlugAndPlay (it decides which steps run the source branch), "
                        f"got {type(editor).__name__}")
    given = [name for name, value in (("feature_injection", feature_injection),
                                      ("attention_injection", attention_injection), ("level_size", level_size))
             if value is not None]
    if editor is not None and given:
        raise ValueError(f"give an editor or {', '.join(given)}, not both: the editor has its own")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"prompt must be a non-empty str describing the translation, got {prompt!r}")
    if not isinstance(negative_prompt, str):
        raise ValueError(f"negative_prompt must be a str, got {negative_prompt!r}")
    s = check_guidance_scale(guidance_scale)
    if editor is None:
        editor = PlugAndPlay(injection_sites(sd.unet.sites, 0.25 if level_size is None else level_size), inversion.steps,
                             0.8 if feature_injection is None else feature_injection,
                             0.5 if attention_injection is None else attention_injection)
    empty, cond = sd.encode_prompts([""]), sd.encode_prompts([prompt])  # (1, 77, D) each
    uncond = sd.encode_prompts([negative_prompt]) if s != 1 else None
    editor.attach_source(inversion, empty)
    z_T = inversion.latents[-1].clone()  # z*_T = z_T^G
    return sd.denoise(z_T, cond, uncond, steps=inversion.steps, guidance_scale=s, editor=editor, progress=progress,
                      desc="Plug-and-Play")


@torch.no_grad()
def sdedit(sd, image: ImageLike | torch.Tensor, prompt: str, *, strength: float = 0.6, steps: int = 50,
           guidance_scale: float = 7.5, negative_prompt: str = "", seed: int | None = 0,
           progress: bool = True) -> torch.Tensor:
    """SDEdit: z_t = sqrt(ab_t) z_0 + sqrt(1 - ab_t) eps at the step where a fraction ``strength``
    of the steps remains (as diffusers' img2img: start_step = steps - int(strength x steps)), then
    the sampler from there with the target prompt. Returns z_0 (1, 4, h, w)."""
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 < strength <= 1:
        raise ValueError(f"strength must be in (0, 1], got {strength!r}")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"prompt must be a non-empty str, got {prompt!r}")
    s = check_guidance_scale(guidance_scale)
    timesteps = sd.timesteps(steps)  # checks steps
    start_step = steps - int(strength * steps)
    if start_step >= steps:
        raise ValueError(f"strength {strength} of {steps} steps leaves no step to run; raise it")
    t = int(timesteps[start_step])
    z0 = sd.image_latents(image)  # (1, 4, h, w)
    generator = seeded_generator(seed)
    noise = torch.randn(z0.shape, generator=generator).to(z0)  # (1, 4, h, w)
    z_t = q_sample(sd.schedule, z0, t, noise)  # Ho et al. Eq. 4
    cond = sd.encode_prompts([prompt])
    uncond = sd.encode_prompts([negative_prompt]) if s != 1 else None
    return sd.denoise(z_t, cond, uncond, steps=steps, guidance_scale=s, start_step=start_step, progress=progress)
