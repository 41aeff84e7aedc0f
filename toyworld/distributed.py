"""Data-parallel training with PyTorch's own engine: ``torchrun --nproc_per_node N -m toyworld.train -- ...``.

(The ``--`` matters: without it torchrun's parser takes the trainer's ``--run`` for an abbreviation
of its own ``--run-path`` and stops with "ambiguous option".)

Every process runs the same script on the same deterministic data stream. At each step all of them
draw the whole batch's randomness (which images, which captions, t and the noise), and process r of
N computes the loss on its shard, items [r B / N, (r + 1) B / N). After the backward pass the
gradients are averaged over the processes,

    g = (1 / N) sum_r grad (1 / (B / N)) sum_{i in shard r} l_i = grad (1 / B) sum_i l_i,

which is the one-process gradient of the whole batch (up to float rounding: the sums are taken in
another order). Every process then takes the same optimiser step, so the weights stay equal
without being sent. Process 0 alone writes checkpoints, logs and the exported model; the others
wait for it where they need its files. The backend is gloo on CPUs, NCCL on CUDA devices.
"""
from __future__ import annotations

import os
from typing import Iterable

import torch
import torch.distributed as dist


def init_from_env(device: str) -> None:
    """Join the process group torchrun describes (WORLD_SIZE > 1 in the environment); else do nothing."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def shard(batch_size: int) -> slice:
    """This process's items of a batch of ``batch_size``; the batch must split evenly."""
    n, r = world_size(), rank()
    if batch_size % n:
        raise ValueError(f"a batch of {batch_size} does not split evenly over {n} processes; "
                         f"choose a batch size divisible by {n}")
    part = batch_size // n
    return slice(r * part, (r + 1) * part)


def average_gradients(parameters: Iterable[torch.nn.Parameter]) -> None:
    """Replace every gradient by its mean over the processes (nothing to do in one process)."""
    n = world_size()
    if n == 1:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    # One exchange of all gradients as a flat vector: a call per tensor (156 of them in the
    # toy VAE) costs more in latency than the exchange itself (DDP buckets gradients the same way).
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= n
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def mean(value: torch.Tensor) -> float:
    """A scalar averaged over the processes (each process's shard loss -> the whole batch's loss)."""
    if world_size() == 1:
        return float(value.detach())
    v = value.detach().clone().reshape(1).float()
    dist.all_reduce(v, op=dist.ReduceOp.SUM)
    return float(v) / world_size()
