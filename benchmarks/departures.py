"""Where this library departs from the official implementations, and what each departure changes.

docs/departures.md lists the departures; this script measures the ones that can be measured
here, each against the official behaviour re-created in the same run on the same cases:

1. Prompt-to-Prompt's self-attention injection selects layers by their map side relative to the
   latent (``self_max_size`` 1/4); the official code by an absolute count of pixels
   (``attn.shape[1] <= 16 ** 2``), which is the same layers on SD at 64x64 latents and *every*
   layer on a toy latent of 8x8 or 16x16. Official on the toy = ``Injection(self_max_size=1.0)``.
2. Local blending dilates its mask by a fraction of the map side (1/16: radius 0 on a 4x4 map);
   the official code always max-pools 3x3 (radius 1 cell). Official = ``LocalBlend(dilation=1/4)``
   on the toy's 4x4 maps (round(4 / 4) = 1).
3. Refinement pairs the pads after the target's eos with the source's pads in order from the eos;
   the official ``get_mapper`` gives target position p >= len(target row) the source position p.
   Measured on refinements that add a word (target longer) and that drop one (target shorter).
4. The cross-attention window: int(f x steps) against the official int(f x (steps + 1)),
   counted over the fractions 0.05, 0.10, ..., 1.00 at the usual step counts (no model).
5. Null-text inversion's learning rate and early-stop bound, written by the fraction i / N of the
   run: compared with the official per-step formulas at 50 steps (no model).
6. Word swap: after the last swapped word the tokens shift with it when its token count changes;
   the official ``get_replacement_mapper_`` stops shifting there. Counted on the toy's swaps and,
   where OpenAI's CLIP merges file is installed, on SD prompts (no model).

Each row prints the measured figures of both behaviours and their difference. The toy-model
rows run ``-n`` cases per attribute (30 by default) at 50 steps and the toy guidance, scored by
the analyzer as in ``benchmarks/p2p_semantics.py``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported: small models lose to extra threads

import numpy as np  # noqa: E402
import torch  # noqa: E402

from editing.null_text import EARLY_STOP, EARLY_STOP_GROWTH, LEARNING_RATE, LEARNING_RATE_DECAY  # noqa: E402
from editing.prompt_to_prompt import Injection, Refinement, step_window  # noqa: E402
from ldm.pipeline import StableDiffusion  # noqa: E402
from toyworld.edit_eval import EditCase, evaluate_edits, swap_cases  # noqa: E402
from toyworld.model import TOY_GUIDANCE_SCALE  # noqa: E402
from toyworld.world import caption, random_scene  # noqa: E402


@dataclass(frozen=True)
class OfficialPadsRefinement(Refinement):
    """Refinement with the official ``get_mapper``'s pads: position p past the target row maps to p."""

    def maps(self, tokenizer, source, targets):
        mapper, alphas = super().maps(tokenizer, source, targets)  # (T, L), (T, L)
        mapper, alphas = mapper.clone(), alphas.clone()
        for k, target in enumerate(targets):
            row = len(tokenizer.encode(target)) + 2  # [bos, tokens, eos]
            mapper[k, row:] = torch.arange(row, mapper.shape[1])
            alphas[k, row:] = 1.0
        return mapper, alphas


def refinement_cases(n: int, seed: int, longer: bool) -> list[EditCase]:
    """``n`` refinements "a <colour> <shape>" -> "a <size> <colour> <shape>" (or the reverse when
    ``longer`` is False), each with its own sampling seed."""
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(n):
        scene = random_scene(rng)
        short, long = caption(scene, ("size", "position", "background")), caption(scene, ("position", "background"))
        source, target = (short, long) if longer else (long, short)
        cases.append(EditCase(source, target, "size", "", scene.size, int(rng.integers(2**31))))
    return cases


def line(name: str, s: dict) -> str:
    return (f"  {name:<34} success {s['success']:>4.0%}  mask IoU {s['mask_iou']:.3f}  box IoU {s['box_iou']:.3f}  "
            f"bg kept {s['background_kept']:>4.0%}")


def compare(sd, cases, ours: dict, official: dict, args) -> None:
    common = dict(guidance_scale=args.guidance, steps=args.steps, progress=False)
    a = evaluate_edits(sd, cases, "p2p", **common, **ours)
    b = evaluate_edits(sd, cases, "p2p", **common, **official)
    sa, sb = a.summary(), b.summary()
    print(line("this library", sa))
    print(line("official behaviour", sb))
    change = (a.images[:, 1] - b.images[:, 1]).abs().mean(dim=(1, 2, 3))  # (n,) per target image
    print(f"  difference (official - ours): success {sb['success'] - sa['success']:+.0%}, mask IoU "
          f"{sb['mask_iou'] - sa['mask_iou']:+.3f}, box IoU {sb['box_iou'] - sa['box_iou']:+.3f}; targets differ by a "
          f"mean |pixel change| of {change.mean():.4f} ({int((change == 0).sum())} of {len(cases)} identical)",
          flush=True)


def window_table() -> None:
    fractions = [round(0.05 * k, 2) for k in range(1, 21)]
    print("\n4. cross-attention window, int(f steps) vs official int(f (steps + 1)), f in 0.05..1.00:")
    for steps in (10, 20, 25, 50, 100):
        differ = []
        for f in fractions:
            ours = step_window("f", f, steps)[1]  # this library's window (0, end)
            official = min(int(f * (steps + 1)), steps)  # the official alphas have steps + 1 rows; steps are used
            if ours != official:
                differ.append(f"{f}: {ours} vs {official}")
        print(f"  {steps:>3} steps: {len(differ)} of {len(fractions)} fractions differ" + (f" ({'; '.join(differ)})"
                                                                                         if differ else ""))


def null_text_table() -> None:
    steps = 50
    i = np.arange(steps)
    ours_lr = LEARNING_RATE * (1 - LEARNING_RATE_DECAY * i / steps)
    official_lr = 1e-2 * (1 - i / 100)
    ours_stop = EARLY_STOP + EARLY_STOP_GROWTH * i / steps
    official_stop = 1e-5 + 2e-5 * i
    print(f"\n5. null-text schedules at {steps} steps: "
          f"max |lr - official| = {np.abs(ours_lr - official_lr).max():.1e}, "
          f"max |bound - official| = {np.abs(ours_stop - official_stop).max():.1e} "
          f"(lr 0.01 -> {ours_lr[-1]:.4f}, bound 1e-5 -> {ours_stop[-1]:.2e})")


def official_replacement_map(tokenizer, source: str, target: str) -> torch.Tensor:
    """(L, L): the official ``get_replacement_mapper_``'s R, re-created: swapped words as here, but
    every position after the last swapped word maps to itself (R[j, j] = 1)."""
    L = tokenizer.context_length
    sw, tw = source.split(" "), target.split(" ")
    swapped = [k for k in range(len(tw)) if sw[k] != tw[k]]
    src = [tokenizer.word_token_indices(source, k) for k in swapped]
    tgt = [tokenizer.word_token_indices(target, k) for k in swapped]
    R = torch.zeros(L, L)
    i = j = cur = 0
    while i < L and j < L:
        if cur < len(src) and src[cur][0] == i:
            if len(src[cur]) == len(tgt[cur]):
                R[src[cur], tgt[cur]] = 1.0
            else:
                for jt in tgt[cur]:
                    R[src[cur], jt] = 1.0 / len(tgt[cur])
            i, j, cur = i + len(src[cur]), j + len(tgt[cur]), cur + 1
        elif cur < len(src):
            R[i, j] = 1.0
            i, j = i + 1, j + 1
        else:
            R[j, j] = 1.0
            i, j = i + 1, j + 1
    return R


SD_SWAPS = [("a cat riding a bicycle", "a capybara riding a bicycle"),
            ("a photo of a zürich street", "a photo of a paris street"),
            ("a dog on the beach at sunset", "a hippopotamus on the beach at sunset"),
            ("a red car in the snow", "a red lamborghini in the snow")]


def word_swap_table(sd, args) -> None:
    from editing.token_maps import replacement_map
    print("\n6. word swap after the last swapped word: shifted with it vs the official no shift")
    cases = [c for attribute in ("shape", "colour") for c in swap_cases(args.n, args.seed, attribute)]
    same = sum(bool(torch.equal(replacement_map(sd.tokenizer, c.source, c.target),
                                official_replacement_map(sd.tokenizer, c.source, c.target))) for c in cases)
    print(f"  toy tokenizer (one token a word): R equal to the official in {same} of {len(cases)} swaps")
    from ldm.clip_tokenizer import CLIPTokenizer
    from weights.model_folder import installed_clip_bpe
    bpe = installed_clip_bpe()
    if bpe is None:
        print("  CLIP tokenizer: OpenAI's merges file is not installed here; not counted")
        return
    clip = CLIPTokenizer.from_bpe_file(bpe)
    for source, target in SD_SWAPS:
        ours, official = replacement_map(clip, source, target), official_replacement_map(clip, source, target)
        differ = int((ours != official).any(0).sum())  # target positions whose source rows differ
        k = next(k for k, (a, b) in enumerate(zip(source.split(" "), target.split(" "))) if a != b)
        n, m = len(clip.encode(source.split(" ")[k])), len(clip.encode(target.split(" ")[k]))
        print(f"  {source!r} -> {target!r} ({n} -> {m} tokens): {differ} of {clip.context_length} target positions "
              f"take other source tokens (the later words, the eos at {len(clip.encode(target)) + 1}, the pads)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="Measure the departures from the official implementations (docs/departures.md).")
    p.add_argument("--weights", type=Path, default=Path("weights/toy"))
    p.add_argument("-n", type=int, default=30, help="cases per row")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=TOY_GUIDANCE_SCALE)
    p.add_argument("--quick", action="store_true", help="6 cases a row (a smoke run, not the figures)")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.n = 6
    if args.n < 1:
        p.error(f"need -n >= 1, got {args.n}")
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    sd = StableDiffusion.from_folder(args.weights)
    side = sd.image_size // sd.latent_factor
    print(f"toy model {args.weights} ({side}x{side} latents), torch {torch.__version__}, {torch.get_num_threads()} "
          f"threads; {args.n} cases a row, {args.steps} steps, guidance {args.guidance}")

    print(f"\n1. self-attention injection sites: self_max_size 1/4 vs the official <= 16**2 pixels (every site on "
          f"a {side}x{side} latent), self_replace_steps 0.4")
    for attribute in ("shape", "colour"):
        print(f" {attribute} swaps:")
        cases = swap_cases(args.n, args.seed, attribute)
        compare(sd, cases, {}, {"injection": Injection(self_max_size=1.0)}, args)

    print("\n2. local blending's dilation: 1/16 of the map side vs the official 3x3 max-pool")
    for attribute in ("shape", "colour"):
        print(f" {attribute} swaps, blending the swapped words:")
        cases = swap_cases(args.n, args.seed, attribute)
        compare(sd, cases, {"blend_swap": True}, {"blend_swap": True, "blend_options": {"dilation": 1 / 4}}, args)

    print("\n3. refinement's pads: in order from the eos vs the official same position")
    for longer, what in ((True, "a word added (a red circle -> a big red circle)"),
                         (False, "a word dropped (a big red circle -> a red circle)")):
        print(f" {what}:")
        cases = refinement_cases(args.n, args.seed, longer)
        compare(sd, cases, {"edit": Refinement()}, {"edit": OfficialPadsRefinement()}, args)

    window_table()
    null_text_table()
    word_swap_table(sd, args)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
