"""``make demo``: DDPM and DDIM end to end on a 2-D toy problem, in about half a minute on a CPU.

    python -m toyworld.demo_2d --out outputs/demo_2d.png [--steps 1600] [--seed 0]

1. trains a ``TinyDenoiser`` on the two-moons data with L_simple (Ho et al. 2020, Eq. 14);
2. samples with the DDPM ancestral sampler, all 1000 steps (Algorithm 2);
3. samples with DDIM, 50 steps, eta = 0 (Song et al. 2021, Eq. 12), from the same x_T;
4. inverts a few data points with DDIM (section 4.3) and decodes them back;

and draws one figure with a panel for each. The notebooks (``notebooks/01_ddpm.ipynb``,
``02_ddim.ipynb``) explain every step; this script is the quick check that the pieces fit.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from matplotlib.figure import Figure  # a bare Figure draws to a file with no display and no pyplot state

from ddim import ddim_invert, ddim_sample
from ddpm.reverse import MAX_SEED, ddpm_sample

from .toy2d import energy_distance, sample_2d, train_2d

NUM_SAMPLES = 1000  # points drawn by each sampler
NUM_INVERTED = 24  # data points sent through DDIM inversion and back
DDIM_STEPS = 50
LIM = (-3.2, 3.2)  # axes of the scatter plots


def _scatter(ax, points: torch.Tensor, title: str, **kwargs) -> None:
    ax.scatter(points[:, 0], points[:, 1], s=3, **kwargs)
    ax.set(xlim=LIM, ylim=LIM, aspect="equal", title=title, xlabel="$x^{(1)}$", ylabel="$x^{(2)}$")


def run(out: Path, steps: int, seed: int, progress: bool = True) -> dict[str, float]:
    """Train, sample, invert, draw; write the figure to ``out``. Returns the measured numbers."""
    start = time.perf_counter()
    model, schedule, losses = train_2d("moons", steps, seed, progress)
    train_seconds = time.perf_counter() - start

    data = sample_2d("moons", NUM_SAMPLES, torch.Generator().manual_seed(seed + 1))  # (N, 2)
    x_T = torch.randn((NUM_SAMPLES, 2), generator=torch.Generator().manual_seed(seed + 2))  # (N, 2)
    ddpm_points = ddpm_sample(model, x_T.shape, schedule, x_T=x_T, progress=progress,
                              generator=torch.Generator().manual_seed(seed + 3))  # (N, 2), 1000 steps
    ddim_points = ddim_sample(model, x_T.shape, schedule, DDIM_STEPS, eta=0.0, x_T=x_T, progress=progress)  # (N, 2)

    real = data[:NUM_INVERTED]  # (n, 2)
    inverted = ddim_invert(model, real, schedule, DDIM_STEPS, progress=progress)[-1]  # (n, 2), x_T of each point
    recon = ddim_sample(model, real.shape, schedule, DDIM_STEPS, x_T=inverted, progress=progress)  # (n, 2)

    summary = {
        "train_seconds": train_seconds,
        "final_loss": sum(losses[-100:]) / len(losses[-100:]),
        "ddpm_energy": energy_distance(ddpm_points, data),
        "ddim_energy": energy_distance(ddim_points, data),
        "recon_error": float((recon - real).norm(dim=1).mean()),
    }

    fig = Figure(figsize=(18, 5.2), layout="constrained")
    axes = fig.subplots(1, 4)
    _scatter(axes[0], data, "data: two moons", color="0.35")
    _scatter(axes[1], ddpm_points, f"DDPM, 1000 steps (energy dist. {summary['ddpm_energy']:.4f})", color="C0")
    _scatter(axes[2], ddim_points, f"DDIM, {DDIM_STEPS} steps, eta 0 (energy dist. {summary['ddim_energy']:.4f})",
             color="C1")
    ax = axes[3]
    ax.scatter(data[:, 0], data[:, 1], s=2, color="0.85")
    ax.quiver(real[:, 0], real[:, 1], (inverted - real)[:, 0], (inverted - real)[:, 1], angles="xy",
              scale_units="xy", scale=1, width=0.003, color="0.5")
    ax.scatter(real[:, 0], real[:, 1], s=40, facecolors="none", edgecolors="k", label="data $x_0$")
    ax.scatter(inverted[:, 0], inverted[:, 1], s=25, marker="x", color="C2", label="DDIM inversion $x_T$")
    ax.scatter(recon[:, 0], recon[:, 1], s=10, color="C3", label="reconstruction")
    ax.set(xlim=LIM, ylim=LIM, aspect="equal", xlabel="$x^{(1)}$", ylabel="$x^{(2)}$",
           title=f"DDIM inversion and back ({DDIM_STEPS} steps)\nmean error {summary['recon_error']:.3f}")
    ax.legend(loc="lower left", fontsize=8)
    fig.suptitle(f"TinyDenoiser trained for {steps} steps (seed {seed}), linear schedule, T = 1000")
    save_figure(fig, out)
    return summary


def save_figure(fig: Figure, out: Path, dpi: int = 100) -> None:
    """Write the figure atomically (weights/atomic.py), in the format of ``out``'s extension."""
    from weights.atomic import write_with

    write_with(out, lambda tmp: fig.savefig(tmp, format=out.suffix.lstrip(".").lower(), dpi=dpi))


def _int_at_least(minimum: int, expected: str, maximum: int | None = None):
    """An argparse ``type`` that accepts integers in [minimum, maximum] and names what it expected otherwise."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if value < minimum or maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
        return value
    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m toyworld.demo_2d", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/demo_2d.png"), help="the PNG to write")
    parser.add_argument("--steps", type=_int_at_least(1, "a positive integer"), default=1600,
                        help="training steps (default 1600)")
    parser.add_argument("--seed", type=_int_at_least(0, "an integer in [0, 2^63 - 1]", MAX_SEED), default=0,
                        help="seed of the data, the weights and the noise (default 0)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bars")
    args = parser.parse_args(argv)
    if args.out.suffix.lower() != ".png":
        parser.error(f"--out must name a .png file, got {str(args.out)!r}")
    if args.out.exists() and args.out.is_dir():
        parser.error(f"--out {str(args.out)!r} is a directory, expected a .png file path")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # A 2-D MLP gains nothing from several threads, and they slow it down many times over when
    # other programs share the CPU; the caller's setting is restored afterwards.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        summary = run(args.out, args.steps, args.seed, args.progress)
    except OSError as e:  # writing the figure: a full disk, no permission
        print(f"error: could not write {args.out}: {e}", file=sys.stderr)
        return 2
    finally:
        torch.set_num_threads(threads)
    print(f"wrote {args.out}")
    print(f"trained {args.steps} steps in {summary['train_seconds']:.1f} s (loss {summary['final_loss']:.3f}); "
          f"energy distance to data: DDPM {summary['ddpm_energy']:.4f}, DDIM {summary['ddim_energy']:.4f}; "
          f"DDIM inversion round trip: mean error {summary['recon_error']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
