"""Does Prompt-to-Prompt do what it claims on the toy model? The analyzer's verdict (issue #6).

Word swaps (toyworld/edit_eval.py): ``-n`` random scenes per attribute, captioned "a <colour> <shape>"
(``--layout free``: size, position and background left to the model) or "a <size> <colour> <shape>
<position>" (``--layout named``), the target caption with the shape's or the colour's word swapped,
each case from its own seed's z_T. Three rows per swap, all from the same z_T per case:

    baseline      the source and the target prompt sampled with no editor (the reference)
    P2P           prompt_to_prompt with its defaults (cross-attention injected for 0.8 of the steps)
    P2P + blend   the same with local blending of the swapped words [old, new]

and the columns: success (the analyzer finds every attribute the target caption names), source ok
(the source shows its caption: an edit from a poor start), mean pixel-mask IoU and extent-box IoU
of source vs target (box IoU is the layout measure for shape swaps: a circle and a square of one
extent have mask IoU pi/4), mean background change (mean |difference| outside both dilated
masks, on [0, 1]), and the share of cases whose background is kept (change < BACKGROUND_KEPT).
"vs baseline" lines give each method's difference from the baseline measured in the same run.

Real images: ``--real-n`` rendered scenes the model never trained on (ToyDataset seed
``--real-seed``; training used 1), inverted under their full true caption by null-text inversion,
by negative-prompt inversion and (the reference) by plain DDIM inversion with the empty prompt as
the null text, then edited with one word swapped: the reconstruction's PSNR against the render,
whether the analyzer reads the render's five attributes in the reconstruction, and whether it
reads the edited scene's five in the edit.

    .venv/bin/python benchmarks/p2p_semantics.py --threads 1            (30 cases, 8 real images: ~12 min)
    .venv/bin/python benchmarks/p2p_semantics.py --threads 1 --layout named --no-real   (~6 min)
    .venv/bin/python benchmarks/p2p_semantics.py --quick --threads 1    (a smoke run, not the figures)
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ldm.pipeline import StableDiffusion  # noqa: E402
from toyworld.edit_eval import (BACKGROUND_KEPT, LAYOUT_FREE, evaluate_edits, real_image_edits,  # noqa: E402
                                swap_cases)
from toyworld.model import TOY_GUIDANCE_SCALE  # noqa: E402

LAYOUTS = {"free": LAYOUT_FREE, "named": ("background",)}
ROWS = {"baseline": ("baseline", False), "P2P": ("p2p", False), "P2P + blend": ("p2p", True)}
UNSEEN_SEED = 31415  # any ToyDataset seed but training's 1
COLUMNS = ("success", "source_ok", "mask_iou", "box_iou", "background_change", "background_kept")


def swap_table(sd: StableDiffusion, args: argparse.Namespace, attribute: str) -> None:
    cases = swap_cases(args.n, args.seed, attribute, omit=LAYOUTS[args.layout])
    print(f"\n{attribute} swap: {args.n} cases (seed {args.seed}), e.g. {cases[0].source!r} -> {cases[0].target!r}")
    print(f"{'method':<12} {'success':>8} {'source ok':>9} {'mask IoU':>9} {'box IoU':>8} {'bg change':>10} "
          f"{'bg kept':>8} {'s/case':>7}")
    summaries = {}
    for name, (method, blend) in ROWS.items():
        start = time.perf_counter()
        scores = evaluate_edits(sd, cases, method, blend_swap=blend, guidance_scale=args.guidance, steps=args.steps,
                                progress=False)
        seconds = (time.perf_counter() - start) / len(cases)
        s = summaries[name] = scores.summary()
        print(f"{name:<12} {s['success']:>8.0%} {s['source_ok']:>9.0%} {s['mask_iou']:>9.3f} {s['box_iou']:>8.3f} "
              f"{s['background_change']:>10.4f} {s['background_kept']:>8.0%} {seconds:>7.2f}", flush=True)
    for name in ("P2P", "P2P + blend"):
        d = {k: summaries[name][k] - summaries["baseline"][k] for k in COLUMNS}
        print(f"{name + ' vs baseline':<24} success {d['success']:+.0%}, mask IoU {d['mask_iou']:+.3f}, "
              f"box IoU {d['box_iou']:+.3f}, bg change {d['background_change']:+.4f}, "
              f"bg kept {d['background_kept']:+.0%}")


def real_table(sd: StableDiffusion, args: argparse.Namespace) -> None:
    print(f"\nreal images: {args.real_n} unseen renders (ToyDataset seed {args.real_seed}), full true captions, "
          f"{args.steps} steps, guidance {args.guidance}; edit = prompt_to_prompt defaults on the inversion")
    print(f"{'inversion':<16} {'swap':<7} {'recon PSNR':>10} {'recon ok':>9} {'edit success':>12} {'mask IoU':>9} "
          f"{'box IoU':>8} {'bg kept':>8} {'s/image':>8}")
    for attribute in ("shape", "colour"):
        for inversion in ("null-text", "negative-prompt", "ddim"):
            start = time.perf_counter()
            edits = real_image_edits(sd, args.real_n, args.real_seed, attribute, inversion,
                                     guidance_scale=args.guidance, steps=args.steps, progress=False)
            seconds = (time.perf_counter() - start) / args.real_n
            s = edits.summary()
            print(f"{inversion:<16} {attribute:<7} {s['psnr']:>10.2f} {s['recon_ok']:>9.0%} {s['success']:>12.0%} "
                  f"{s['mask_iou']:>9.3f} {s['box_iou']:>8.3f} {s['background_kept']:>8.0%} {seconds:>8.2f}",
                  flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Prompt-to-Prompt's semantics on the toy model, judged by the analyzer.")
    p.add_argument("--weights", type=Path, default=Path("weights/toy"))
    p.add_argument("-n", type=int, default=30, help="word-swap cases per attribute")
    p.add_argument("--seed", type=int, default=0, help="seed of the cases (scenes, swaps, sampling seeds)")
    p.add_argument("--layout", choices=tuple(LAYOUTS), default="free",
                   help="free: captions 'a <colour> <shape>'; named: size and position named too")
    p.add_argument("--real-n", type=int, default=8, help="unseen rendered images per real-image row")
    p.add_argument("--real-seed", type=int, default=UNSEEN_SEED, help="ToyDataset seed of the real images (not 1)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=TOY_GUIDANCE_SCALE)
    p.add_argument("--no-real", action="store_true", help="skip the real-image rows")
    p.add_argument("--quick", action="store_true", help="6 cases and 2 real images (a smoke run, not the figures)")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.real_n = 6, 2
    if args.n < 1 or args.real_n < 1 or args.real_seed == 1:
        p.error(f"need -n >= 1, --real-n >= 1 and a --real-seed other than training's 1, "
                f"got {args.n}, {args.real_n}, {args.real_seed}")
    if args.threads:
        torch.set_num_threads(args.threads)
    sd = StableDiffusion.from_folder(args.weights)
    print(f"toy model {args.weights}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{args.steps} steps, guidance {args.guidance}, layout {args.layout!r}; background kept: change < {BACKGROUND_KEPT}")
    start = time.perf_counter()
    for attribute in ("shape", "colour"):
        swap_table(sd, args, attribute)
    if not args.no_real:
        real_table(sd, args)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
