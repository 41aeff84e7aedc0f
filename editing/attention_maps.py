"""Attention maps as pictures: where each word is read, what self-attention groups, and the edit.

Prompt-to-Prompt (Hertz et al. 2022) starts from an observation (section 3.1, Fig. 4): the
cross-attention maps M = softmax(Q K^T / sqrt(d)) (Eq. 1), averaged over heads, layers and steps,
show *where* each word of the prompt is painted, already at the first steps. The figures here read
an :class:`editing.attention_store.AttentionStore`, which keeps the head-averaged conditional maps
of each site, averaged over the sampling steps, and averages them over the sites of one resolution
in ``locations`` (``aggregate``):

    M_bar[x, j] = mean over sites and steps of M_t[x, j]       (h, w, 77): one map per token j

1. :func:`per_token_maps` / :func:`token_heatmaps`: the column of each prompt token (bos and eos left
   out), each scaled to its own maximum, enlarged to the image and laid over it (the official
   ``show_cross_attention``, Fig. 4 of the paper).
2. :func:`self_attention_components` / :func:`self_attention_figure`: the self-attention map
   A (HW, HW) at one resolution, A[x, y] = how much pixel x draws from pixel y. Its rows are
   softmaxes, so each sums to 1 and each row mean is 1/HW; the official ``show_self_attention_comp``
   centres the rows and shows the top right singular vectors of the SVD

       A - A.mean(dim=1) = U S V^T,      component i = V[:, i] folded back to (h, w)

   which are the pixel patterns along which the rows differ most: pixels that attend to the
   same region share a value. (Two regions whose pixels each attend uniformly to their own
   region give a centred map of rank 1, with one sign on each region.)
3. :func:`edit_grid`: the source and the edited images side by side, the prompts as titles.

Each function returns a ``matplotlib.figure.Figure`` built without pyplot (no global figure list,
nothing shown); a notebook displays it as the cell's value, a script calls ``fig.savefig``. They
follow :mod:`ldm.figure_style`: its colour maps, its one scale rule for attention maps (each map
from 0 to its own maximum) and its type sizes; maps are enlarged by pixel repetition, so a 4x4
map shows its 16 cells.
"""
from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
from matplotlib.figure import Figure

from ldm.figure_style import DPI, FONT_SIZE, MAP_CMAP, SIGNED_CMAP, TITLE_SIZE, enlarge, scaled_map
from ldm.tokenizer import PromptTokenizer

from unet.editor import check_locations, site_size

from .attention_store import AttentionStore
from .token_maps import _check_prompt

DISPLAY_SIDE = 256  # side of a heat map drawn without an image (the official figures' 256 px)
COLUMNS = 10  # panels per row of a figure


# ----------------------------------------------------------------------------------------------
# Checks, before any work


def _check_store(store: AttentionStore) -> None:
    if not isinstance(store, AttentionStore):
        raise ValueError(f"store must be an AttentionStore, got {type(store).__name__}")


def _check_prompt_index(store: AttentionStore, prompt_index: int) -> int:
    if isinstance(prompt_index, bool) or not isinstance(prompt_index, int) or not 0 <= prompt_index < store.batch:
        raise ValueError(f"prompt_index must be an int in [0, {store.batch - 1}] for a store of {store.batch} "
                         f"prompts, got {prompt_index!r}")
    return prompt_index


def recorded_sites(store: AttentionStore, kind: str, locations: Iterable[str], size: float | None = None) -> list[str]:
    """The names of the recorded ``kind`` sites in ``locations`` (of map side ``size``, if given)."""
    return [name for name, s in store.sites.items() if s.kind == kind and s.location in locations
            and (size is None or math.isclose(site_size(s), size))]


def default_size(store: AttentionStore, kind: str, locations: Iterable[str]) -> float:
    """The smallest map side recorded for ``kind`` in ``locations``: SD v1's down and up blocks
    give 1/4 (16x16 of a 64x64 latent, the resolution of the paper's figures), the toy model 1/2
    (4x4). A ValueError if nothing of that kind was recorded there."""
    locations = check_locations(locations)
    sizes = sorted({site_size(store.sites[n]) for n in recorded_sites(store, kind, locations)})
    if not sizes:
        raise ValueError(f"the store holds no {kind}-attention maps in {locations} (recorded sites: "
                         f"{list(store.sites) or 'none'}); pass the store to the sampler, with {kind}_max_size > 0")
    return sizes[0]


def _check_size(store: AttentionStore, kind: str, size: float | None, locations: tuple[str, ...]) -> float:
    """``size``, or the default, after checking that maps of that size were recorded in ``locations``."""
    if size is None:
        return default_size(store, kind, locations)
    if not recorded_sites(store, kind, locations, size):
        recorded = sorted({site_size(store.sites[n]) for n in recorded_sites(store, kind, locations)}, reverse=True)
        raise ValueError(f"the store holds no {kind}-attention maps of size {size!r} in {locations}; "
                         f"recorded sizes there: {recorded}")
    return size


def _check_images(images: torch.Tensor, name: str, ndim: int) -> torch.Tensor:
    """A float tensor (3, H, W) (``ndim`` 3) or (B, 3, H, W) (``ndim`` 4) in [0, 1]."""
    expected = "(3, H, W)" if ndim == 3 else "(B, 3, H, W)"
    if not isinstance(images, torch.Tensor) or images.ndim != ndim or images.shape[-3] != 3 \
            or not images.is_floating_point():
        got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{name} must be a float tensor {expected} in [0, 1], got {got}")
    if images.numel() and not (images.min() >= 0 and images.max() <= 1):
        raise ValueError(f"{name} must be in [0, 1] (sd.decode's output), got values in "
                         f"[{images.min().item():.3g}, {images.max().item():.3g}]")
    return images.detach().float().cpu()


def _figure(n: int, image: torch.Tensor | None, panel_size: tuple[float, float]) -> tuple[Figure, list]:
    """A figure of ``n`` panels, after a first panel showing ``image`` ("sample") when one is given;
    returns the figure and the ``n`` axes left to draw on. ``panel_size``: inches per panel (w, h)."""
    panels = n + (image is not None)
    fig = Figure(figsize=(panel_size[0] * min(panels, COLUMNS), panel_size[1] * math.ceil(panels / COLUMNS)),
                 layout="constrained", dpi=DPI)
    axes = _grid(fig, panels)
    if image is not None:
        axes[0].imshow(_hwc(image), interpolation="nearest")
        axes[0].set_title("sample", fontsize=FONT_SIZE)
        axes = axes[1:]
    return fig, axes


def _grid(fig: Figure, panels: int) -> list:
    """``panels`` axes in rows of at most ``COLUMNS``, without ticks; spare axes are hidden."""
    rows, cols = math.ceil(panels / COLUMNS), min(panels, COLUMNS)
    axes = fig.subplots(rows, cols, squeeze=False).flatten()
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[panels:]:
        ax.set_axis_off()
    return list(axes[:panels])


def _hwc(image: torch.Tensor):
    return image.permute(1, 2, 0).numpy()  # (H, W, 3) for imshow


# ----------------------------------------------------------------------------------------------
# 1. Cross-attention: one map per token


def per_token_maps(store: AttentionStore, tokenizer: PromptTokenizer, prompt: str, prompt_index: int = 0,
               size: float | None = None, locations: Iterable[str] = ("down", "up")) -> tuple[list[str], torch.Tensor]:
    """The prompt's tokens and their cross-attention maps M_bar[:, :, j], (n_tokens, h, w).

    ``prompt`` is the text of prompt ``prompt_index`` of the batch the store recorded; its tokens
    sit at positions 1..n of the 77-token row (bos at 0 and the eos after them are left out). The
    maps are the store's averages over heads, steps and the sites of map side ``size`` (default:
    :func:`default_size`) in ``locations``, unnormalised: each pixel's weights over the 77 positions
    sum to 1, so the maps of different tokens compare. Token texts are ``tokenizer.decode([id])``.
    """
    _check_store(store)
    if not isinstance(tokenizer, PromptTokenizer):
        raise ValueError(f"tokenizer must be a PromptTokenizer, got {type(tokenizer).__name__}")
    locations = check_locations(locations)
    prompt_index = _check_prompt_index(store, prompt_index)
    size = _check_size(store, "cross", size, locations)
    ids = _check_prompt(tokenizer, prompt, "prompt", tokenizer.context_length)
    columns = store.sums[recorded_sites(store, "cross", locations, size)[0]].shape[-1]  # M of the recorded maps
    if columns != tokenizer.context_length:
        raise ValueError(f"the store's cross-attention maps have {columns} token columns, but the tokenizer makes "
                         f"rows of {tokenizer.context_length}: the maps were not recorded with this tokenizer")
    maps = store.aggregate("cross", size, locations, prompt=prompt_index)  # (h, w, 77)
    n = len(ids)
    tokens = [tokenizer.decode([i]) for i in ids]
    return tokens, maps[..., 1:1 + n].permute(2, 0, 1)  # (n, h, w): positions 1..n, bos and eos left out


def heatmaps(maps: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """(n, h, w) maps -> (n, H, W): each divided by its own maximum (:func:`ldm.figure_style.scaled_map`,
    the one scale rule), then enlarged to ``shape`` by nearest neighbour, so every cell of the map
    stays one block of equal pixels (the official figures interpolate bilinearly, which draws a
    4x4 map as a smooth blob)."""
    return enlarge(scaled_map(maps), shape)  # (n, H, W) in [0, 1]


def token_heatmaps(store: AttentionStore, tokenizer: PromptTokenizer, prompt: str, prompt_index: int = 0,
                   size: float | None = None, locations: Iterable[str] = ("down", "up"),
                   image: torch.Tensor | None = None) -> Figure:
    """One panel per token of ``prompt``: its cross-attention map (:func:`per_token_maps`), scaled to
    its own maximum and enlarged to ``image`` (3, H, W) in [0, 1], drawn over it if given; 256 px on
    the longer side otherwise (``ldm.figure_style.MAP_CMAP``, 0 to the map's maximum). Under each
    token: its mean attention weight (uniform attention over the 77 positions would give 1/77 = 0.013)."""
    if image is not None:
        image = _check_images(image, "image", 3)  # (3, H, W)
    locations = check_locations(locations)
    tokens, maps = per_token_maps(store, tokenizer, prompt, prompt_index, size, locations)  # (n, h, w)
    size = _check_size(store, "cross", size, locations)
    h, w = maps.shape[-2:]
    if image is not None:
        shape = tuple(image.shape[-2:])
    else:
        shape = (round(DISPLAY_SIDE * h / max(h, w)), round(DISPLAY_SIDE * w / max(h, w)))
    shown = heatmaps(maps, shape)  # (n, H, W) in [0, 1]

    fig, axes = _figure(len(tokens), image, panel_size=(2.0, 2.6))
    for ax, token, m, up in zip(axes, tokens, maps, shown):
        if image is not None:
            ax.imshow(_hwc(image) * 0.4 + 0.6, interpolation="nearest")  # the image, faded, under the map
            ax.imshow(up.numpy(), cmap=MAP_CMAP, alpha=0.7, vmin=0, vmax=1, interpolation="nearest")
        else:
            ax.imshow(up.numpy(), cmap=MAP_CMAP, vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(f"{token}\n{m.mean():.3f}", fontsize=FONT_SIZE)
    sites = len(recorded_sites(store, "cross", locations, size))
    fig.suptitle(f"cross-attention per token, {h}x{w} maps ({'/'.join(locations)}, {sites} sites; mean over heads and "
                 f"steps)\neach map from 0 to its maximum; under each token its mean weight", fontsize=TITLE_SIZE)
    return fig


# ----------------------------------------------------------------------------------------------
# 2. Self-attention: the principal components of A


@dataclass
class SelfAttentionComponents:
    components: torch.Tensor  # (n, h, w): the top right singular vectors of the row-centred map, each of norm 1
    singular_values: torch.Tensor  # (HW,): all of them, largest first
    size: float  # the map side, as a fraction of the latent side
    sites: int  # how many sites were averaged

    @property
    def explained(self) -> torch.Tensor:
        """(HW,): the share of the centred map's squared Frobenius norm along each component, s_i^2 / sum s^2."""
        energy = self.singular_values.double() ** 2  # (HW,)
        return (energy / energy.sum().clamp_min(1e-300)).float()


def self_attention_components(store: AttentionStore, prompt_index: int = 0, size: float | None = None, n: int = 6,
                              locations: Iterable[str] = ("down", "up")) -> SelfAttentionComponents:
    """The top ``n`` principal components of the self-attention map of prompt ``prompt_index``.

    A (HW, HW) is the store's self map at side ``size`` (default :func:`default_size`), averaged over
    heads, steps and the sites in ``locations``; rows are query pixels x, columns key pixels y.
    Then, as the official ``show_self_attention_comp``,

        C = A - A.mean(dim=1, keepdim=True),    C = U diag(s) V^T,    component i = V[:, i] as (h, w)

    Singular vectors have no sign of their own; each component is flipped so that its entry of
    largest magnitude is positive, which makes the figure the same on every machine. The SVD is
    computed in float64.
    """
    _check_store(store)
    locations = check_locations(locations)
    prompt_index = _check_prompt_index(store, prompt_index)
    size = _check_size(store, "self", size, locations)
    names = recorded_sites(store, "self", locations, size)
    pixels = store.sums[names[0]].shape[1]  # HW of the recorded (B, HW, HW) maps
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= pixels:
        raise ValueError(f"n must be an int in [1, {pixels}] (the number of pixels of the {size} self-attention "
                         f"map), got {n!r}")
    A = store.aggregate("self", size, locations, prompt=prompt_index)  # (h, w, HW)
    h, w = A.shape[:2]
    A = A.flatten(0, 1).double()  # (HW, HW): row x is pixel x's distribution over the pixels y
    C = A - A.mean(dim=1, keepdim=True)  # (HW, HW), rows centred
    _, s, Vh = torch.linalg.svd(C)  # s (HW,), Vh (HW, HW): the rows of Vh are the right singular vectors
    V = Vh[:n]  # (n, HW)
    peak = V.abs().argmax(dim=1, keepdim=True)  # (n, 1): each component's largest entry
    V = V * V.gather(1, peak).sign()  # (n, HW), that entry made positive
    return SelfAttentionComponents(V.unflatten(1, (h, w)).float(), s.float(), size, len(names))  # (n, h, w)


def self_attention_figure(store: AttentionStore, prompt_index: int = 0, size: float | None = None, n: int = 6,
                          locations: Iterable[str] = ("down", "up"), image: torch.Tensor | None = None) -> Figure:
    """The components of :func:`self_attention_components`, one panel each (red > 0 > blue,
    ``ldm.figure_style.SIGNED_CMAP``, symmetric about 0, at the map's own resolution), titled with
    the singular value and its share of the squared norm; the generated ``image`` (3, H, W) in
    [0, 1] first, if given."""
    if image is not None:
        image = _check_images(image, "image", 3)  # (3, H, W)
    result = self_attention_components(store, prompt_index, size, n, locations)
    h, w = result.components.shape[-2:]
    fig, axes = _figure(n, image, panel_size=(2.2, 2.6))
    for i, (ax, v) in enumerate(zip(axes, result.components)):
        vmax = float(v.abs().max())
        ax.imshow(v.numpy(), cmap=SIGNED_CMAP, vmin=-vmax, vmax=vmax, interpolation="nearest")
        ax.set_title(f"component {i}\ns = {result.singular_values[i]:.3g} ({result.explained[i]:.0%})",
                     fontsize=FONT_SIZE)
    fig.suptitle(f"self-attention at {h}x{w}, prompt {prompt_index} ({'/'.join(check_locations(locations))}, "
                 f"{result.sites} sites)\ntop right singular vectors of the row-centred map", fontsize=TITLE_SIZE)
    return fig


# ----------------------------------------------------------------------------------------------
# 3. The edit


def edit_grid(images: torch.Tensor, prompts: Sequence[str], title: str | None = None) -> Figure:
    """The source (image 0) and the targets side by side, each titled with its prompt.

    ``images`` (B, 3, H, W) in [0, 1], e.g. ``prompt_to_prompt(...).images``; ``prompts`` the B prompts.
    """
    images = _check_images(images, "images", 4)  # (B, 3, H, W)
    if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)) \
            or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"prompts must be a list of str, one per image, got {prompts!r}")
    if len(prompts) != images.shape[0]:
        raise ValueError(f"got {images.shape[0]} images but {len(prompts)} prompts; expected one prompt per image")
    if title is not None and not isinstance(title, str):
        raise ValueError(f"title must be a str or None, got {title!r}")
    B = images.shape[0]
    fig = Figure(figsize=(3.2 * min(B, COLUMNS), 3.8 * math.ceil(B / COLUMNS)), layout="constrained", dpi=DPI)
    for k, (ax, image, prompt) in enumerate(zip(_grid(fig, B), images, prompts)):
        ax.imshow(_hwc(image), interpolation="nearest")
        role = "source" if k == 0 else f"target {k}"
        ax.set_title(role + "\n" + textwrap.fill(prompt, 28), fontsize=FONT_SIZE)
    if title is not None:
        fig.suptitle(title, fontsize=TITLE_SIZE)
    return fig
