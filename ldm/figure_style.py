"""One figure style for the library's figures, its commands and the notebooks: made to be projected.

    from ldm.figure_style import use_style
    use_style()          # in a notebook: pyplot's defaults become the ones below

The rules, each a constant here so that every figure follows the same one:

- Resolution and type: ``DPI`` dots per inch, text at ``FONT_SIZE`` points, titles at
  ``TITLE_SIZE`` (a room reads 10 pt at 120 dpi from the back; 8 pt at 80 dpi it does not).
- Small images are enlarged by pixel repetition (nearest neighbour) to at least ``PANEL_PIXELS`` on a
  side, so a 64x64 sample or a 4x4 map shows its pixels as they are, not blurred, and panels are
  separated by ``GAP`` pixels.
- Attention maps: colour map ``MAP_CMAP`` (viridis: perceptually uniform, readable in grey and by
  colour-blind readers), and **one scale rule**: each map is drawn from 0 to its own maximum
  (``map / map.max()``, the rule of the Prompt-to-Prompt paper's figures). Because the scale starts
  at 0, a flat map (all values near its maximum) looks flat and a peaked one looks peaked; how much
  weight a map carries in total is written beside it, not coded in its colours.
- Signed maps (the self-attention components, latents): ``SIGNED_CMAP``, symmetric about 0.
- Differences and errors (|a - b| >= 0): ``ERROR_CMAP`` from 0.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

DPI = 120
FONT_SIZE = 11
TITLE_SIZE = 12
PANEL_PIXELS = 192
GAP = 8
MAP_CMAP = "viridis"
SIGNED_CMAP = "RdBu_r"
ERROR_CMAP = "magma"

RC_PARAMS = {
    "figure.dpi": DPI,
    "savefig.dpi": DPI,
    "font.size": FONT_SIZE,
    "axes.titlesize": TITLE_SIZE,
    "axes.labelsize": FONT_SIZE,
    "xtick.labelsize": FONT_SIZE - 1,
    "ytick.labelsize": FONT_SIZE - 1,
    "legend.fontsize": FONT_SIZE - 1,
    "figure.titlesize": TITLE_SIZE + 1,
    "image.cmap": MAP_CMAP,
    "image.interpolation": "nearest",
}


def use_style() -> None:
    """Make the rules above pyplot's defaults (for notebooks and scripts that use pyplot)."""
    import matplotlib.pyplot as plt

    plt.rcParams.update(RC_PARAMS)


def enlargement(side: int, target: int = PANEL_PIXELS) -> int:
    """The whole factor by which an image of ``side`` pixels is repeated to reach at least ``target``."""
    if isinstance(side, bool) or not isinstance(side, int) or side < 1:
        raise ValueError(f"side must be a positive int, got {side!r}")
    return max(1, -(-target // side))


def scaled_map(maps: torch.Tensor) -> torch.Tensor:
    """(n, h, w) non-negative maps -> each divided by its own maximum: the one scale rule, in [0, 1]."""
    if not isinstance(maps, torch.Tensor) or maps.ndim != 3:
        got = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
        raise ValueError(f"maps must be a tensor (n, h, w), got {got}")
    peak = maps.amax(dim=(1, 2), keepdim=True).clamp_min(1e-12)  # (n, 1, 1)
    return (maps / peak).float()  # (n, h, w), max 1


def enlarge(maps: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """(n, h, w) -> (n, H, W) by nearest neighbour: each cell becomes a block of equal pixels."""
    return F.interpolate(maps[:, None].float(), size=tuple(shape), mode="nearest")[:, 0]
