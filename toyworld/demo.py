"""``make demo``: the shipped toy Stable Diffusion (weights/toy/) end to end, in seconds on a CPU.

    python -m toyworld.demo --out outputs/demo_toy.png [--weights weights/toy] [--seed 0]

1. text to image: eight prompts, 50 DDIM steps with classifier-free guidance, one batch; the
   analyzer checks each image against its prompt;
2. the reverse process of one prompt: the latent z_t decoded at a few steps of the sampler, and
   the model's prediction of the clean image x_0_hat at the same steps (DDIM Eq. 9);
3. a real image: a freshly rendered scene (one the model never saw) encoded by the VAE, inverted
   with DDIM (guidance 1) and sampled back, with the PSNR of each stage.

One figure holds the three rows; the printout says what each took and where the figure went.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from toyworld.demo_2d import save_figure
from ldm.cli.common import output_problem, seed_value
from ddpm.parameterization import eps_to_x0
from ldm.pipeline import StableDiffusion
from unet.editor import Editor

from .analyze import analyze_batch, matches
from .evaluate import psnr_db
from .model import TOY_GUIDANCE_SCALE
from .render import render_batch
from .world import Scene, parse_caption

PROMPTS = [
    "a big red circle in the center on a white background",
    "a small blue square at the top left",
    "a big yellow triangle on a black background",
    "a green cross at the bottom right",
    "a small purple circle at the top right on a gray background",
    "a big orange square at the bottom left",
    "a red triangle in the center on a blue background",
    "a big green circle on a black background",
]
SHOWN_STEPS = (4, 14, 29, 49)  # z_t after these steps (of 50) is shown, and x_0_hat predicted from it


class Snapshots(Editor):
    """Keeps z_t after the chosen steps (``end_step`` returns the latents unchanged)."""

    def __init__(self, steps: tuple[int, ...]) -> None:
        self.steps, self.latents = set(steps), {}

    def end_step(self, latents: torch.Tensor, i: int, t: int) -> torch.Tensor:
        if i in self.steps:
            self.latents[i] = (t, latents.clone())
        return latents


def run(weights: Path, out: Path, seed: int, progress: bool = True) -> dict[str, float]:
    pipe = StableDiffusion.from_folder(weights)
    s = TOY_GUIDANCE_SCALE
    fig = Figure(figsize=(16, 7.6), layout="constrained")
    grid = fig.subplots(3, 8)
    for ax in grid.flat:
        ax.axis("off")
    report: dict[str, float] = {}

    # 1. Text to image.
    start = time.perf_counter()
    result = pipe.text_to_image(PROMPTS, guidance_scale=s, steps=50, seed=seed, progress=progress)
    report["seconds_per_image"] = (time.perf_counter() - start) / len(PROMPTS)
    verdicts = [matches(a, parse_caption(p)) for a, p in zip(analyze_batch(result.images), PROMPTS)]
    report["prompts_followed"] = float(np.mean([all(v.values()) for v in verdicts]))
    for ax, image, prompt, verdict in zip(grid[0], result.images, PROMPTS, verdicts):
        ax.imshow(image.permute(1, 2, 0).numpy())
        missed = [k for k, ok in verdict.items() if not ok]
        wrapped = prompt.replace(" at the", "\nat the").replace(" in the", "\nin the").replace(" on a", "\non a")
        ax.set_title(wrapped + ("\n(analyzer: all found)" if not missed else f"\n(missed: {', '.join(missed)})"),
                     fontsize=7, color="black" if not missed else "firebrick")

    # 2. The reverse process of the first prompt: z_t and the predicted x_0 at a few steps.
    snaps = Snapshots(SHOWN_STEPS)
    cond, uncond = pipe.encode_prompts(PROMPTS[:1]), pipe.encode_prompts([""])
    z_T = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        pipe.denoise(z_T, cond, uncond, steps=50, guidance_scale=s, editor=snaps, progress=False)
        timesteps = pipe.timesteps(50).tolist()
        for k, i in enumerate(SHOWN_STEPS):
            _, z = snaps.latents[i]  # after step i the latent sits at timesteps[i + 1] (z_0 after the last)
            grid[1][k].imshow(pipe.decode(z)[0].permute(1, 2, 0).numpy())
            if i + 1 < len(timesteps):
                t = timesteps[i + 1]
                eps = pipe.predict_noise(z, t, cond, uncond, s)  # (1, 4, 8, 8)
                x0 = eps_to_x0(pipe.schedule, z, t, eps)  # DDIM Eq. 9: the model's guess of z_0
                grid[1][k].set_title(f"z_t, t = {t}\n(after step {i + 1}/50, decoded)", fontsize=8)
                grid[1][4 + k].set_title(f"predicted x_0 at t = {t}", fontsize=8)
            else:
                x0 = z
                grid[1][k].set_title("z_0 (after step 50/50)", fontsize=8)
                grid[1][4 + k].set_title("x_0 = decode(z_0)", fontsize=8)
            grid[1][4 + k].imshow(pipe.decode(x0)[0].permute(1, 2, 0).numpy())

    # 3. A real image: VAE round trip, DDIM inversion with guidance 1, and back.
    scene = Scene("triangle", "orange", "big", "top right", "gray", dx=1.3, dy=-0.7, dsize=0.4)
    caption = "a big orange triangle at the top right on a gray background"
    x = render_batch([scene])  # (1, 3, 64, 64) in [0, 1]
    start = time.perf_counter()
    z0 = pipe.encode_image(x)
    cond = pipe.encode_prompts([caption])
    trajectory = pipe.invert(z0, cond, steps=50, progress=False)
    back = pipe.denoise(trajectory[-1], cond, None, steps=50, guidance_scale=1.0, progress=False)
    report["inversion_seconds"] = time.perf_counter() - start
    vae_only, reconstructed = pipe.decode(z0), pipe.decode(back)
    report["vae_psnr"] = psnr_db(vae_only, x).item()
    report["inversion_psnr"] = psnr_db(reconstructed, x).item()
    panels = [(x, "real image\n(rendered, unseen)"), (vae_only, f"VAE round trip\n{report['vae_psnr']:.1f} dB"),
              (pipe.decode(trajectory[-1]), "z_T after DDIM inversion\n(decoded)"),
              (reconstructed, f"sampled back from z_T\n{report['inversion_psnr']:.1f} dB")]
    for ax, (image, title) in zip(grid[2], panels):
        ax.imshow(image[0].permute(1, 2, 0).numpy())
        ax.set_title(title, fontsize=8)
    fig.suptitle(f"The toy Stable Diffusion ({weights}): text to image (guidance {s}, 50 DDIM steps), "
                 "the reverse process, and DDIM inversion of a real image", fontsize=11)
    save_figure(fig, out)
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="The toy Stable Diffusion end to end: one figure.")
    p.add_argument("--weights", type=Path, default=Path("weights/toy"))
    p.add_argument("--out", type=Path, default=Path("outputs/demo_toy.png"))
    p.add_argument("--seed", type=seed_value, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    if problem := output_problem(args.out, "figure"):
        p.error(f"--out {problem}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not (args.weights / "model.json").is_file():
        raise SystemExit(f"error: {args.weights} holds no model (model.json); the toy model ships in weights/toy/, "
                         f"or train one with `python -m toyworld.train`")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny networks: one thread is fastest, and kindest to a shared CPU
    try:
        start = time.perf_counter()
        report = run(args.weights, args.out, args.seed, progress=not args.no_progress)
    except (ValueError, OSError) as e:  # a damaged model folder, a full disk
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        torch.set_num_threads(threads)
    print(f"text to image: {report['seconds_per_image']:.2f} s per image (batch of {len(PROMPTS)}); the analyzer "
          f"finds every named attribute in {report['prompts_followed']:.0%} of the prompts")
    print(f"real image: VAE round trip {report['vae_psnr']:.1f} dB, DDIM inversion + sampling "
          f"{report['inversion_psnr']:.1f} dB ({report['inversion_seconds']:.1f} s)")
    print(f"wrote {args.out} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
