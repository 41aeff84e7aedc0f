"""``python -m toyworld.demo_2d`` (``make demo``): writes a valid figure, is reproducible, rejects bad arguments."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image

from toyworld import demo_2d as demo
from toyworld.toy2d import energy_distance, train_2d


def test_demo_writes_a_png_and_a_summary(tmp_path, capsys):
    out = tmp_path / "new" / "folder" / "demo.png"  # the folders do not exist yet
    threads = torch.get_num_threads()
    assert demo.main(["--steps", "30", "--seed", "1", "--out", str(out), "--no-progress"]) == 0
    assert torch.get_num_threads() == threads  # the demo restores the caller's thread count
    with Image.open(out) as image:
        image.verify()  # a complete, well-formed PNG
    with Image.open(out) as image:
        assert image.format == "PNG"
        pixels = np.asarray(image.convert("L"))
    assert pixels.shape == (520, 1800)  # figsize (18, 5.2) at dpi 100
    assert pixels.std() > 10, "the figure is blank"  # four scatter panels on white are far from uniform
    assert sorted(p.name for p in out.parent.iterdir()) == ["demo.png"]  # no temporary file left
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "mean error" in printed


def test_training_is_reproducible():
    a, _, losses_a = train_2d("moons", 8, seed=3, progress=False)
    b, _, losses_b = train_2d("moons", 8, seed=3, progress=False)
    assert losses_a == losses_b
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(pa, pb), name
    c, _, losses_c = train_2d("moons", 8, seed=4, progress=False)
    assert losses_c != losses_a  # the seed matters


def test_energy_distance():
    """Zero for identical clouds, positive between different distributions, and symmetric."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(500, 2, generator=g), torch.randn(500, 2, generator=g) + 1.0
    assert abs(energy_distance(a, a)) < 1e-12
    assert energy_distance(a, b) > 0.5  # a unit shift in both coordinates is far beyond sampling noise
    assert energy_distance(a, b) == pytest.approx(energy_distance(b, a))
    with pytest.raises(ValueError, match="expected two"):
        energy_distance(a, torch.zeros(5, 3))
    with pytest.raises(ValueError, match="steps must be a positive int, got 0"):
        train_2d("moons", 0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--steps", "0"], r"--steps: expected a positive integer, got 0"),
        (["--steps", "many"], r"--steps: expected a positive integer, got 'many'"),
        (["--seed", "-1"], r"--seed: expected an integer in \[0, 2\^63 - 1\], got -1"),
        (["--out", "figure.jpg"], r"--out must name a \.png file, got 'figure.jpg'"),
    ],
)
def test_bad_arguments_are_argparse_errors(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        demo.main(args)
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_out_may_not_be_a_directory(tmp_path, capsys):
    folder = tmp_path / "looks_like.png"
    folder.mkdir()
    with pytest.raises(SystemExit):
        demo.main(["--out", str(folder)])
    assert "is a directory" in capsys.readouterr().err
