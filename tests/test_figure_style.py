"""The one figure style (ldm/figure_style.py): its scale rule and its enlargement."""
from __future__ import annotations

import pytest
import torch

from ldm.figure_style import PANEL_PIXELS, RC_PARAMS, enlarge, enlargement, scaled_map


def test_each_map_goes_from_zero_to_its_own_maximum():
    maps = torch.tensor([[[0.0, 0.2], [0.1, 0.2]], [[0.5, 0.5], [0.5, 0.4]]])  # (2, 2, 2)
    out = scaled_map(maps)
    assert torch.equal(out.amax(dim=(1, 2)), torch.ones(2))
    torch.testing.assert_close(out[1], torch.tensor([[1.0, 1.0], [1.0, 0.8]]))  # a flat map stays flat
    assert torch.equal(scaled_map(torch.zeros(1, 2, 2)), torch.zeros(1, 2, 2))  # nothing to scale: no NaN
    with pytest.raises(ValueError, match=r"maps must be a tensor \(n, h, w\)"):
        scaled_map(torch.zeros(2, 2))


def test_small_images_are_enlarged_by_whole_factors_to_the_panel_size():
    assert enlargement(64) == 3 and enlargement(4) == 48 and enlargement(512) == 1
    assert all(enlargement(s) * s >= PANEL_PIXELS for s in range(1, 300))
    cells = torch.arange(4.0).reshape(1, 2, 2)
    assert torch.equal(enlarge(cells, (4, 4))[0], cells[0].repeat_interleave(2, 0).repeat_interleave(2, 1))
    with pytest.raises(ValueError, match="side must be a positive int"):
        enlargement(0)


def test_the_style_is_legible_in_a_room():
    assert RC_PARAMS["figure.dpi"] >= 120 and RC_PARAMS["font.size"] >= 10
    assert RC_PARAMS["image.cmap"] == "viridis"
