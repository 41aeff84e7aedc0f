"""Sampler overhead: the project's DDIM and DDPM loops against diffusers' schedulers, same run.

The model is a trivial function, so the time measured is the sampler's own arithmetic and
bookkeeping per step (what a real U-Net call would hide). Prints the ratio ours / diffusers and
the extra time per step. The project validates its inputs at every step and keeps the schedule in
float64; both cost microseconds, which is the price of its clear errors.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from diffusers import DDIMScheduler, DDPMScheduler

from ddim import ddim_sample
from ddpm import NoiseSchedule, ddpm_sample

SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1, clip_sample=False)


def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return 0.5 * x


def diffusers_loop(scheduler, x: torch.Tensor, generator: torch.Generator, **step_kwargs) -> torch.Tensor:
    for t in scheduler.timesteps:
        x = scheduler.step(model(x, t), t, x, generator=generator, **step_kwargs).prev_sample
    return x


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="3 repeats")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the sampler's own overhead)")
    args = parser.parse_args()
    repeats = 3 if args.quick else args.repeats
    torch.set_num_threads(args.threads)
    sched = NoiseSchedule.from_name("scaled_linear")
    shape = (2, 4, 64, 64)  # SD's 512x512 latent, batch 2
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    ddim_ref = DDIMScheduler(set_alpha_to_one=False, **SD)
    ddim_ref.set_timesteps(50)
    ddpm_ref = DDPMScheduler(**SD)
    ddpm_ref.set_timesteps(50)
    cases = {
        "DDIM 50 steps, eta 0": (
            lambda: ddim_sample(model, shape, sched, 50, x_T=x, progress=False),
            lambda: diffusers_loop(ddim_ref, x, torch.Generator().manual_seed(1), eta=0.0)),
        "DDPM 50 steps": (
            lambda: ddpm_sample(model, shape, sched, 50, steps_offset=1, x_T=x, progress=False,
                                generator=torch.Generator().manual_seed(1)),
            lambda: diffusers_loop(ddpm_ref, x, torch.Generator().manual_seed(1))),
    }
    print(f"{'case':24s} {'ours (ms)':>10s} {'diffusers (ms)':>15s} {'ratio':>7s} {'extra per step (ms)':>20s}")
    for name, (ours, ref) in cases.items():
        ours(), ref()  # warm-up
        t_ours, t_ref = [], []
        for _ in range(repeats):  # interleaved, so load changes hit both alike
            t_ours.append(timed(ours, 1))
            t_ref.append(timed(ref, 1))
        a, b = statistics.median(t_ours), statistics.median(t_ref)
        print(f"{name:24s} {a * 1e3:10.1f} {b * 1e3:15.1f} {a / b:7.2f} {(a - b) / 50 * 1e3:20.2f}")
    print("(an SD v1 U-Net call takes of the order of a second on a CPU: the sampler's own cost is noise)")


if __name__ == "__main__":
    main()
