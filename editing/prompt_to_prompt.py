"""Prompt-to-Prompt (Hertz et al. 2022): edit an image by editing its prompt, through the
cross-attention maps.

The prompts are sampled together from one starting latent: prompt 0 is the source P, prompts
1..T are the targets P*. At every step the source's cross-attention maps M_t (section 3.1, how
much each pixel draws from each token) are injected into the targets' U-Net calls, so the
targets keep the source's layout while their own words bring new content (section 3.2 and its
Algorithm 1):

    z*_{t-1} <- DM(z*_t, P*, t) { M <- Edit(M_t, M*_t, t) }

with, per pixel x and target token j, for the steps t where the injection is on:

    word swap   Edit = M_t @ R                        R: :func:`editing.token_maps.replacement_map`
    refinement  Edit[x, j] = M_t[x, A(j)] if A(j) exists, M*_t[x, j] if j is new    (the alignment A)
    re-weight   Edit[x, j] = c_j (M_t)[x, j]          c: :func:`editing.token_maps.equalizer`, on top

and Edit = M*_t (the target's own maps) for the rest of the steps. ``cross_replace_steps`` sets
when the injection is on: a fraction f of the steps from the first, a (start, end) pair of
fractions, or a dict giving words of the targets their own window with a ``"default"`` for the
rest. Self-attention maps (the (HW, HW) softmax of the pixels) are also injected, whole, at the
coarse layers (side at most ``self_max_size`` of the latent's; 1/4 is the paper's 16x16 of a 64x64
latent) for the first ``self_replace_steps``. The defaults are the paper's SD examples: cross 0.8,
self 0.4.

Local blending (the official code's ``LocalBlend``, section 3.2 "Local editing" in the appendix):
after each step from ``blend_start``, a mask is made from the cross-attention of ``blend_words``
(in the source OR in the target), and outside it the target's latents are set to the source's:

    alpha  = max-pool_k( sum over the words' tokens of M_bar )       at size ``blend_size``
    mask   = upsample(alpha) / max(alpha) > threshold  (0.3),  OR-ed with the source's mask
    z*_t  <- z_t + mask * (z*_t - z_t)

Only the conditional half of the guidance batch is edited, the source (prompt 0) is never
changed, and this file only touches attention maps through the :class:`unet.Editor` hooks.

The max-pool dilates the mask by ``blend_dilation`` of the latent side: the official code pools
SD's 16x16 maps with a 3x3 window (radius 1 cell, 4 of the 64 latent pixels, 1/16); a fixed 3x3
window on the toy model's 4x4 maps would dilate by a quarter of the image and cover all of it,
so the radius is k = round(blend_dilation x map side): 1 on SD at 512x512, 0 on the toy model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F

from ddpm.reverse import initial_noise, seeded_generator
from ldm.pipeline import check_guidance_scale
from ldm.tokenizer import PromptTokenizer
from unet.editor import Editor, Site

from unet.editor import check_size, select_sites, site_size

from .attention_store import AttentionStore
from .token_maps import _check_prompt, equalizer, refinement_maps, replacement_maps

MODES = ("replace", "refine", None)
StepsSpec = float | tuple[float, float] | Mapping[str, "float | tuple[float, float]"]


# ----------------------------------------------------------------------------------------------
# When the injections are on


def step_window(name: str, spec: float | tuple[float, float], steps: int) -> tuple[int, int]:
    """A fraction f or a pair (start, end) of fractions of the steps -> steps [start, end).

    f means (0, f): injection during the first int(f * steps) steps (0.8 of 50 -> steps 0..39).
    The official code computes the cross-attention window on steps + 1 rows, int(f * (steps + 1)),
    which differs from this only where f * (steps + 1) passes an integer (0.99 of 50: 50 vs 49).
    """
    pair = (0.0, spec) if isinstance(spec, (int, float)) and not isinstance(spec, bool) else spec
    ok = isinstance(pair, (tuple, list)) and len(pair) == 2 and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) for x in pair)
    if not ok or not 0 <= pair[0] <= pair[1] <= 1:
        raise ValueError(f"{name} must be a fraction in [0, 1] or a pair (start, end) with 0 <= start <= end <= 1, "
                         f"got {spec!r}")
    return int(pair[0] * steps), int(pair[1] * steps)


def cross_replace_alphas(tokenizer: PromptTokenizer, targets: Sequence[str], steps: int, spec: StepsSpec) -> torch.Tensor:
    """(steps, T, L) of 0/1: alpha[i, k, j] = 1 where target k's token j takes the edited map at step i.

    ``spec`` is a window for every token (see :func:`step_window`), or a dict with windows for
    words of the targets and a ``"default"`` for every other token (all the steps, (0, 1), when
    absent, as in the official code), e.g. ``{"default": 0.8, "tiger": 0.4}``. Each named word must
    be in some target.
    """
    L = tokenizer.context_length
    alphas = torch.zeros(steps, len(targets), L)  # (steps, T, L)
    words = dict(spec) if isinstance(spec, Mapping) else {"default": spec}
    start, end = step_window("cross_replace_steps['default']", words.pop("default", 1.0), steps)
    alphas[start:end] = 1.0
    for word, window in words.items():
        start, end = step_window(f"cross_replace_steps[{word!r}]", window, steps)
        found = False
        for k, target in enumerate(targets):
            if any(tokenizer.normalize_word(w) == tokenizer.normalize_word(word) for w in target.split(" ")):
                positions = tokenizer.word_token_indices(target, word)  # the word's tokens in target k
                alphas[:, k, positions] = 0.0
                alphas[start:end, k, positions] = 1.0
                found = True
        if not found:
            raise ValueError(f"cross_replace_steps names the word {word!r}, which is in none of the target "
                             f"prompts {list(targets)}")
    return alphas


# ----------------------------------------------------------------------------------------------
# Local blending


def word_alphas(tokenizer: PromptTokenizer, prompts: Sequence[str], words: Sequence[str]) -> torch.Tensor:
    """(B, L): 1 at the tokens of ``words`` in each prompt. Each word must be in some prompt."""
    if isinstance(words, str) or not isinstance(words, (list, tuple)) or not words:
        raise ValueError(f"blend words must be a non-empty list of words, got {words!r}")
    alphas = torch.zeros(len(prompts), tokenizer.context_length)  # (B, L)
    for word in words:
        if not isinstance(word, str):
            raise ValueError(f"blend words must be str, got {word!r}")
        found = False
        for b, prompt in enumerate(prompts):
            if any(tokenizer.normalize_word(w) == tokenizer.normalize_word(word) for w in prompt.split(" ")):
                alphas[b, tokenizer.word_token_indices(prompt, word)] = 1.0
                found = True
        if not found:
            raise ValueError(f"blend word {word!r} is in none of the prompts {list(prompts)}")
    return alphas


def nearest_size(sites: Sequence[Site], size: float) -> float:
    """The cross-attention map size (down and up blocks) nearest to ``size``, ties to the larger."""
    sizes = sorted({site_size(s) for s in select_sites(sites, "cross", locations=("down", "up"))}, reverse=True)
    if not sizes:
        raise ValueError("this U-Net has no cross-attention in its down and up blocks to blend with")
    return min(sizes, key=lambda s: abs(math.log(s / size)))


@dataclass
class LocalBlend:
    """Keeps the target's latents equal to the source's outside the edited words' attention.

    ``alphas`` (B, L) marks the blend words' tokens in each prompt; the mask is made from the
    store's cross maps of size ``size``, from step ``start`` on.
    """

    alphas: torch.Tensor  # (B, L)
    size: float
    start: int
    threshold: float = 0.3
    dilation: float = 1 / 16

    def mask(self, store: AttentionStore, shape: tuple[int, int]) -> torch.Tensor:
        """(B, 1, h, w) of 0/1: prompt b's mask OR the source's, at the latent size ``shape``."""
        maps = store.aggregate("cross", self.size, locations=("down", "up"), sums=True)  # (B, m, n, L)
        alpha = (maps * self.alphas[:, None, None, :].to(maps)).sum(-1)  # (B, m, n): the words' attention
        k = round(self.dilation * max(alpha.shape[-2:]))  # the pooling radius in cells
        alpha = F.max_pool2d(alpha[:, None], kernel_size=2 * k + 1, stride=1, padding=k)  # (B, 1, m, n), dilated by k
        alpha = F.interpolate(alpha, size=shape, mode="nearest")  # (B, 1, h, w)
        alpha = alpha / alpha.amax(dim=(2, 3), keepdim=True).clamp_min(1e-12)  # (B, 1, h, w), max 1
        mask = alpha > self.threshold  # (B, 1, h, w)
        return (mask | mask[:1]).float()  # (B, 1, h, w): source OR target

    def __call__(self, latents: torch.Tensor, store: AttentionStore) -> torch.Tensor:
        mask = self.mask(store, tuple(latents.shape[-2:])).to(latents)  # (B, 1, h, w)
        return latents[:1] + mask * (latents - latents[:1])  # (B, 4, h, w); row 0 unchanged


# ----------------------------------------------------------------------------------------------
# The editor


class PromptToPrompt(Editor):
    """The Prompt-to-Prompt attention controller for ``prompts`` = [source, target, ...] over ``steps``.

    ``mode``: "replace" (word swap: the prompts have the same number of words), "refine" (words
    added or changed: Needleman-Wunsch alignment), or None (re-weighting alone). ``reweight``
    ({word: scale}, words of the targets) scales those words' maps, alone or on top of the mode.
    ``blend_words`` turns on local blending. ``store`` (an :class:`AttentionStore`), if given,
    records the unedited maps for figures; local blending makes one if none is given. ``sites`` is
    the U-Net's ``sites`` list (for the blending resolution).
    """

    def __init__(self, prompts: Sequence[str], tokenizer: PromptTokenizer, sites: Sequence[Site], steps: int, *,
                 mode: str | None = "replace", reweight: Mapping[str, float] | None = None,
                 cross_replace_steps: StepsSpec = 0.8, self_replace_steps: float | tuple[float, float] = 0.4,
                 self_max_size: float = 0.25, blend_words: Sequence[str] | None = None, blend_threshold: float = 0.3,
                 blend_start: float = 0.2, blend_size: float = 0.25, blend_dilation: float = 1 / 16,
                 store: AttentionStore | None = None) -> None:
        if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)) or len(prompts) < 2:
            raise ValueError(f"Prompt-to-Prompt needs a list of at least two prompts (the source, then the "
                             f"targets), got {prompts!r}")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an int >= 1, got {steps!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode is None and not reweight:
            raise ValueError("nothing to edit: give mode='replace' or 'refine', or reweight={word: scale}")
        for k, prompt in enumerate(prompts):
            _check_prompt(tokenizer, prompt, f"prompt {k}", tokenizer.context_length)
        self.prompts, self.steps, self.mode = list(prompts), steps, mode
        self.batch = len(prompts)
        source, targets = prompts[0], list(prompts[1:])

        # token maps (editing/token_maps.py)
        self.replace = replacement_maps(tokenizer, source, targets) if mode == "replace" else None  # (T, L, L)
        self.mapper, self.refine_alphas = refinement_maps(tokenizer, source, targets) if mode == "refine" else (None, None)
        self.equalizer = None  # (T, L)
        if reweight:
            self.equalizer = torch.stack([equalizer(tokenizer, target, dict(reweight)) for target in targets])

        # when: (steps, T, L) alphas for the cross maps, a window of steps for the self maps
        self.cross_alphas = cross_replace_alphas(tokenizer, targets, steps, cross_replace_steps)
        # per step, as Python bools (asked at every site of every step; a tensor test would sync each time)
        self.cross_on = self.cross_alphas.flatten(1).any(1).tolist()  # some token injected at step i
        self.cross_full = self.cross_alphas.flatten(1).all(1).tolist()  # every token injected at step i
        # a swap of words of equal token counts maps token j to token j: M_t @ R = M_t, skip the product
        self.replace_is_identity = self.replace is not None and bool((self.replace == torch.eye(self.replace.shape[-1])).all())
        self.self_window = step_window("self_replace_steps", self_replace_steps, steps)
        self.self_max_size = check_size("self_max_size", self_max_size)

        self.store = store
        self.blend = None
        if blend_words is not None:
            check_size("blend_size", blend_size)
            if isinstance(blend_threshold, bool) or not isinstance(blend_threshold, (int, float)) or not 0 <= blend_threshold < 1:
                raise ValueError(f"blend_threshold must be in [0, 1), got {blend_threshold!r}")
            start, _ = step_window("blend_start", (blend_start, 1.0) if isinstance(blend_start, (int, float)) else blend_start, steps)
            size = nearest_size(sites, blend_size)
            if isinstance(blend_dilation, bool) or not isinstance(blend_dilation, (int, float)) or not 0 <= blend_dilation <= 1:
                raise ValueError(f"blend_dilation must be a fraction of the latent side in [0, 1], got {blend_dilation!r}")
            self.blend = LocalBlend(word_alphas(tokenizer, prompts, blend_words), size, start, float(blend_threshold),
                                    float(blend_dilation))
            if self.store is None:
                self.store = AttentionStore(self.batch, cross_max_size=size, self_max_size=0)
            elif not self.store.max_size["cross"] >= size:
                raise ValueError(f"the store records cross maps up to size {self.store.max_size['cross']}, local "
                                 f"blending needs size {size}")
        if self.store is not None and self.store.batch != self.batch:
            raise ValueError(f"the store was made for {self.store.batch} prompts, the edit has {self.batch}")
        self.step = 0

    # ------------------------------------------------------------------ which sites, which steps
    def cross_active(self, i: int) -> bool:
        """Whether step i injects into any target token's cross-attention map."""
        return self.cross_on[i]

    def self_active(self, site: Site, i: int) -> bool:
        start, end = self.self_window
        return start <= i < end and site_size(site) <= self.self_max_size

    def edits(self, site: Site, i: int) -> bool:
        return self.cross_active(i) if site.kind == "cross" else site.kind == "self" and self.self_active(site, i)

    def wants_probs(self, site: Site) -> bool:
        return self.edits(site, self.step) or (self.store is not None and self.store.records(site))

    def begin_step(self, i: int, t: int | torch.Tensor) -> None:
        if not 0 <= i < self.steps:
            raise ValueError(f"step {i} is outside the {self.steps} steps this editor was made for")
        self.step = i

    def end_step(self, latents: torch.Tensor, i: int, t: int | torch.Tensor) -> torch.Tensor:
        if self.store is not None:
            latents = self.store.end_step(latents, i, t)
        if self.blend is not None and i >= self.blend.start:
            latents = self.blend(latents, self.store)  # (B, 4, h, w)
        return latents

    # ------------------------------------------------------------------ the edit
    def edit_cross(self, base: torch.Tensor, target: torch.Tensor, i: int) -> torch.Tensor:
        """base (heads, N, L): the source's maps; target (T, heads, N, L) -> the targets' new maps."""
        if self.mode == "replace" and self.replace_is_identity:
            new = base.expand_as(target)  # (T, heads, N, L): M_t @ I
        elif self.mode == "replace":
            new = base @ self.replace.to(base)[:, None]  # (heads, N, L) @ (T, 1, L, L) -> (T, heads, N, L): M_t @ R
        elif self.mode == "refine":
            new = base[..., self.mapper].permute(2, 0, 1, 3)  # (heads, N, T, L) -> (T, heads, N, L): M_t[:, A(j)]
            a = self.refine_alphas.to(base)[:, None, None, :]  # (T, 1, 1, L)
            new = a * new + (1 - a) * target  # new tokens keep their own maps
        else:
            new = base.expand_as(target)  # (T, heads, N, L): re-weighting alone starts from the source's maps
        if self.equalizer is not None:
            new = new * self.equalizer.to(base)[:, None, None, :]  # (T, heads, N, L): c_j M[:, j]
        if self.cross_full[i]:
            return new  # alpha = 1 at every token: alpha new + (1 - alpha) target = new
        alpha = self.cross_alphas[i].bool().to(base.device)[:, None, None, :]  # (T, 1, 1, L): inside the word's window
        return torch.where(alpha, new, target)  # (T, heads, N, L): alpha new + (1 - alpha) target, alpha in {0, 1}

    def attention_probs(self, probs: torch.Tensor, site: Site) -> torch.Tensor:
        """probs (U, heads, N, L), U = B or 2B: edit the targets' conditional maps from the source's."""
        if self.store is not None:
            self.store.record(probs, site)  # the maps as the U-Net made them, before editing
        if not self.edits(site, self.step):
            return probs
        if probs.shape[0] not in (self.batch, 2 * self.batch):
            raise ValueError(f"the U-Net batch has {probs.shape[0]} items; expected {self.batch} or "
                             f"{2 * self.batch} for {self.batch} prompts")
        uncond, base, target = probs[: -self.batch], probs[-self.batch], probs[1 - self.batch:]
        if site.kind == "cross":
            new = self.edit_cross(base, target, self.step)  # (T, heads, N, L)
        else:
            new = base.expand_as(target)  # (T, heads, N, N): the source's self-attention, whole
        if probs.requires_grad:  # under autograd, build a new tensor
            return torch.cat([uncond, base[None], new])  # (U, heads, N, M); unconditional half untouched
        probs[1 - self.batch:] = new  # in place: the targets' conditional rows, saving a copy of the maps
        return probs  # (U, heads, N, M)


# ----------------------------------------------------------------------------------------------
# One call


@dataclass
class EditResult:
    images: torch.Tensor  # (B, 3, H, W) in [0, 1]: the source first, then the targets
    latents: torch.Tensor  # (B, 4, h, w)
    editor: PromptToPrompt
    prompts: list[str] = field(default_factory=list)


def prompt_to_prompt(sd, prompts: Sequence[str], *, mode: str | None = "replace",
                     reweight: Mapping[str, float] | None = None, cross_replace_steps: StepsSpec = 0.8,
                     self_replace_steps: float | tuple[float, float] = 0.4, self_max_size: float = 0.25,
                     blend_words: Sequence[str] | None = None, blend_threshold: float = 0.3, blend_start: float = 0.2,
                     blend_size: float = 0.25, blend_dilation: float = 1 / 16, store: AttentionStore | None = None,
                     guidance_scale: float = 7.5,
                     steps: int = 50, seed: int | None = None, generator: torch.Generator | None = None,
                     latents: torch.Tensor | None = None, inversion=None, progress: bool = True) -> EditResult:
    """Sample ``prompts`` = [source, targets...] from one starting latent with a :class:`PromptToPrompt` editor.

    The start is ``latents`` (1, 4, h, w), else ``randn`` of (1, 4, h, w) from ``generator`` or
    ``seed`` (the same z_T as ``sd.text_to_image([source], seed=seed)``), shared by every prompt.
    A real image: pass ``inversion`` (from :mod:`editing.null_text`), whose z_T, per-step
    unconditional contexts, steps and guidance are used; ``prompts[0]`` must be its prompt.
    """
    editor = PromptToPrompt(prompts, sd.tokenizer, sd.unet.sites, inversion.steps if inversion else steps, mode=mode,
                            reweight=reweight, cross_replace_steps=cross_replace_steps,
                            self_replace_steps=self_replace_steps, self_max_size=self_max_size,
                            blend_words=blend_words, blend_threshold=blend_threshold, blend_start=blend_start,
                            blend_size=blend_size, blend_dilation=blend_dilation, store=store)
    B = len(prompts)
    s = check_guidance_scale(guidance_scale)
    with torch.no_grad():
        cond = sd.encode_prompts(list(prompts))  # (B, 77, D)
        if inversion is not None:
            if latents is not None or seed is not None or generator is not None:
                raise ValueError("with an inversion the start is its z_T: give no latents, seed or generator")
            if not torch.allclose(cond[:1], inversion.cond.to(cond), atol=1e-6):
                raise ValueError(f"prompts[0] {prompts[0]!r} is not the prompt the image was inverted with")
            z = inversion.latents[-1]
            kwargs = dict(uncond_per_step=inversion.uncond_per_step, steps=inversion.steps,
                          guidance_scale=inversion.guidance_scale)
        else:
            h = w = sd.image_size // sd.latent_factor
            if latents is None:
                generator = seeded_generator(seed, generator)
                latents = initial_noise((1, sd.unet.config.in_channels, h, w), None, generator, torch.float32, sd.device)
            z = latents
            kwargs = dict(uncond=sd.encode_prompts([""]) if s != 1 else None, steps=steps, guidance_scale=s)
        if not isinstance(z, torch.Tensor) or z.ndim != 4 or z.shape[0] != 1:
            got = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"the starting latent must be one (1, 4, h, w) shared by every prompt, got {got}")
        z = z.to(sd.device).expand(B, -1, -1, -1).clone()  # (B, 4, h, w): all prompts share it
        z0 = sd.denoise(z, cond, editor=editor, progress=progress, **kwargs)  # (B, 4, h, w)
        images = sd.decode(z0)  # (B, 3, H, W)
    return EditResult(images, z0, editor, list(prompts))
