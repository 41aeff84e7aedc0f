"""The editor: the one extension point through which editing algorithms reach inside the U-Net.

Prompt-to-Prompt (Hertz et al. 2022) rewrites cross-attention maps, Plug-and-Play (Tumanyan et al.
2023) injects self-attention queries/keys and ResBlock features, null-text inversion optimises
around the sampling loop. None of them patches the network: ``UNet.forward(x, t, context, editor)``
passes the editor explicitly to every ResBlock and attention module, and each module calls it at
fixed points with the tensors of the equations:

    attention_qk(q, k, site)       q (B, heads, N, d), k (B, heads, M, d)      before Q K^T
    attention_probs(probs, site)   probs = softmax(Q K^T / sqrt(d))  (B, heads, N, M)  before @ V
    resnet_residual(h, site)       h = F(x), the residual branch (B, C, H, W)  before x + F(x)

N = H W is the number of pixels at the site's resolution; M = N for self-attention and M = 77
(the context length) for cross-attention. Attention probabilities are only materialised where
``wants_probs(site)`` is True; everywhere else attention runs through the fused
``scaled_dot_product_attention``, so an editor that looks at a few sites costs little.

The sampling loop (``StableDiffusion.denoise``, the library's one loop) calls four more methods
around each step i at timestep t, never the U-Net:

    begin_step(i, t)                    before the step
    unconditional(i, t, latents, u)     the unconditional context of the step (null-text inversion
                                        optimises it here); the default keeps the loop's u
    extra_items(i, t)                   (latents, contexts) of more U-Net items put before the
                                        guidance pair, whose predictions the loop drops
                                        (Plug-and-Play's source branch); default none
    end_step(latents, i, t)             after the step; may change the latents (local blending)

A :class:`Site` names where a tensor comes from. Every module receives its site when the U-Net
is built, and the site's ``name`` is the module's name in ``UNet.named_modules()``, which is also
the prefix of its weights: ``up_blocks.1.attentions.0.transformer_blocks.0.attn2``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch

KINDS = ("self", "cross", "resnet")
LOCATIONS = ("down", "mid", "up")


@dataclass(frozen=True)
class Site:
    """Where in the U-Net a ResBlock or an attention module sits.

    name        the module's path, e.g. ``mid_block.resnets.0`` or ``down_blocks.0.attentions.1.transformer_blocks.0.attn1``
    kind        "self" (attn1), "cross" (attn2) or "resnet"
    location    "down", "mid" or "up"
    block       the block's index in ``down_blocks`` / ``up_blocks``, as in ``name`` (0 for the mid
                block); on the up path block 0 is the coarsest, so compare resolutions by ``downsample``
    index       the ResBlock's or the spatial transformer's index within its block
    downsample  how much smaller than the latent the site's feature map is: 1, 2, 4, 8 for SD v1
    layer       the transformer block within the spatial transformer (0 for ResBlocks and for
                SD v1, which has one transformer block per spatial transformer)
    """

    name: str
    kind: str
    location: str
    block: int
    index: int
    downsample: int
    layer: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown site kind {self.kind!r}; expected one of {KINDS}")
        if self.location not in LOCATIONS:
            raise ValueError(f"unknown site location {self.location!r}; expected one of {LOCATIONS}")

    @property
    def is_attention(self) -> bool:
        return self.kind != "resnet"

    def resolution(self, latent_height: int, latent_width: int) -> tuple[int, int]:
        """The (H, W) of this site's feature map for a latent of the given size."""
        return latent_height // self.downsample, latent_width // self.downsample


# ----------------------------------------------------------------------------------------------
# Site geometry. Resolutions are named relative to the latent, so one setting means the same on SD
# and on a toy model: a site with ``downsample`` d has a map of side (latent side) / d, a *size* of
# 1/d. SD v1 at a 64x64 latent has sizes 1, 1/2, 1/4 and, in the middle block, 1/8.


def site_size(site: Site) -> float:
    """A site's map side as a fraction of the latent side: 1 / downsample."""
    return 1.0 / site.downsample


def check_size(name: str, size: float) -> float:
    """A resolution written as a fraction of the latent side: a number in (0, 1]."""
    if isinstance(size, bool) or not isinstance(size, (int, float)) or not 0 < size <= 1:
        raise ValueError(f"{name} must be a fraction of the latent side in (0, 1] (1/4 = 16x16 of a 64x64 latent), "
                         f"got {size!r}")
    return float(size)


def check_locations(locations: Iterable[str]) -> tuple[str, ...]:
    locations = tuple(locations) if not isinstance(locations, str) else (locations,)
    if not locations or any(loc not in LOCATIONS for loc in locations):
        raise ValueError(f"locations must be a non-empty subset of {LOCATIONS}, got {locations!r}")
    return locations


def select_sites(sites: Sequence[Site], kind: str, max_size: float = 1.0,
                 locations: Iterable[str] = LOCATIONS) -> list[Site]:
    """The attention sites of ``kind`` ("self" or "cross") in ``locations`` whose map side is at
    most ``max_size`` times the latent side, in the U-Net's order.

    ``select_sites(unet.sites, "self", max_size=1/4)`` is Prompt-to-Prompt's "self-attention at
    16x16 and below" on SD v1 (64x64 latents): down_blocks.2 (two), the middle block, up_blocks.1
    (three).
    """
    if kind not in ("self", "cross"):
        raise ValueError(f"kind must be 'self' or 'cross', got {kind!r}")
    locations = check_locations(locations)
    return [s for s in sites if s.kind == kind and s.location in locations and site_size(s) <= max_size]


class Editor:
    """No-op defaults: an ``Editor()`` leaves the U-Net's output unchanged. Subclass and override."""

    def begin_step(self, i: int, t: int | torch.Tensor) -> None:
        """Called by a sampling loop before step ``i`` (timestep ``t``)."""

    def unconditional(self, i: int, t: int, latents: torch.Tensor, uncond: torch.Tensor | None) -> torch.Tensor | None:
        """The unconditional context (1 or B, 77, D) step ``i`` guides with, given the latents z_t
        (B, 4, h, w) it starts from and the loop's ``uncond``; returned unchanged by default."""
        return uncond

    def extra_items(self, i: int, t: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Latents (E, 4, h, w) and contexts (E, 77, D) of E more items for step ``i``'s U-Net call,
        put before the guidance pair (they are items 0..E-1 in every hook); None for none."""
        return None

    def end_step(self, latents: torch.Tensor, i: int, t: int | torch.Tensor) -> torch.Tensor:
        """Called by a sampling loop after step ``i``; returns the (possibly changed) latents."""
        return latents

    def wants_probs(self, site: Site) -> bool:
        """True where :meth:`attention_probs` should see the softmax; False keeps the fused kernel."""
        return False

    def attention_qk(self, q: torch.Tensor, k: torch.Tensor, site: Site) -> tuple[torch.Tensor, torch.Tensor]:
        """q (B, heads, N, d), k (B, heads, M, d), already split into heads; returns new (q, k)."""
        return q, k

    def attention_probs(self, probs: torch.Tensor, site: Site) -> torch.Tensor:
        """probs (B, heads, N, M), rows summing to 1; returns the map that multiplies V."""
        return probs

    def resnet_residual(self, h: torch.Tensor, site: Site) -> torch.Tensor:
        """h (B, C, H, W): the residual branch F(x) of a ResBlock before the skip is added."""
        return h


def check_edited(new: torch.Tensor, old: torch.Tensor, what: str, site: Site) -> torch.Tensor:
    """An editor must hand back a tensor of the shape it was given; say where it did not."""
    if not isinstance(new, torch.Tensor) or new.shape != old.shape:
        got = tuple(new.shape) if isinstance(new, torch.Tensor) else type(new).__name__
        raise ValueError(f"editor's {what} at site {site.name} returned {got}, expected shape {tuple(old.shape)}")
    return new


@dataclass
class Record:
    """One editor call seen by :class:`RecordingEditor`."""

    site: Site
    method: str  # "attention_qk", "attention_probs" or "resnet_residual"
    shapes: tuple[tuple[int, ...], ...]  # shapes of the tensors handed to the method


@dataclass
class RecordingEditor(Editor):
    """Records every call (site, method, tensor shapes) and changes nothing.

    With ``probs=True`` it asks for every attention probability map, so the U-Net takes the
    explicit-softmax path everywhere; with ``keep`` it also keeps the tensors themselves.
    """

    probs: bool = True
    keep: bool = False
    records: list[Record] = field(default_factory=list)
    tensors: list[torch.Tensor] = field(default_factory=list)

    def _record(self, site: Site, method: str, *tensors: torch.Tensor) -> None:
        self.records.append(Record(site, method, tuple(tuple(x.shape) for x in tensors)))
        if self.keep:
            self.tensors.extend(x.detach().clone() for x in tensors)

    def wants_probs(self, site: Site) -> bool:
        return self.probs

    def attention_qk(self, q: torch.Tensor, k: torch.Tensor, site: Site) -> tuple[torch.Tensor, torch.Tensor]:
        self._record(site, "attention_qk", q, k)
        return q, k

    def attention_probs(self, probs: torch.Tensor, site: Site) -> torch.Tensor:
        self._record(site, "attention_probs", probs)
        return probs

    def resnet_residual(self, h: torch.Tensor, site: Site) -> torch.Tensor:
        self._record(site, "resnet_residual", h)
        return h
