"""U-Net forward time: ours against diffusers' UNet2DConditionModel with the same weights, same run.

SD v1.5 config (860M parameters), fp32 on the CPU, batch 2, 4x32x32 latent, 77x768 context,
``torch.no_grad``. The variants run interleaved (one of each per round, in a rotating order,
after ``--warmup`` rounds) so that a busy machine slows all of them alike; the table shows, over
``--repeats`` rounds, the median and minimum wall time, the median process CPU time, and each as a
ratio to diffusers (goal: ours / diffusers <= 1.0).

    ours              no editor: attention through scaled_dot_product_attention, as diffusers'
                      default AttnProcessor2_0
    ours + probs      an editor that wants every probability map: softmax materialised at all
                      32 attention sites (what Prompt-to-Prompt pays for recording all maps)

    .venv/bin/python benchmarks/unet_speed.py --repeats 5      (about 20 s a round on 2 busy cores)
"""
from __future__ import annotations

import argparse
import gc
import statistics
import time

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0
from tqdm import tqdm

from unet import Editor, UNet, UNetConfig
from weights.checks import load_checked
from weights.diffusers_layout import diffusers_to_project


class AllProbs(Editor):
    """Wants every attention probability map and returns it unchanged."""

    def wants_probs(self, site) -> bool:
        return True


def random_models(config: UNetConfig, seed: int) -> tuple[UNet2DConditionModel, UNet]:
    """diffusers' U-Net with seeded random weights, and ours loaded from it (no double init)."""
    settings = config.to_diffusers()
    settings.pop("_class_name")
    with torch.device("meta"):
        reference = UNet2DConditionModel(**settings)
        ours = UNet(config)
    reference = reference.to_empty(device="cpu").eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in reference.named_parameters():
            if p.ndim >= 2:  # weights: variance 1 / fan_in keeps activations O(1)
                p.normal_(0.0, p[0].numel() ** -0.5, generator=generator)
            elif name.endswith("weight"):  # norm scales
                p.normal_(1.0, 0.1, generator=generator)
            else:  # biases
                p.normal_(0.0, 0.1, generator=generator)
    reference.set_attn_processor(AttnProcessor2_0())  # diffusers' default, fused SDPA: a fair race
    ours = ours.to_empty(device="cpu").eval()
    load_checked(ours, diffusers_to_project(reference.state_dict()), "diffusers U-Net")
    return reference, ours


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (median reported)")
    parser.add_argument("--quick", action="store_true", help="2 timed rounds (make bench --quick)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=32, help="latent height and width")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.quick:
        args.repeats = 2
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.repeats < 1 or args.warmup < 0:
        raise ValueError(f"need --repeats >= 1 and --warmup >= 0, got {args.repeats} and {args.warmup}")

    config = UNetConfig.sd_v1()
    reference, ours = random_models(config, args.seed)
    generator = torch.Generator().manual_seed(args.seed + 1)
    x = torch.randn(args.batch, config.in_channels, args.size, args.size, generator=generator)
    t = torch.tensor([500] * args.batch)
    context = torch.randn(args.batch, 77, config.cross_attention_dim, generator=generator)

    variants = {
        "diffusers": lambda: reference(x, t, context).sample,
        "ours": lambda: ours(x, t, context),
        "ours + probs": lambda: ours(x, t, context, editor=AllProbs()),
    }
    names = list(variants)
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}  # process CPU time, all threads
    with torch.no_grad():
        for i in tqdm(range(args.warmup + args.repeats), desc="rounds"):
            order = names[i % len(names):] + names[:i % len(names)]  # rotate: no variant always goes first
            for name in order:
                gc.collect()
                start, start_cpu = time.perf_counter(), time.process_time()
                variants[name]()
                if i >= args.warmup:
                    wall[name].append(time.perf_counter() - start)
                    cpu[name].append(time.process_time() - start_cpu)

    med = statistics.median
    print(f"\nU-Net forward, SD v1 config, fp32 CPU ({torch.get_num_threads()} threads), "
          f"batch {args.batch}, latent {args.size}x{args.size}, {args.repeats} rounds")
    print(f"{'':14} {'wall s':>16} {'CPU s':>7}   {'ratio to diffusers':^26}")
    print(f"{'variant':<14} {'median':>8} {'min':>7} {'median':>7}   {'wall med':>8} {'wall min':>8} {'CPU med':>8}")
    for name in names:
        w, c = wall[name], cpu[name]
        print(f"{name:<14} {med(w):>8.3f} {min(w):>7.3f} {med(c):>7.3f}   {med(w) / med(wall['diffusers']):>8.3f} "
              f"{min(w) / min(wall['diffusers']):>8.3f} {med(c) / med(cpu['diffusers']):>8.3f}")
    print("On a shared machine other processes only ever add time: the wall minimum and the CPU time\n"
          "(which leaves out time spent descheduled) are the steadier comparisons.")

if __name__ == "__main__":
    main()
