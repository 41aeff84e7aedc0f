"""The attention store: what the U-Net looked at, averaged over the sampling steps.

Prompt-to-Prompt's figures and its local blending read the *cross-attention maps* M_t (Hertz et
al. 2022, section 3.1): for pixel x and token j,

    M_t[x, j] = softmax_j(Q K^T / sqrt(d))[x, j]        (Eq. 1's softmax, one map per head)

i.e. how much pixel x draws from token j's value vector at step t. A single step's map is noisy;
the store keeps the running average over the steps it saw,

    M_bar = (1 / S) sum_{s <= S} M_s                 (the official ``AttentionStore``'s average)

and averages over heads as it records (every figure and the local blending average over heads
anyway; keeping the heads would cost ``heads`` times the memory). Self-attention maps, (HW, HW)
per item, are kept too, at the resolutions asked for.

Only the conditional half of the classifier-free-guidance batch is recorded: under guidance the
U-Net sees [uncond_0..uncond_{B-1}, cond_0..cond_{B-1}] (ldm/pipeline.py), so the maps of prompt b
are item B + b; with guidance 1 there is no unconditional half and item b is prompt b.

Resolutions are named relative to the latent, so one setting means the same on SD and on the toy
model: a site with ``downsample`` d has a map of side (latent side) / d, a *size* of 1/d. SD v1 at
a 64x64 latent has sizes 1 (64x64), 1/2 (32x32), 1/4 (16x16) and, in the middle block, 1/8
(8x8); the toy model at an 8x8 latent has sizes 1 (8x8) and 1/2 (4x4, also its middle block).
"""
from __future__ import annotations

import math
from typing import Iterable

import torch

from unet.editor import Editor, Site, check_locations, check_size, site_size


class AttentionStore(Editor):
    """Records the head-averaged conditional attention maps of chosen sites; changes nothing.

    ``batch`` is the number of prompts B. ``cross_max_size`` / ``self_max_size`` choose which
    sites are recorded by their map size (a fraction of the latent side; 0 records none of that
    kind). The default keeps every cross-attention map and the self-attention maps of side at
    most 1/2: on SD at 64x64 a self map at full size is 4096 x 4096 floats (64 MiB) per prompt and
    site, which is why the official store also stops at 32x32.

    After sampling, ``average(site)`` is the (B, HW, M) running mean over the recorded steps and
    :meth:`aggregate` averages the sites of one resolution.
    """

    def __init__(self, batch: int, cross_max_size: float = 1.0, self_max_size: float = 0.5) -> None:
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be the number of prompts, an int >= 1, got {batch!r}")
        self.batch = batch
        self.max_size = {"cross": cross_max_size, "self": self_max_size}
        for kind, size in self.max_size.items():
            if size != 0:
                check_size(f"{kind}_max_size", size)
        self.sums: dict[str, torch.Tensor] = {}  # site name -> (B, HW, M) sum over the steps
        self.sites: dict[str, Site] = {}  # site name -> Site, in the order first seen
        self.counts: dict[str, int] = {}  # site name -> number of steps summed
        self.latent_hw: tuple[int, int] | None = None  # (h, w) of the latents, seen at end_step

    # ------------------------------------------------------------------ recording
    def records(self, site: Site) -> bool:
        """Whether this store keeps ``site``'s maps."""
        return site.is_attention and site_size(site) <= self.max_size[site.kind]

    def wants_probs(self, site: Site) -> bool:
        return self.records(site)

    def conditional(self, probs: torch.Tensor) -> torch.Tensor:
        """The B conditional items of a U-Net batch of B (guidance 1) or 2B (guidance) items."""
        if probs.shape[0] not in (self.batch, 2 * self.batch):
            raise ValueError(f"the U-Net batch has {probs.shape[0]} items; this editor was made for {self.batch} "
                             f"prompts, so expected {self.batch} (guidance 1) or {2 * self.batch} (guidance)")
        return probs[-self.batch:]  # (B, heads, N, M): the conditional half is last

    def record(self, probs: torch.Tensor, site: Site) -> None:
        """Add one step's head-averaged conditional maps of ``site`` to its sum."""
        if not self.records(site):
            return
        maps = self.conditional(probs).mean(dim=1).detach().float()  # (B, N, M), averaged over heads
        if site.name in self.sums:
            self.sums[site.name] += maps
            self.counts[site.name] += 1
        else:
            self.sums[site.name] = maps.clone()
            self.sites[site.name] = site
            self.counts[site.name] = 1

    def attention_probs(self, probs: torch.Tensor, site: Site) -> torch.Tensor:
        self.record(probs, site)
        return probs

    def end_step(self, latents: torch.Tensor, i: int, t: int | torch.Tensor) -> torch.Tensor:
        self.latent_hw = tuple(latents.shape[-2:])  # how to fold a site's HW pixels back into (h, w)
        return latents

    @property
    def nbytes(self) -> int:
        """Memory held by the stored sums, in bytes."""
        return sum(t.numel() * t.element_size() for t in self.sums.values())

    # ------------------------------------------------------------------ reading
    def average(self, name: str) -> torch.Tensor:
        """M_bar of one site: (B, HW, M), the sum over steps divided by the number of steps."""
        if name not in self.sums:
            raise ValueError(f"no maps were recorded at site {name!r}; recorded: {list(self.sums)}")
        return self.sums[name] / self.counts[name]

    def map_shape(self, site: Site, pixels: int) -> tuple[int, int]:
        """(h, w) of ``site``'s map: from the latent size seen at ``end_step``, else a square."""
        if self.latent_hw is not None:
            h, w = site.resolution(*self.latent_hw)
        else:
            h = w = math.isqrt(pixels)
        if h * w != pixels:
            raise ValueError(f"site {site.name} has {pixels} pixels, which is not {h}x{w}; sample with this store "
                             f"as the editor so it sees the latent size")
        return h, w

    def sizes(self, kind: str) -> list[float]:
        """The map sizes (fractions of the latent side) recorded for ``kind``, largest first."""
        return sorted({site_size(s) for s in self.sites.values() if s.kind == kind}, reverse=True)

    def aggregate(self, kind: str = "cross", size: float | None = None, locations: Iterable[str] = ("down", "up"),
                  prompt: int | None = None, sums: bool = False) -> torch.Tensor:
        """The maps of every recorded ``kind`` site of one ``size`` in ``locations``, averaged over
        those sites (their heads were averaged when recorded): (B, h, w, M) as an image per token, or
        (h, w, M) for one ``prompt``. ``size`` defaults to the largest recorded. The official
        ``aggregate_attention`` does the same with ``from_where=("up", "down")``.

        ``sums=True`` averages the running *sums* instead of the means: the same up to a
        factor per site, which local blending normalises away.
        """
        locations = check_locations(locations)
        sizes = self.sizes(kind)
        if not sizes:
            raise ValueError(f"no {kind}-attention maps were recorded (is the store passed to the sampler, "
                             f"and {kind}_max_size > 0?)")
        size = sizes[0] if size is None else size
        chosen = [n for n, s in self.sites.items()
                  if s.kind == kind and s.location in locations and math.isclose(site_size(s), size)]
        if not chosen:
            raise ValueError(f"no {kind}-attention maps of size {size} in {locations}; recorded sizes: {sizes}")
        maps = torch.stack([self.sums[n] if sums else self.average(n) for n in chosen]).mean(0)  # (B, N, M)
        maps = maps.unflatten(1, self.map_shape(self.sites[chosen[0]], maps.shape[1]))  # (B, h, w, M)
        if prompt is None:
            return maps
        if isinstance(prompt, bool) or not isinstance(prompt, int) or not 0 <= prompt < self.batch:
            raise ValueError(f"prompt must be an index in [0, {self.batch - 1}], got {prompt!r}")
        return maps[prompt]  # (h, w, M)
