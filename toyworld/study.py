"""One model of the second world, measured: ``python -m toyworld.study --weights DIR --out FILE.json``.

The design study of the second toy model (toyworld/STUDY.md) compares recipes by these figures:

    generation    fresh captions of one, two and three objects: the share of images that show every
                  named attribute of every object (and no extra object)
    attention     toyworld.attention_eval's word-map concentration, own > other, IoU, mass shares
    word swaps    toyworld.scene_edits: baseline vs Prompt-to-Prompt (library defaults, and the
                  official code's self-attention rule, every map of at most 16x16 pixels)
    VAE           reconstruction PSNR of fresh renders

``--quick`` runs fewer cases and steps (for short study runs); the full sizes are the defaults.

``python -m toyworld.study --table`` prints the comparison table of toyworld/STUDY.md from the
records in toyworld/study/ (``NAME.json`` and ``NAME-train.log`` for each NAME of
``STUDY_RECORDS``); tests/test_scenes.py checks that STUDY.md shows exactly that table.
"""
from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import numpy as np
import torch

from editing.prompt_to_prompt import Injection

from .attention_eval import diagnose, diagnostic_prompts, summary
from .evaluate import psnr_db
from .scene_analysis import read_scenes, scene_matches
from .scene_edits import evaluate_swaps, scene_swap_cases, summarize
from .scenes import SceneDataset, random_description, random_scene

STUDY_SEED = 777  # scenes, prompts and sampling seeds of the study: none is a training index


def generation(sd, n: int, objects: int, steps: int, guidance: float, batch: int = 16) -> float:
    rng = np.random.default_rng([STUDY_SEED, objects])
    prompts = [random_description(random_scene(rng, n_objects=objects), rng) for _ in range(n)]
    ok = []
    for i in range(0, n, batch):
        images = sd.text_to_image(prompts[i:i + batch], guidance_scale=guidance, steps=steps, seed=STUDY_SEED + i,
                                  progress=False).images
        ok += [scene_matches(r, p)["all"] for r, p in zip(read_scenes(images), prompts[i:i + batch])]
    return float(np.mean(ok))


def vae_psnr(sd, n: int = 64) -> float:
    images = SceneDataset(STUDY_SEED).batch(range(n))[0]  # (n, 3, 64, 64) in [0, 1]
    with torch.no_grad():
        recon = sd.decode(sd.encode_image(list(images)))
    return float(psnr_db(recon, images).mean())


SWAP_METHODS = ("baseline", "p2p", "p2p, self at <= 16x16 px")


def final_loss(log: Path) -> float:
    """The last "diffusion step N/N: loss (mean of the last 10 steps) L" of a training log."""
    found = re.findall(r"diffusion step (\d+)/(\d+): loss \(mean of the last 10 steps\) ([0-9.]+)", log.read_text())
    done = [float(loss) for step, total, loss in found if step == total]
    if not done:
        raise ValueError(f"{log} has no finished diffusion run")
    return done[-1]


def table(columns: dict[str, tuple[dict, Path | None]]) -> str:
    """STUDY.md's table: one column per record (name -> (record, its training log or None))."""
    def swaps(record: dict, key: str, field: str) -> str:
        return " / ".join(f"{record['swaps'][f'{key}, {m}'][field]:.2f}" for m in SWAP_METHODS)

    def maps(record: dict, size: str) -> str:
        if size not in record["attention"]:
            return "(not measured)"  # the diagnosis measures the finest size with attention and 1/4
        a = record["attention"][size]
        return f"{a['concentration']:.2f} / {a['own_over_other']:.0%} / {a['iou']:.2f}"

    rows = {
        "diffusion steps of 64 latents": lambda r, log: str(r.get("diffusion_steps", "")),
        "final diffusion loss (mean of 10 steps)": lambda r, log: f"{final_loss(log):.4f}" if log else "",
        "generation, every attribute right: 1 / 2 / 3 objects":
            lambda r, log: " / ".join(f"{r['generation'][k]:.0%}" for k in ("1", "2", "3")),
        "word maps at 16x16 (the latent's side): concentration / own > other / IoU":
            lambda r, log: maps(r, "1.0") if "1.0" in r["attention"] else "(no attention at 16x16)",
        "word maps at 8x8 (1/2 of the latent): concentration / own > other / IoU": lambda r, log: maps(r, "0.5"),
        "word maps at 4x4 (1/4): concentration / own > other / IoU": lambda r, log: maps(r, "0.25"),
        "attention mass at 4x4: bos / words / eos / padding": lambda r, log: " / ".join(
            f"{r['attention']['0.25'][f'share_{k}']:.2g}" for k in ("bos", "words", "eos", "padding")),
        "colour swap, one object: edited mask IoU baseline / P2P / P2P with self-attention at every map":
            lambda r, log: swaps(r, "colour 1 obj", "edited_mask_iou"),
        "colour swap, two objects: edited IoU; other object's IoU (baseline / P2P / P2P + all self)":
            lambda r, log: swaps(r, "colour 2 obj", "edited_mask_iou") + "; " + swaps(r, "colour 2 obj", "other_mask_iou"),
        "shape swap, one object: box IoU baseline / P2P / P2P + all self":
            lambda r, log: swaps(r, "shape 1 obj", "edited_box_iou"),
        "shape swap, two objects: box IoU; other object's IoU":
            lambda r, log: swaps(r, "shape 2 obj", "edited_box_iou") + "; " + swaps(r, "shape 2 obj", "other_mask_iou"),
    }
    lines = ["| measure | " + " | ".join(f"`{name}`" for name in columns) + " |",
             "| --- |" + " --- |" * len(columns)]
    for label, cell in rows.items():
        lines.append(f"| {label} | " + " | ".join(cell(r, log) for r, log in columns.values()) + " |")
    return "\n".join(lines)


RECORDS = Path(__file__).with_name("study")
STUDY_RECORDS = ("toy2-joint-3000", "toy2-frozen-3000", "toy2-frozen-a16-3000", "toy2-frozen-wide-3000",
                 "toy2-frozen-6000")  # the table's columns, in order


def study_columns(names: tuple[str, ...] = STUDY_RECORDS) -> dict[str, tuple[dict, Path | None]]:
    """{NAME: (record, training log)} from toyworld/study/."""
    columns = {}
    for name in names:
        log = RECORDS / f"{name}-train.log"
        columns[name] = (json.loads((RECORDS / f"{name}.json").read_text()), log if log.exists() else None)
    return columns


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--weights", type=Path)
    p.add_argument("--out", type=Path)
    p.add_argument("--diffusion-steps", type=int, help="how long the model trained (written into the record)")
    p.add_argument("--table", action="store_true", help="print STUDY.md's table from the records")
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--quick", action="store_true", help="fewer cases and 25 steps")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if args.table:
        print(table(study_columns()))
        return 0
    if args.weights is None or args.out is None:
        p.error("--weights and --out are required (or --table)")
    torch.set_num_threads(args.threads)
    from ldm import StableDiffusion

    sd = StableDiffusion.from_folder(args.weights)
    steps = 25 if args.quick else 50
    n_gen, n_attn, n_swap = (48, 48, 16) if args.quick else (400, 200, 30)
    report, t0 = {"weights": str(args.weights), "steps": steps, "guidance": args.guidance}, time.time()
    if args.diffusion_steps:
        report["diffusion_steps"] = args.diffusion_steps
    report["vae_psnr"] = vae_psnr(sd)
    report["generation"] = {k: generation(sd, n_gen, k, steps, args.guidance) for k in (1, 2, 3)}
    print("generation", report["generation"], flush=True)
    attention = diagnose(sd, diagnostic_prompts(n_attn), steps=steps, guidance_scale=args.guidance, progress=False)
    report["attention"] = {str(k): v for k, v in summary(attention).items()}
    report["attention_found"] = attention["found"]
    print("attention", json.dumps(report["attention"], indent=1), flush=True)
    methods = {"baseline": ("baseline", {}), "p2p": ("p2p", {}),
               "p2p, self at <= 16x16 px": ("p2p", {"injection": Injection(self_max_size=1.0)})}
    report["swaps"] = {}
    for attribute in ("colour", "shape"):
        for objects in (1, 2):
            cases = scene_swap_cases(n_swap, STUDY_SEED, attribute, objects)
            for name, (method, kwargs) in methods.items():
                rows = evaluate_swaps(sd, cases, method, args.guidance, steps, progress=False, **kwargs)
                report["swaps"][f"{attribute} {objects} obj, {name}"] = summarize(rows)
                print(attribute, objects, name, {k: round(v, 3) for k, v in summarize(rows).items()}, flush=True)
    report["seconds"] = time.time() - t0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out} in {report['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
