"""Real-image inversion on the toy model: how well, and at what price, each method gets the image back.

For ``--images`` images the toy model never trained on (ToyDataset seed ``--seed``; training used
seed 1), each with its full true caption, every method inverts the image's latent z_0 under the
caption (50 steps), then samples it back with classifier-free guidance 7.5 (editing/null_text.py):

    DDIM inversion        s = 1 inversion, sampling with the empty prompt as the null text (the baseline)
    negative-prompt       the same inversion, sampling with the caption as the null text (Miyake et al.)
    null-text             the same inversion, one optimised null text per step (Mokady et al.)

and the table shows, per image, the time to invert (DDIM inversion plus, for null-text, the
optimisation), the time to reconstruct (one guided sampling run), and the PSNR of the decoded
reconstruction against the rendered image (mean and min, dB on [0, 1]). The VAE alone, D(E(x)),
bounds what any latent inversion can reach. The reference for time is negative-prompt inversion,
measured in the same run: the null-text / negative-prompt ratio is printed.

``--sd`` adds the same timings on the SD v1.5 configuration with random weights (860M-parameter
U-Net), one random 4x32x32 latent and ``--sd-steps`` steps: random weights make the PSNR meaningless,
so only time is shown.

    .venv/bin/python benchmarks/inversion.py --threads 1            (about 3 minutes)
    .venv/bin/python benchmarks/inversion.py --quick --threads 1    (4 images, under a minute)
    .venv/bin/python benchmarks/inversion.py --quick --sd --threads 1   (adds SD v1.5-size timings: ~6 minutes more)

On a shared 2-core machine ``--threads 1`` is the steadier choice: two threads that have to wait
for a busy core slow every step down.
"""
from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from editing.null_text import ddim_inversion, negative_prompt_inversion, null_text_inversion  # noqa: E402
from ldm.pipeline import StableDiffusion  # noqa: E402
from toyworld.evaluate import psnr_db  # noqa: E402
from toyworld.render import ToyDataset  # noqa: E402
from toyworld.world import caption  # noqa: E402
from _unseen import add_unseen_image_args, apply_unseen_image_args  # noqa: E402  (benchmarks/_unseen.py)

METHODS = {"DDIM inversion": ddim_inversion, "negative-prompt": negative_prompt_inversion,
           "null-text": null_text_inversion}


def run_method(sd: StableDiffusion, name: str, z0: torch.Tensor, prompt: str, steps: int, guidance: float,
               inner_steps: int) -> tuple[torch.Tensor, float, float]:
    """(reconstructed z_0, seconds to invert, seconds to reconstruct)."""
    kwargs = {"inner_steps": inner_steps} if name == "null-text" else {}
    start = time.perf_counter()
    inversion = METHODS[name](sd, z0, prompt, steps=steps, guidance_scale=guidance, progress=False, **kwargs)
    middle = time.perf_counter()
    z = inversion.reconstruct(sd, progress=False)
    return z, middle - start, time.perf_counter() - middle


def toy_table(args: argparse.Namespace) -> None:
    sd = StableDiffusion.from_folder(args.weights)
    data = ToyDataset(args.seed)
    print(f"toy model {args.weights}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{args.images} unseen images (ToyDataset seed {args.seed}), {args.steps} steps, guidance {args.guidance}, "
          f"null-text inner steps {args.inner_steps}")
    psnr: dict[str, list[float]] = {name: [] for name in ["VAE alone", *METHODS]}
    invert_s: dict[str, list[float]] = {name: [] for name in METHODS}
    rec_s: dict[str, list[float]] = {name: [] for name in METHODS}
    for k in range(args.images):
        x, _, scene = data[k]
        x = x[None]  # (1, 3, 64, 64) in [0, 1]
        prompt = caption(scene)  # the true caption, every attribute named
        z0 = sd.encode_image(x)  # (1, 4, 8, 8)
        psnr["VAE alone"].append(psnr_db(sd.decode(z0), x).item())
        for name in METHODS:
            z, t_inv, t_rec = run_method(sd, name, z0, prompt, args.steps, args.guidance, args.inner_steps)
            psnr[name].append(psnr_db(sd.decode(z), x).item())
            invert_s[name].append(t_inv)
            rec_s[name].append(t_rec)
        print(f"  {k}: {prompt:<62} " + "  ".join(f"{n.split()[0]} {v[-1]:5.2f}" for n, v in psnr.items()), flush=True)

    mean = lambda v: sum(v) / len(v)  # noqa: E731
    print(f"\n{'method':<16} {'invert s':>9} {'rebuild s':>9} {'PSNR mean':>10} {'PSNR min':>9} {'vs DDIM':>8}")
    for name, values in psnr.items():
        times = f"{mean(invert_s[name]):>9.3f} {mean(rec_s[name]):>9.3f}" if name in METHODS else f"{'':>9} {'':>9}"
        gain = mean(values) - mean(psnr["DDIM inversion"])
        print(f"{name:<16} {times} {mean(values):>10.2f} {min(values):>9.2f} {gain:>+8.2f}")
    ratio = mean(invert_s["null-text"]) / mean(invert_s["negative-prompt"])
    total = (mean(invert_s["null-text"]) + mean(rec_s["null-text"])) / (
        mean(invert_s["negative-prompt"]) + mean(rec_s["negative-prompt"]))
    print(f"\ntime null-text / negative-prompt: inversion {ratio:.1f}x, inversion + reconstruction {total:.1f}x")
    print(f"PSNR null-text {mean(psnr['null-text']):.2f} dB (min {min(psnr['null-text']):.2f}), negative-prompt "
          f"{mean(psnr['negative-prompt']):.2f} dB (min {min(psnr['negative-prompt']):.2f}), DDIM inversion "
          f"{mean(psnr['DDIM inversion']):.2f} dB; VAE alone {mean(psnr['VAE alone']):.2f} dB")


def sd_v1_random(seed: int = 0) -> StableDiffusion:
    """SD v1.5's networks with random weights and a word tokenizer (its ids are all < 49408)."""
    from _random_sd import sd_v1_random as build
    from ldm.tokenizer import WordTokenizer

    return build(WordTokenizer(["a", "photo", "of", "cat"]), seed)


def sd_table(args: argparse.Namespace) -> None:
    sd = sd_v1_random()
    z0 = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(1))  # (1, 4, 32, 32)
    print(f"\nSD v1.5 configuration, random weights, fp32 CPU ({torch.get_num_threads()} threads), latent 4x32x32, "
          f"{args.sd_steps} steps, guidance {args.guidance}, null-text inner steps {args.sd_inner_steps} "
          f"(random weights: the PSNR would mean nothing, so only time)")
    times = {}
    for name in METHODS:
        _, t_inv, t_rec = run_method(sd, name, z0, "a photo of a cat", args.sd_steps, args.guidance, args.sd_inner_steps)
        times[name] = (t_inv, t_rec)
        print(f"  {name:<16} invert {t_inv:8.2f} s   reconstruct {t_rec:7.2f} s", flush=True)
    ratio = times["null-text"][0] / times["negative-prompt"][0]
    print(f"time null-text / negative-prompt (inversion): {ratio:.1f}x")
    del sd
    gc.collect()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Reconstruction quality and time of DDIM, negative-prompt and "
                                            "null-text inversion.")
    add_unseen_image_args(p, images=16, guidance=7.5)
    p.add_argument("--inner-steps", type=int, default=10)
    p.add_argument("--sd", action="store_true", help="also time the SD v1.5 configuration (random weights)")
    p.add_argument("--sd-steps", type=int, default=3)
    p.add_argument("--sd-inner-steps", type=int, default=5)
    args = p.parse_args(argv)
    apply_unseen_image_args(p, args)
    toy_table(args)
    if args.sd:
        sd_table(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
