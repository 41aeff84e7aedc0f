"""The shipped toy model (weights/toy/): VAE fidelity, prompt fidelity, and speed on this CPU.

1. VAE reconstruction: PSNR of D(E(x)) over 500 freshly rendered images (goal: mean >= 30 dB).
2. Prompt fidelity: ``--samples`` prompts (default 400; colour and shape always named, size,
   position and background each half the time), 50 DDIM steps, classifier-free guidance at
   ``--guidance``; the analyzer judges each sample (goals: colour AND shape >= 90%, size and
   position, when named, >= 85%). ``--sweep`` first compares guidance scales on fewer samples.
3. Speed: one 64x64 image from prompt to pixels (tokenize, encode, 50 DDIM steps with guidance,
   decode), batch 1, median of ``--repeats`` runs (goal <= 0.5 s). The reference, timed in the same
   run and interleaved: diffusers' StableDiffusionPipeline with DDIMScheduler on the same weights
   (exported with weights.convert's diffusers layout) and the same text embeddings, so only the
   U-Net/VAE/scheduler loop differs; the ratio ours / diffusers is printed.

    .venv/bin/python benchmarks/toy_quality.py            (about 2 minutes on 2 cores)
    .venv/bin/python benchmarks/toy_quality.py --sweep    (adds a guidance-scale comparison)

A figure of the first 40 samples with the analyzer's verdicts goes to outputs/toy_quality.png.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ldm.pipeline import StableDiffusion  # noqa: E402
from toyworld.evaluate import prompt_fidelity, vae_psnr  # noqa: E402

GOALS = {"psnr": 30.0, "colour AND shape": 0.90, "size": 0.85, "position": 0.85, "seconds": 0.5}


def time_ours(pipe: StableDiffusion, prompt: str, guidance: float) -> float:
    start = time.perf_counter()
    pipe.text_to_image([prompt], guidance_scale=guidance, steps=50, seed=0, progress=False)
    return time.perf_counter() - start


def diffusers_reference(folder: Path, pipe: StableDiffusion):
    """diffusers' pipeline on the same networks; the toy's word tokenizer is not a CLIP tokenizer,
    so the reference receives our text embeddings (``prompt_embeds``) and skips its own."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    from weights.unet_loading import export_unet_to_diffusers
    from weights.vae_loading import export_vae_to_diffusers

    tmp = Path(tempfile.mkdtemp())
    export_unet_to_diffusers(pipe.unet, tmp)
    export_vae_to_diffusers(pipe.vae, tmp)
    settings = json.loads((folder / "model.json").read_text())["scheduler"]
    scheduler = DDIMScheduler(**settings, clip_sample=False, set_alpha_to_one=False)
    reference = StableDiffusionPipeline(
        vae=AutoencoderKL.from_pretrained(tmp / "vae"), unet=UNet2DConditionModel.from_pretrained(tmp / "unet"),
        scheduler=scheduler, text_encoder=None, tokenizer=None, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    reference.set_progress_bar_config(disable=True)
    return reference


def time_reference(reference, pipe: StableDiffusion, prompt: str, guidance: float) -> float:
    start = time.perf_counter()
    cond, uncond = pipe.encode_prompts([prompt]), pipe.encode_prompts([""])  # the same text work as ours
    size = pipe.image_size
    reference(prompt_embeds=cond, negative_prompt_embeds=uncond, guidance_scale=guidance, num_inference_steps=50,
              height=size, width=size, generator=torch.Generator().manual_seed(0), output_type="pt")
    return time.perf_counter() - start


def save_figure(fidelity, path: Path, count: int = 40) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = min(count, len(fidelity.prompts))
    cols = 8
    rows = (count + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(2.0 * cols, 2.35 * rows), layout="constrained")
    for ax, image, prompt, check in zip(axes.flat, fidelity.images, fidelity.prompts, fidelity.checks):
        ax.imshow(image.permute(1, 2, 0).numpy())
        ok = all(check.values())
        missed = [k for k, v in check.items() if not v]
        ax.set_title(prompt.replace(" at the", "\nat the").replace(" in the", "\nin the").replace(" on a", "\non a")
                     + ("" if ok else f"\nMISSED: {', '.join(missed)}"), fontsize=6, color="black" if ok else "red")
    for ax in axes.flat:
        ax.axis("off")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Quality and speed of the shipped toy model.")
    p.add_argument("--weights", type=Path, default=Path("weights/toy"))
    p.add_argument("--samples", type=int, default=400)
    p.add_argument("--guidance", type=float, default=None, help="default: the model's documented scale")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--sweep", action="store_true", help="compare guidance scales 1.5, 3, 5, 7.5 on 200 samples first")
    p.add_argument("--quick", action="store_true", help="fewer samples and repeats (a smoke run, not the figures)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--figure", type=Path, default=Path("outputs/toy_quality.png"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.samples, args.repeats = 50, 3
    from toyworld.model import TOY_GUIDANCE_SCALE
    guidance = TOY_GUIDANCE_SCALE if args.guidance is None else args.guidance
    pipe = StableDiffusion.from_folder(args.weights)
    print(f"toy model {args.weights}, torch {torch.__version__}, {torch.get_num_threads()} threads")

    psnr = vae_psnr(pipe.vae, n=100 if args.quick else 500)
    print(f"\n1. VAE reconstruction over {len(psnr)} fresh images: PSNR mean {psnr.mean():.2f} dB, "
          f"min {psnr.min():.2f}, 5th percentile {psnr.quantile(0.05):.2f}  (goal mean >= {GOALS['psnr']})")

    if args.sweep:
        print("\n   guidance sweep (200 samples each, seed 100):")
        for scale in (1.5, 3.0, 5.0, 7.5):
            f = prompt_fidelity(pipe, n=200, guidance_scale=scale, seed=100, progress=False).summary()
            print("   s = %.1f: " % scale + ", ".join(f"{k} {v[0]:.1%}" for k, v in f.items()))

    start = time.perf_counter()
    fidelity = prompt_fidelity(pipe, n=args.samples, guidance_scale=guidance)
    seconds = time.perf_counter() - start
    print(f"\n2. Prompt fidelity over {args.samples} samples (50 DDIM steps, guidance {guidance}; "
          f"{seconds:.1f} s in batches of 50):")
    for name, (rate, count) in fidelity.summary().items():
        goal = GOALS.get(name)
        print(f"   {name:17s} {rate:6.1%} of {count:3d}" + (f"   (goal >= {goal:.0%})" if goal else ""))
    save_figure(fidelity, args.figure)
    print(f"   figure: {args.figure}")

    prompt = "a big red circle at the top left on a white background"
    reference = diffusers_reference(args.weights, pipe)
    ours, theirs = [], []
    for i in range(args.repeats + 1):  # interleaved; the first round warms up both
        a, b = time_ours(pipe, prompt, guidance), time_reference(reference, pipe, prompt, guidance)
        if i:
            ours.append(a)
            theirs.append(b)
    m_ours, m_ref = statistics.median(ours), statistics.median(theirs)
    print(f"\n3. One image, prompt to pixels (50 DDIM steps, guidance on, batch 1), median of {args.repeats}:")
    print(f"   ours {m_ours:.3f} s (min {min(ours):.3f})   diffusers {m_ref:.3f} s (min {min(theirs):.3f})   "
          f"ratio ours/diffusers {m_ours / m_ref:.2f}   (goal ours <= {GOALS['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
