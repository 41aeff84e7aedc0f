"""Prompt-to-Prompt's price: one edit against plain sampling of the same batch, same run (issue #6).

The batch is a source and one target prompt from one starting latent, DDIM with classifier-free
guidance, so every step is one U-Net call of 2B = 4 items in both runs. The runs are interleaved
(one of each variant per round, in a rotating order, after a warm-up round) and the table shows,
per edit, the median wall time of the plain run and of the edit, their ratio (goal <= 1.15), the
ratio of the wall minima and of the median process CPU time (steadier on a shared machine), and
memory:

    store MiB    ``store.nbytes`` of the edit's AttentionStore after the run (measured)
    probs MiB    one (2B, heads, N, M) fp32 softmax at the largest site whose probabilities the
                 edit materialises (computed from shapes: torch's CPU allocations are invisible to
                 tracemalloc). While that site is edited Attention.forward holds ~3 such maps at
                 once (the scores, the softmax, the edited copy from torch.cat); the fused
                 scaled_dot_product_attention of plain sampling holds none.
    sites/step   attention sites per step, averaged over the 50 steps, that materialise probs

Edits (the paper's SD defaults: word swap, cross-attention injected for the first 0.8 of the
steps, self-attention at maps of side <= 1/4 of the latent's for the first 0.4):

    replace      prompt_to_prompt's default editor
    + blend      local blending of the swapped words (its store keeps the cross maps of one size)
    + store      an AttentionStore(2) with its defaults (every cross map, self maps of side <= 1/2)

Toy model (weights/toy, 8x8 latent, guidance 5.0, 50 steps): "loop" rows time ``sd.denoise`` alone
(text encoded once beforehand, no decode, the editor built inside the timing); the "prompt to
pixels" row times ``prompt_to_prompt()`` against ``text_to_image()`` with the same latent, text
encoding and VAE decode included in both.

SD v1.5 configuration with random weights (860M-parameter U-Net, CLIP-L text encoder, 32x32 latent,
fp32 CPU): a step costs 10-15 s here, so only ``--sd-steps`` steps (loop only). The injection windows are
fractions of the steps, so 3 steps give one step of each phase (cross + self edited, cross only,
nothing edited) where 50 steps have 20 : 20 : 10; the table's ratio is that of the short run, and
a 50-step estimate weights each phase's median step time (timed by a pass-through editor that
both plain and edit runs wear) by its number of steps in a 50-step edit.

    .venv/bin/python benchmarks/p2p_edit.py --threads 1       (about 12 minutes: SD ~8 of them)
    .venv/bin/python benchmarks/p2p_edit.py --quick --no-sd   (toy only, a smoke run)
"""
from __future__ import annotations

import argparse
import gc
import importlib.util
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from editing.attention_store import AttentionStore  # noqa: E402
from editing.prompt_to_prompt import LocalBlend, PromptToPrompt, prompt_to_prompt  # noqa: E402
from ldm.pipeline import StableDiffusion  # noqa: E402
from unet.editor import Editor  # noqa: E402

GOAL = 1.15
TOY_PROMPTS = ["a big red circle on a blue background", "a big red square on a blue background"]
TOY_BLEND = ["circle", "square"]
SD_PROMPTS = ["a photo of a cat riding a bicycle", "a photo of a dog riding a bicycle"]
SD_BLEND = ["cat", "dog"]
EDITS = ("replace", "+ blend", "+ store")


class StepClock(Editor):
    """Passes every call on to ``inner`` and notes each sampling step's wall time (begin_step to end_step)."""

    def __init__(self, inner: Editor) -> None:
        self.inner, self.seconds, self.start = inner, [], 0.0

    def begin_step(self, i, t):
        self.start = time.perf_counter()
        self.inner.begin_step(i, t)

    def end_step(self, latents, i, t):
        latents = self.inner.end_step(latents, i, t)
        self.seconds.append(time.perf_counter() - self.start)
        return latents

    def wants_probs(self, site):
        return self.inner.wants_probs(site)

    def attention_qk(self, q, k, site):
        return self.inner.attention_qk(q, k, site)

    def attention_probs(self, probs, site):
        return self.inner.attention_probs(probs, site)

    def resnet_residual(self, h, site):
        return self.inner.resnet_residual(h, site)


def edit_kwargs(name: str, batch: int, blend: list[str]) -> dict:
    """The editor options of one row (a fresh store each run)."""
    return {"replace": {}, "+ blend": {"blend": LocalBlend(blend)}, "+ store": {"store": AttentionStore(batch)}}[name]


def probs_profile(sd: StableDiffusion, editor: PromptToPrompt, steps: int) -> tuple[float, float, list[frozenset]]:
    """(MiB of the largest materialised (2B, heads, N, M) fp32 softmax, mean sites per step, each
    step's phase: the materialising sites and whether each is edited) from the editor's
    ``wants_probs`` / ``edits`` and the sites' shapes."""
    h = w = sd.image_size // sd.latent_factor
    L, U = sd.tokenizer.context_length, 2 * editor.batch
    largest, counts, phases = 0, [], []
    for i in range(steps):
        editor.begin_step(i, 0)
        chosen = [s for s in sd.unet.sites if s.is_attention and editor.wants_probs(s)]
        for s in chosen:
            heads = sd.unet.get_submodule(s.name).heads
            N = (h // s.downsample) * (w // s.downsample)
            largest = max(largest, U * heads * N * (L if s.kind == "cross" else N) * 4)  # bytes of (U, heads, N, M)
        counts.append(len(chosen))
        phases.append(frozenset((s.name, editor.edits(s, i)) for s in chosen))  # what each site does this step
    return largest / 2**20, sum(counts) / steps, phases


def interleave(variants: dict[str, Callable[[], object]], rounds: int, warmup: int = 1):
    """Wall and CPU seconds of each variant over ``rounds`` rotated rounds, and each one's last result."""
    names = list(variants)
    wall = {n: [] for n in names}
    cpu = {n: [] for n in names}
    last = {}
    for r in range(warmup + rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            gc.collect()
            start, start_cpu = time.perf_counter(), time.process_time()
            last[name] = variants[name]()
            if r >= warmup:
                wall[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
        print(f"  round {r + 1}/{warmup + rounds}{' (warm-up)' if r < warmup else ''} done", flush=True)
    return wall, cpu, last


def row(model: str, edit: str, steps: int, wall, cpu, plain: str, name: str, store_mib: float, probs: tuple) -> str:
    med = statistics.median
    ratio = med(wall[name]) / med(wall[plain])
    return (f"{model:<5} {edit:<26} {steps:>5} {med(wall[plain]):>8.3f} {med(wall[name]):>8.3f} {ratio:>6.3f} "
            f"{min(wall[name]) / min(wall[plain]):>6.3f} {med(cpu[name]) / med(cpu[plain]):>6.3f} "
            f"{store_mib:>9.3f} {probs[0]:>9.3f} {probs[1]:>6.1f}   <= {GOAL} {'met' if ratio <= GOAL else 'MISSED'}")


HEADER = (f"{'model':<5} {'edit':<26} {'steps':>5} {'plain s':>8} {'edit s':>8} {'ratio':>6} {'min':>6} {'CPU':>6} "
          f"{'store MiB':>9} {'probs MiB':>9} {'sites':>6}   goal")


def toy_table(args: argparse.Namespace) -> list[str]:
    from toyworld.model import TOY_GUIDANCE_SCALE

    sd = StableDiffusion.from_folder(args.weights)
    s, steps, B = TOY_GUIDANCE_SCALE, args.steps, len(TOY_PROMPTS)
    z = torch.randn(1, 4, sd.image_size // 8, sd.image_size // 8, generator=torch.Generator().manual_seed(args.seed))
    z2 = z.expand(B, -1, -1, -1).clone()  # (B, 4, h, w): every prompt starts from z
    cond, uncond = sd.encode_prompts(TOY_PROMPTS), sd.encode_prompts([""])  # (B, 77, D), (1, 77, D)

    def loop(name: str | None):
        editor = None if name is None else PromptToPrompt(TOY_PROMPTS, sd.tokenizer, sd.unet.sites, steps,
                                                          **edit_kwargs(name, B, TOY_BLEND))
        return editor, sd.denoise(z2, cond, uncond, steps=steps, guidance_scale=s, editor=editor, progress=False)

    variants = {"plain": lambda: loop(None), **{n: (lambda n=n: loop(n)) for n in EDITS},
                "plain, prompt to pixels": lambda: sd.text_to_image(TOY_PROMPTS, guidance_scale=s, steps=steps,
                                                                    latents=z2, progress=False),
                "replace, prompt to pixels": lambda: prompt_to_prompt(sd, TOY_PROMPTS, guidance_scale=s, steps=steps,
                                                                      latents=z, progress=False)}
    print(f"toy model {args.weights}: {TOY_PROMPTS}, guidance {s}, {steps} steps, {args.repeats} rounds "
          f"(+1 warm-up) of {len(variants)} variants", flush=True)
    wall, cpu, last = interleave(variants, args.repeats)
    rows = []
    for name in EDITS:
        editor = last[name][0]
        store = editor.store.nbytes / 2**20 if editor.store is not None else 0.0
        fresh = PromptToPrompt(TOY_PROMPTS, sd.tokenizer, sd.unet.sites, steps, **edit_kwargs(name, B, TOY_BLEND))
        rows.append(row("toy", f"{name} (loop)", steps, wall, cpu, "plain", name, store,
                        probs_profile(sd, fresh, steps)[:2]))
    fresh = PromptToPrompt(TOY_PROMPTS, sd.tokenizer, sd.unet.sites, steps)  # prompt_to_prompt's defaults
    rows.append(row("toy", "replace, prompt to pixels", steps, wall, cpu, "plain, prompt to pixels",
                    "replace, prompt to pixels", 0.0, probs_profile(sd, fresh, steps)[:2]))
    _, plain_z0 = last["plain"]
    drift = (last["replace"][1][0] - plain_z0[0]).abs().max().item()
    rows.append(f"      (source row unchanged by the edit: max |z0_edit - z0_plain| = {drift:.1e}, fused vs explicit "
                f"softmax rounding only)")
    return rows


def clip_tokenizer_or_words():
    """The CLIP BPE tokenizer from OpenAI's merges file ($CLIP_BPE_VOCAB or the openai-clip / open_clip
    package, as tests/test_tokenizer.py finds it); else a word tokenizer over the prompts' words."""
    from ldm.clip_tokenizer import CLIPTokenizer
    from ldm.tokenizer import WordTokenizer

    candidates = [Path(os.environ["CLIP_BPE_VOCAB"])] if os.environ.get("CLIP_BPE_VOCAB") else []
    for package in ("clip", "open_clip"):
        spec = importlib.util.find_spec(package)
        candidates += [Path(f) / "bpe_simple_vocab_16e6.txt.gz" for f in (spec.submodule_search_locations or [])] if spec else []
    for path in candidates:
        if path.is_file():
            return CLIPTokenizer.from_bpe_file(path), f"CLIP BPE ({path.name})"
    return WordTokenizer(sorted({w for p in SD_PROMPTS for w in p.split()})), "word tokenizer (no CLIP merges file found)"


def sd_v1_random(seed: int):
    """SD v1.5's networks with random weights (benchmarks/_random_sd.py) at 256x256: a 32x32 latent."""
    from _random_sd import sd_v1_random as build

    tokenizer, kind = clip_tokenizer_or_words()
    return build(tokenizer, seed, image_size=256), kind


def sd_table(args: argparse.Namespace) -> list[str]:
    sd, kind = sd_v1_random(args.seed)
    steps, B, s = args.sd_steps, len(SD_PROMPTS), 7.5
    z = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(args.seed))  # (1, 4, 32, 32)
    z2 = z.expand(B, -1, -1, -1).clone()  # (B, 4, 32, 32)
    cond, uncond = sd.encode_prompts(SD_PROMPTS), sd.encode_prompts([""])  # (B, 77, 768), (1, 77, 768)

    rounds = {name: [] for name in ("plain", *EDITS)}  # per variant, per round: the step times

    def loop(name: str | None):
        inner = Editor() if name is None else PromptToPrompt(SD_PROMPTS, sd.tokenizer, sd.unet.sites, steps,
                                                             **edit_kwargs(name, B, SD_BLEND))
        clock = StepClock(inner)  # plain wears it too: the same pass-through calls in both
        sd.denoise(z2, cond, uncond, steps=steps, guidance_scale=s, editor=clock, progress=False)
        rounds["plain" if name is None else name].append(clock.seconds)
        return inner

    print(f"\nSD v1.5 configuration, random weights, tokenizer: {kind}; {SD_PROMPTS}, latent 4x32x32, guidance {s}, "
          f"{steps} steps, {args.sd_repeats} rounds of {1 + len(EDITS)} variants (warm-up: one plain step)", flush=True)
    sd.denoise(z2, cond, uncond, steps=steps, start_step=steps - 1, guidance_scale=s, progress=False)
    variants = {"plain": lambda: loop(None), **{n: (lambda n=n: loop(n)) for n in EDITS}}
    wall, cpu, last = interleave(variants, args.sd_repeats, warmup=0)
    step_s = {n: [statistics.median(x) for x in zip(*r)] for n, r in rounds.items()}  # median over rounds, per step
    plain_step = statistics.median(step_s["plain"])
    rows, estimates = [], []
    for name in EDITS:
        store = last[name].store.nbytes / 2**20 if last[name].store is not None else 0.0
        def make(n: int) -> PromptToPrompt:  # the row's editor for n steps
            return PromptToPrompt(SD_PROMPTS, sd.tokenizer, sd.unet.sites, n, **edit_kwargs(name, B, SD_BLEND))

        mib, per_step, full = probs_profile(sd, make(50), 50)
        rows.append(row("SD", f"{name} (loop)", steps, wall, cpu, "plain", name, store, (mib, per_step)))
        by_phase: dict[frozenset, list[float]] = {}
        for phase, seconds in zip(probs_profile(sd, make(steps), steps)[2], step_s[name]):
            by_phase.setdefault(phase, []).append(seconds)  # steps that do the same at the same sites cost the same
        if all(p in by_phase for p in full):
            est = sum(statistics.mean(by_phase[p]) for p in full) / (50 * plain_step)
            estimates.append(f"{name} {est:.3f}")
        else:
            estimates.append(f"{name} n/a (a phase of the 50-step edit is not among the {steps} steps run)")
    rows.append(f"      SD 50-step estimate, edit / plain, from per-phase median step times: {'; '.join(estimates)}")
    rows.append("      SD median step times, s: " + "; ".join(
        f"{n} " + " ".join(f"{x:.2f}" for x in step_s[n]) for n in step_s))
    return rows  # sd and its 4 GB go with this frame


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Prompt-to-Prompt edit against plain sampling of the same batch.")
    p.add_argument("--weights", type=Path, default=Path("weights/toy"))
    p.add_argument("--steps", type=int, default=50, help="toy model sampling steps")
    p.add_argument("--repeats", type=int, default=21, help="toy model timed rounds (median reported)")
    p.add_argument("--sd-steps", type=int, default=3)
    p.add_argument("--sd-repeats", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="3 toy rounds; SD: 1 round of 2 steps")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-sd", action="store_true", help="skip the SD v1.5-size part")
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.sd_repeats, args.sd_steps = 3, 1, 2
    if args.repeats < 1 or args.sd_repeats < 1 or args.steps < 1 or args.sd_steps < 1:
        p.error("--steps, --repeats, --sd-steps and --sd-repeats must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32 CPU")
    rows = toy_table(args)
    if not args.no_sd:
        rows += sd_table(args)
        gc.collect()
    print("\nPrompt-to-Prompt (source + 1 target, CFG) against plain sampling of the same batch; medians of the "
          "rounds; ratio = edit / plain (min: of the minima, CPU: of the median CPU times)")
    print(HEADER)
    for line in rows:
        print(line)
    print("store MiB measured (store.nbytes); probs MiB computed from shapes: one (2B, heads, N, M) fp32 softmax at the\n"
          "largest materialising site, of which Attention.forward holds ~3 at once while editing it; sites = attention\n"
          "sites per step that materialise probabilities, averaged over a 50-step edit. On a shared machine other\n"
          "processes only ever add time: the min and CPU ratios are the steadier comparisons.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
