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

and Edit = M*_t (the target's own maps) for the rest of the steps. Each case is an object that
says only what the paper's case needs: ``WordSwap()``, ``Refinement()``, ``Reweight({word: c})``
(alone, or ``on=WordSwap()`` / ``on=Refinement()``, as the official code chains its controllers).
When the injection is on is an :class:`Injection`: ``cross_replace_steps`` is a fraction f of the
steps from the first, a (start, end) pair of fractions, or a dict giving words of the targets
their own window with a ``"default"`` for the rest. Self-attention maps (the (HW, HW) softmax of
the pixels) are also injected, whole, at the coarse layers (side at most ``self_max_size`` of the
latent's; 1/4 is the paper's 16x16 of a 64x64 latent) for the first ``self_replace_steps``. The
defaults are the paper's SD examples: cross 0.8, self 0.4. The class, :func:`prompt_to_prompt`
and the command line (``python -m ldm.cli.p2p``) take these same objects, whose fields declare
each option once: its default, its check, its flag and its help.

Local blending (the official code's ``LocalBlend``, section 3.2 "Local editing" in the appendix),
handed in as ``LocalBlend(words, ...)``: after each step from ``start``, a mask is made from the
cross-attention of ``words`` (in the source OR in the target), and outside it the target's latents
are set to the source's:

    alpha  = max-pool_k( sum over the words' tokens of M_bar )       at size ``size``
    mask   = upsample(alpha) / max(alpha) > threshold  (0.3),  OR-ed with the source's mask
    z*_t  <- z_t + mask * (z*_t - z_t)

Only the conditional half of the guidance batch is edited, the source (prompt 0) is never
changed, and this file only touches attention maps through the :class:`unet.Editor` hooks.

The max-pool dilates the mask by ``dilation`` of the latent side: the official code pools
SD's 16x16 maps with a 3x3 window (radius 1 cell, 4 of the 64 latent pixels, 1/16); a fixed 3x3
window on the toy model's 4x4 maps would dilate by a quarter of the image and cover all of it,
so the radius is k = round(dilation x map side): 1 on SD at 512x512, 0 on the toy model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from ddpm.reverse import initial_noise, seeded_generator
from ldm.pipeline import check_guidance_scale
from ldm.tokenizer import PromptTokenizer
from unet.editor import Editor, Site, check_size, select_sites, site_size

from .attention_store import AttentionStore
from .token_maps import _check_prompt, equalizer, refinement_maps, replacement_maps

StepsSpec = float | tuple[float, float] | Mapping[str, "float | tuple[float, float]"]
# A prepared edit: (base (heads, N, L) the source's maps, target (T, heads, N, L) the targets' own) -> (T, heads, N, L)
EditMaps = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def option(default, flag: str, kind: str, help: str):
    """A field of an options object that also describes its command-line flag (ldm/cli/p2p.py
    builds its parser from these): ``kind`` names how the flag's text is read."""
    return field(default=default, metadata={"flag": flag, "kind": kind, "help": help})


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


# ----------------------------------------------------------------------------------------------
# The three edits (section 3.2)


@dataclass(frozen=True)
class WordSwap:
    """Word swap ("a big red circle" -> "a big blue circle"): Edit(M_t, M*_t, t) = M_t @ R.

    The prompts must have the same number of words; a swapped word may have another number of
    tokens (:func:`editing.token_maps.replacement_map`)."""

    def prepare(self, tokenizer: PromptTokenizer, source: str, targets: Sequence[str]) -> EditMaps:
        R = replacement_maps(tokenizer, source, targets)  # (T, L, L)
        if bool((R == torch.eye(R.shape[-1])).all()):
            # words of equal token counts map token j to token j: M_t @ I = M_t, skip the product
            return lambda base, target: base.expand_as(target)  # (T, heads, N, L)
        return lambda base, target: base @ R.to(base)[:, None]  # (heads, N, L) @ (T, 1, L, L) -> (T, heads, N, L)


@dataclass(frozen=True)
class Refinement:
    """Refinement ("a circle" -> "a small green circle"): Edit[x, j] = M_t[x, A(j)] where the
    alignment A pairs target token j with a source token, M*_t[x, j] for the new tokens
    (Needleman-Wunsch, :func:`editing.token_maps.refinement_map`)."""

    def maps(self, tokenizer: PromptTokenizer, source: str, targets: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The alignment A and its alphas: (T, L) indices, (T, L) of 0/1 (:func:`refinement_maps`)."""
        return refinement_maps(tokenizer, source, targets)

    def prepare(self, tokenizer: PromptTokenizer, source: str, targets: Sequence[str]) -> EditMaps:
        mapper, alphas = self.maps(tokenizer, source, targets)  # (T, L) indices, (T, L) of 0/1

        def edit(base: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            new = base[..., mapper].permute(2, 0, 1, 3)  # (heads, N, T, L) -> (T, heads, N, L): M_t[:, A(j)]
            a = alphas.to(base)[:, None, None, :]  # (T, 1, 1, L)
            return a * new + (1 - a) * target  # new tokens keep their own maps
        return edit


@dataclass(frozen=True)
class Reweight:
    """Attention re-weighting: Edit[x, j] = c_j M[x, j] for the tokens j of the named words of the
    targets (:func:`editing.token_maps.equalizer`), on the source's maps M_t (``on=None``: the
    prompts may be equal, as in the paper's figures) or on top of a word swap or refinement."""

    scales: Mapping[str, float]
    on: WordSwap | Refinement | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.scales, Mapping) or not self.scales:
            raise ValueError(f"Reweight needs a non-empty dict {{word: scale}}, got {self.scales!r}")
        for word, scale in self.scales.items():
            if not isinstance(word, str) or not _is_number(scale):
                raise ValueError(f"Reweight scales must map words (str) to finite numbers, got {word!r}: {scale!r}")
        if self.on is not None and not isinstance(self.on, (WordSwap, Refinement)):
            raise ValueError(f"Reweight(on=...) takes WordSwap(), Refinement() or None, got {self.on!r}")
        object.__setattr__(self, "scales", dict(self.scales))  # a copy: later changes to the caller's dict do not leak in

    def prepare(self, tokenizer: PromptTokenizer, source: str, targets: Sequence[str]) -> EditMaps:
        inner = self.on.prepare(tokenizer, source, targets) if self.on is not None else (
            lambda base, target: base.expand_as(target))  # (T, heads, N, L): the source's maps
        c = torch.stack([equalizer(tokenizer, target, dict(self.scales)) for target in targets])  # (T, L)
        return lambda base, target: inner(base, target) * c.to(base)[:, None, None, :]  # c_j M[:, j]


EDITS = (WordSwap, Refinement, Reweight)


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


@dataclass(frozen=True)
class Injection:
    """When and where the source's maps replace the targets' (the t of Algorithm 1's Edit)."""

    cross_replace_steps: StepsSpec = option(
        0.8, "--cross-steps", "cross-window",
        "cross-attention injection: F (the first F of the steps), START,END, or WORD=F / WORD=START:END items "
        "with a default= for the other tokens")
    self_replace_steps: float | tuple[float, float] = option(
        0.4, "--self-steps", "window", "self-attention injection: F or START,END")
    self_max_size: float = option(
        0.25, "--self-size", "size", "largest self-attention map injected, a fraction of the latent side; 0.25 is SD's "
        "16x16 of 64x64")

    def __post_init__(self) -> None:
        spec = self.cross_replace_steps
        if isinstance(spec, Mapping):
            for word, window in spec.items():
                if not isinstance(word, str):
                    raise ValueError(f"cross_replace_steps keys must be words (str) or 'default', got {word!r}")
                step_window(f"cross_replace_steps[{word!r}]", window, 1)
            object.__setattr__(self, "cross_replace_steps", dict(spec))
        else:
            step_window("cross_replace_steps", spec, 1)
        step_window("self_replace_steps", self.self_replace_steps, 1)
        check_size("self_max_size", self.self_max_size)


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
    alphas = torch.zeros(len(prompts), tokenizer.context_length)  # (B, L)
    for word in words:
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


@dataclass(frozen=True)
class LocalBlend:
    """Local blending around ``words`` (each in the source or a target): outside the mask their
    cross-attention makes, the targets' latents are set to the source's after every step from
    ``start`` (a fraction of the steps). The mask is read at the cross-attention maps nearest to
    ``size`` (a fraction of the latent side), dilated by ``dilation`` of it, and cut at
    ``threshold`` of its maximum."""

    words: Sequence[str] = option(None, "--blend", "words", "local blending: edit only around these words")
    threshold: float = option(0.3, "--blend-threshold", "threshold",
                              "local blending: the mask is the map above this fraction of its maximum")
    start: float = option(0.2, "--blend-start", "fraction", "local blending: from this fraction of the steps on")
    size: float = option(0.25, "--blend-size", "size",
                         "local blending: the cross-attention maps read, a fraction of the latent side")
    dilation: float = option(1 / 16, "--blend-dilation", "fraction",
                             "local blending: the mask's dilation, a fraction of the latent side")

    def __post_init__(self) -> None:
        words = self.words
        if isinstance(words, str) or not isinstance(words, (list, tuple)) or not words or not all(
                isinstance(w, str) for w in words):
            raise ValueError(f"LocalBlend needs a non-empty list of words (str), got {words!r}")
        object.__setattr__(self, "words", tuple(words))
        if not _is_number(self.threshold) or not 0 <= self.threshold < 1:
            raise ValueError(f"LocalBlend threshold must be in [0, 1), got {self.threshold!r}")
        if not _is_number(self.start) or not 0 <= self.start <= 1:
            raise ValueError(f"LocalBlend start must be a fraction of the steps in [0, 1], got {self.start!r}")
        check_size("LocalBlend size", self.size)
        if not _is_number(self.dilation) or not 0 <= self.dilation <= 1:
            raise ValueError(f"LocalBlend dilation must be a fraction of the latent side in [0, 1], got {self.dilation!r}")

    def prepare(self, tokenizer: PromptTokenizer, prompts: Sequence[str], sites: Sequence[Site],
                steps: int) -> "Blending":
        """This blend for ``prompts`` on a U-Net with ``sites``, sampling ``steps`` steps."""
        return Blending(word_alphas(tokenizer, prompts, self.words), nearest_size(sites, self.size),
                        int(self.start * steps), float(self.threshold), float(self.dilation))


@dataclass
class Blending:
    """A :class:`LocalBlend` made ready for one edit: ``alphas`` (B, L) marks the blend words' tokens
    in each prompt; the mask is made from the store's cross maps of size ``size``, from step ``start`` on."""

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

    ``edit``: :class:`WordSwap` (the default), :class:`Refinement` or :class:`Reweight`.
    ``injection``: when the source's maps are injected (:class:`Injection`, the paper's defaults).
    ``blend``: a :class:`LocalBlend`, or None. ``store`` (an :class:`AttentionStore`), if given,
    records the maps each prompt used (the targets' edited ones, as in the official code, whose
    store holds the very tensors the edit then overwrites) for figures and local blending, which
    makes one if none is given. ``sites`` is
    the U-Net's ``sites`` list (for the blending resolution).
    """

    def __init__(self, prompts: Sequence[str], tokenizer: PromptTokenizer, sites: Sequence[Site], steps: int,
                 edit: WordSwap | Refinement | Reweight = WordSwap(), *, injection: Injection = Injection(),
                 blend: LocalBlend | None = None, store: AttentionStore | None = None) -> None:
        if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)) or len(prompts) < 2:
            raise ValueError(f"Prompt-to-Prompt needs a list of at least two prompts (the source, then the "
                             f"targets), got {prompts!r}")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an int >= 1, got {steps!r}")
        if not isinstance(edit, EDITS):
            raise ValueError(f"edit must be WordSwap(), Refinement() or Reweight({{word: scale}}), got {edit!r}")
        if not isinstance(injection, Injection):
            raise ValueError(f"injection must be an Injection(...), got {injection!r}")
        if blend is not None and not isinstance(blend, LocalBlend):
            raise ValueError(f"blend must be a LocalBlend(words, ...) or None, got {blend!r}")
        for k, prompt in enumerate(prompts):
            _check_prompt(tokenizer, prompt, f"prompt {k}", tokenizer.context_length)
        self.prompts, self.steps, self.edit, self.injection = list(prompts), steps, edit, injection
        self.batch = len(prompts)
        source, targets = prompts[0], list(prompts[1:])

        # what: the edit's token maps (editing/token_maps.py), as a function of (M_t, M*_t)
        self.edit_maps = edit.prepare(tokenizer, source, targets)
        # when: (steps, T, L) alphas for the cross maps, a window of steps for the self maps
        self.cross_alphas = cross_replace_alphas(tokenizer, targets, steps, injection.cross_replace_steps)
        # per step, as Python bools (asked at every site of every step; a tensor test would sync each time)
        self.cross_on = self.cross_alphas.flatten(1).any(1).tolist()  # some token injected at step i
        self.cross_full = self.cross_alphas.flatten(1).all(1).tolist()  # every token injected at step i
        self.self_window = step_window("self_replace_steps", injection.self_replace_steps, steps)
        self.self_max_size = injection.self_max_size

        self.store = store
        self.blend = blend.prepare(tokenizer, prompts, sites, steps) if blend is not None else None  # a Blending
        if self.blend is not None:
            if self.store is None:
                self.store = AttentionStore(self.batch, cross_max_size=self.blend.size, self_max_size=0)
            elif not self.store.max_size["cross"] >= self.blend.size:
                raise ValueError(f"the store records cross maps up to size {self.store.max_size['cross']}, local "
                                 f"blending needs size {self.blend.size}")
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
        new = self.edit_maps(base, target)  # (T, heads, N, L): Edit(M_t, M*_t)
        if self.cross_full[i]:
            return new  # alpha = 1 at every token: alpha new + (1 - alpha) target = new
        alpha = self.cross_alphas[i].bool().to(base.device)[:, None, None, :]  # (T, 1, 1, L): inside the word's window
        return torch.where(alpha, new, target)  # (T, heads, N, L): alpha new + (1 - alpha) target, alpha in {0, 1}

    def attention_probs(self, probs: torch.Tensor, site: Site) -> torch.Tensor:
        """probs (U, heads, N, L), U = B or 2B: edit the targets' conditional maps from the source's,
        then record the maps each prompt used (the targets' edited ones) in the store."""
        if self.edits(site, self.step):
            probs = self.edited(probs, site)
        if self.store is not None:
            self.store.record(probs, site)
        return probs

    def edited(self, probs: torch.Tensor, site: Site) -> torch.Tensor:
        """probs (U, heads, N, L) with the targets' conditional rows replaced by Edit(M_t, M*_t)."""
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


def prompt_to_prompt(sd, prompts: Sequence[str], edit: WordSwap | Refinement | Reweight = WordSwap(), *,
                     injection: Injection = Injection(), blend: LocalBlend | None = None,
                     store: AttentionStore | None = None, guidance_scale: float = 7.5, steps: int = 50,
                     seed: int | None = None, generator: torch.Generator | None = None,
                     latents: torch.Tensor | None = None, inversion=None, progress: bool = True) -> EditResult:
    """Sample ``prompts`` = [source, targets...] from one starting latent with a :class:`PromptToPrompt` editor.

    ``edit``, ``injection``, ``blend`` and ``store`` are the editor's (see :class:`PromptToPrompt`),
    e.g. ``prompt_to_prompt(sd, ["a red circle", "a red square"], WordSwap(), blend=LocalBlend(["circle", "square"]))``.
    The start is ``latents`` (1, 4, h, w), else ``randn`` of (1, 4, h, w) from ``generator`` or
    ``seed`` (the same z_T as ``sd.text_to_image([source], seed=seed)``), shared by every prompt.
    A real image: pass ``inversion`` (from :mod:`editing.null_text`), whose z_T, per-step
    unconditional contexts, steps and guidance are used; ``prompts[0]`` must be its prompt.
    """
    editor = PromptToPrompt(prompts, sd.tokenizer, sd.unet.sites, inversion.steps if inversion else steps, edit,
                            injection=injection, blend=blend, store=store)
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
