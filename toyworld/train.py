"""Train the toy Stable Diffusion: ``python -m toyworld.train`` (CPU by default, CUDA when asked).

Two stages, as the LDM paper trains SD (Rombach et al. 2022, section 3):

1. The autoencoder alone, on rendered images x in [-1, 1] (the datasets give [0, 1]; the VAE
   reads 2 x - 1, as SD's does):

       L_VAE = mean |x - D(z)| + mean (x - D(z))^2 + w_KL KL(q(z|x) || N(0, I)) / (3 H W),   z ~ q(z|x)

   (SD adds a perceptual and an adversarial term; the toy world's flat colours and sharp edges are
   reconstructed well without them.) w_KL = 1e-6 per image pixel, SD's weight relative to its
   pixel loss, so the latents are barely regularised; afterwards the latent scale is set to
   1 / std of the latents over fresh images (LDM appendix G), the toy model's 0.18215.

2. The text encoder and the U-Net together, on the frozen autoencoder's latents z_0 = scale * z
   with the plain epsilon loss L_simple (Ho et al. 2020, Eq. 14) and SD's noise schedule. With
   probability 0.1 the caption is replaced by the empty prompt "", so the same network learns the
   unconditional eps(z_t) used by classifier-free guidance (Ho & Salimans 2022, Algorithm 1).
   An exponential moving average of the weights (decay 0.999) is what ships.

Every stage checkpoints to ``--run`` (one safetensors file a stage, toyworld/checkpoint.py) and resumes
from there: run the same command again after an interruption. The data are a deterministic
function of the seed and the step, so a resumed run sees what an uninterrupted one would.
At the end the EMA weights go to ``--out`` (default weights/toy/) in the project's model-folder
layout, with the loss history and a figure of the loss curves.

The defaults are the recipe of the shipped weights/toy/: VAE 2500 steps of 16 images (lr 1e-3),
then 7000 steps of 64 latents (lr 1e-3, warm-up 200, cosine to 1e-4), 40000 encoded images.
About 2 hours on 2 CPU cores. (The shipped run was started with 5000 diffusion steps and extended
to 7000 at step 2250, so its learning rate after step 2250 follows the 7000-step cosine from
there; runs/toy/train.log records it. A fresh run of the defaults differs by that detail.)
"""
from __future__ import annotations

import argparse
import copy
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ddpm.schedule import NoiseSchedule
from ddpm.training import diffusion_loss
from ldm.clip_text import CLIPTextModel
from ldm.cli.common import device_name
from ldm.vae import AutoencoderKL
from unet.model import UNet
from weights.clip_loading import save_text_encoder
from weights.io import write_json
from weights.model_folder import manifest
from weights.unet_loading import save_unet
from weights.vae_loading import save_vae

from . import distributed
from . import checkpoint
from .checkpoint import load_checkpoint, save_checkpoint
from .evaluate import psnr_db
from .model import RECIPES, TOY_IMAGE_SIZE, TOY_SCHEDULE, ToyRecipe
from .render import ToyDataset
from .scenes import MultiScene, SceneDataset, SceneObject, random_description
from .world import Scene, random_caption

KL_WEIGHT = 1e-6
CAPTION_DROPOUT = 0.1
EMA_DECAY = 0.999
TRAIN_SEED, EVAL_SEED = 1, 999  # ToyDataset seeds: training images, held-out images for the logs


DEFAULT_RECIPE = RECIPES["toy1"]


def dataset(recipe: ToyRecipe, seed: int) -> ToyDataset | SceneDataset:
    """The recipe's world as a seeded dataset of (image, caption, scene)."""
    return ToyDataset(seed) if recipe.world == "single" else SceneDataset(seed)


def training_caption(recipe: ToyRecipe, scene, rng: np.random.Generator) -> str:
    """A caption of ``scene`` with attributes left out at random (the world's own rule)."""
    return random_caption(scene, rng) if recipe.world == "single" else random_description(scene, rng)


def scene_to_json(scene) -> dict:
    if isinstance(scene, Scene):
        return {"kind": "single", **{k: getattr(scene, k) for k in scene.__dataclass_fields__}}
    return {"kind": "scene", "background": scene.background, "phase": scene.phase,
            "objects": [{k: getattr(o, k) for k in o.__dataclass_fields__} for o in scene.objects]}


def scene_from_json(d: dict):
    d = dict(d)
    if d.pop("kind") == "single":
        return Scene(**d)
    return MultiScene(tuple(SceneObject(**o) for o in d["objects"]), d["background"], d["phase"])


def log_line(run: Path, text: str) -> None:
    if not distributed.is_main():
        return
    stamp = time.strftime("%H:%M:%S")
    line = f"[{stamp}] {text}"
    print(line, flush=True)
    with open(run / "train.log", "a", encoding="utf-8") as f:
        f.write(line + "\n")


def learning_rate(step: int, steps: int, peak: float, warmup: int = 200) -> float:
    """Linear warm-up to ``peak``, then a cosine decay to peak / 10."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


# Stage 1: the autoencoder -------------------------------------------------------------------
def vae_loss(vae: AutoencoderKL, x: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The stage-1 loss of the module docstring on images x, with z = mean + std * noise."""
    posterior = vae.encode(x)
    z = posterior.mean + posterior.std * noise.to(x.device)
    x_hat = vae.decode(z)  # (B, 3, 64, 64)
    rec = (x - x_hat).abs().mean() + (x - x_hat).square().mean()
    kl = posterior.kl().mean() / x[0].numel()  # per image, per pixel value
    return rec + KL_WEIGHT * kl, x_hat


def train_vae(run: Path, steps: int, batch_size: int, lr: float, device: str, every: int,
              until: int | None = None, eval_images: int = 256, recipe: ToyRecipe = DEFAULT_RECIPE) -> AutoencoderKL:
    """Stage 1 for ``steps`` steps (or only up to step ``until``, to split a run), resuming from ``run/vae``;
    the log's held-out PSNR is over ``eval_images`` images."""
    if isinstance(eval_images, bool) or not isinstance(eval_images, int) or eval_images < 1:
        raise ValueError(f"eval_images must be a positive int, got {eval_images!r}")
    torch.manual_seed(0)
    vae = AutoencoderKL(recipe.vae).to(device)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    ckpt, meta = run / "vae", {"step": 0, "history": {"step": [], "loss": [], "eval_psnr": []}}
    if checkpoint.exists(ckpt):
        meta = load_checkpoint(ckpt, vae, None, opt)
        log_line(run, f"vae: resumed at step {meta['step']}")
    data = dataset(recipe, TRAIN_SEED)
    held_out = dataset(recipe, EVAL_SEED).batch(range(eval_images))[0].to(device)  # (n, 3, 64, 64) in [0, 1]
    bar = tqdm(range(meta["step"], min(steps, until or steps)), desc="vae", initial=meta["step"], total=steps,
               disable=not distributed.is_main())
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, steps, lr)
        part = distributed.shard(batch_size)  # this process's items (all of them in one process)
        x = data.batch(range(step * batch_size + part.start, step * batch_size + part.stop))[0].to(device) * 2 - 1
        side = TOY_IMAGE_SIZE // recipe.vae.downsample_factor
        noise = torch.randn((batch_size, recipe.vae.latent_channels, side, side),
                            generator=torch.Generator().manual_seed(step))[part]
        loss, _ = vae_loss(vae, x, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        distributed.average_gradients(vae.parameters())
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        value = distributed.mean(loss)  # the whole batch's loss
        if not math.isfinite(value):
            raise ValueError(f"vae step {step + 1}: the loss is {value}; the training diverged (learning rate {lr} "
                             f"too high?); the last checkpoint, step {meta['step']}, is kept")
        bar.set_postfix(loss=f"{value:.4f}")
        if (step + 1) % 10 == 0:
            meta["history"]["step"].append(step + 1)
            meta["history"]["loss"].append(value)
        if (step + 1) % every == 0 or step + 1 in (steps, until):
            with torch.no_grad():
                vae.eval()
                p = torch.cat([psnr_db((vae(held_out[i:i + 64] * 2 - 1) + 1) / 2, held_out[i:i + 64])
                               for i in range(0, eval_images, 64)])
                vae.train()
            meta["history"]["eval_psnr"].append([step + 1, p.mean().item()])
            meta["step"] = step + 1
            if distributed.is_main():
                save_checkpoint(ckpt, vae, None, opt, meta)
            log_line(run, f"vae step {step + 1}/{steps}: loss {value:.4f}, held-out PSNR {p.mean():.2f} dB "
                          f"(min {p.min():.2f})")
    vae.eval()
    return vae


@torch.no_grad()
def measure_latent_scale(vae: AutoencoderKL, device: str, n: int = 2048, recipe: ToyRecipe = DEFAULT_RECIPE) -> float:
    """1 / std of z ~ q(z|x) over ``n`` fresh images (LDM appendix G; SD's 0.18215 came this way)."""
    x = dataset(recipe, EVAL_SEED + 1).batch(range(n))[0] * 2 - 1  # (n, 3, 64, 64) in [-1, 1]
    z = torch.cat([vae.encode(x[i:i + 256].to(device)).sample(torch.Generator().manual_seed(i)).cpu()
                   for i in range(0, n, 256)])
    return float(1 / z.std())


@torch.no_grad()
def encode_dataset(vae: AutoencoderKL, n: int, device: str,
                   recipe: ToyRecipe = DEFAULT_RECIPE) -> tuple[torch.Tensor, torch.Tensor, list]:
    """The posterior mean and std of ``n`` training images ((B, 4, S, S) each: stage 2 samples z from
    them) and their scenes (stage 2 captions them anew at every step)."""
    data, means, stds, scenes = dataset(recipe, TRAIN_SEED + 1), [], [], []
    for i in tqdm(range(0, n, 256), desc="encode"):
        images, _, batch_scenes = data.batch(range(i, min(i + 256, n)))
        posterior = vae.encode(images.to(device) * 2 - 1)  # the VAE reads [-1, 1]
        means.append(posterior.mean.cpu())
        stds.append(posterior.std.cpu())
        scenes += batch_scenes
    return torch.cat(means), torch.cat(stds), scenes


# Stage 2: text encoder + U-Net ----------------------------------------------------------------
class TextToLatent(nn.Module):
    """The two networks trained together; ``forward`` is the conditional eps model eps(z_t, t, caption)."""

    def __init__(self, recipe: ToyRecipe = DEFAULT_RECIPE) -> None:
        super().__init__()
        self.unet = UNet(recipe.unet)
        self.text_encoder = CLIPTextModel(recipe.text)

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        context = self.text_encoder(ids).last_hidden_state  # (B, 77, 64)
        return self.unet(z_t, t, context)  # (B, 4, 8, 8)


def ema_update(ema: nn.Module, model: nn.Module, step: int) -> None:
    decay = min(EMA_DECAY, (1 + step) / (10 + step))  # a short warm-up, so early EMA weights are not stale
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters()):
            e.lerp_(p, 1 - decay)


def train_diffusion(run: Path, vae_scale: float, means: torch.Tensor, stds: torch.Tensor, steps: int,
                    batch_size: int, lr: float, device: str, every: int, until: int | None = None,
                    recipe: ToyRecipe = DEFAULT_RECIPE, scenes: list | None = None,
                    text_encoder: CLIPTextModel | None = None) -> TextToLatent:
    """Stage 2 for ``steps`` steps (or up to step ``until``), resuming from ``run/diffusion``; returns the EMA.

    ``scenes`` are the encoded images' scenes (default: drawn again from the dataset). A recipe
    whose text encoder is frozen takes it as ``text_encoder`` (trained by ``toyworld.clip_pretrain``)
    and trains the U-Net alone."""
    torch.manual_seed(0)
    model = TextToLatent(recipe)
    if recipe.text_training == "frozen":
        if text_encoder is None:
            raise ValueError(f"recipe {recipe.name} trains with a frozen text encoder; pass text_encoder=")
        model.text_encoder.load_state_dict(text_encoder.state_dict())
        model.text_encoder.requires_grad_(False)
    model = model.to(device)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    ckpt, meta = run / "diffusion", {"step": 0, "history": {"step": [], "loss": []}}
    if checkpoint.exists(ckpt):
        meta = load_checkpoint(ckpt, model, ema, opt)
        log_line(run, f"diffusion: resumed at step {meta['step']}")
    schedule = NoiseSchedule.from_name(TOY_SCHEDULE["beta_schedule"], beta_start=TOY_SCHEDULE["beta_start"],
                                       beta_end=TOY_SCHEDULE["beta_end"])
    tokenizer, data = recipe.tokenizer(), dataset(recipe, TRAIN_SEED + 1)
    n = means.shape[0]
    scene_of = (lambda i: data.scene_and_caption(i)[0]) if scenes is None else scenes.__getitem__
    running = []
    bar = tqdm(range(meta["step"], min(steps, until or steps)), desc="diffusion", initial=meta["step"], total=steps,
               disable=not distributed.is_main())
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, steps, lr)
        rng = np.random.default_rng([TRAIN_SEED, step])
        gen = torch.Generator().manual_seed(step)
        idx = rng.integers(n, size=batch_size)
        captions = ["" if rng.random() < CAPTION_DROPOUT else training_caption(recipe, scene_of(int(i)), rng)
                    for i in idx]
        eps = torch.randn(means[idx].shape, generator=gen)
        z0 = (vae_scale * (means[idx] + stds[idx] * eps)).to(device)  # (B, 4, S, S): z_0 ~ scale * q(z|x)
        t = torch.randint(0, schedule.num_train_timesteps, (batch_size,), generator=gen)  # diffusion_loss's order
        noise = torch.randn(z0.shape, generator=gen)
        part = distributed.shard(batch_size)  # this process's items (all of them in one process)
        ids = tokenizer(captions[part]).to(device)
        loss = diffusion_loss(model, z0[part], schedule, t=t[part], noise=noise[part], model_kwargs={"ids": ids})
        opt.zero_grad(set_to_none=True)
        loss.backward()
        distributed.average_gradients(model.parameters())
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema_update(ema, model, step)
        running.append(distributed.mean(loss))  # the whole batch's loss
        if not math.isfinite(running[-1]):
            raise ValueError(f"diffusion step {step + 1}: the loss is {running[-1]}; the training diverged (learning "
                             f"rate {lr} too high?); the last checkpoint, step {meta['step']}, is kept")
        if (step + 1) % 10 == 0:
            meta["history"]["step"].append(step + 1)
            meta["history"]["loss"].append(float(np.mean(running)))
            bar.set_postfix(loss=f"{np.mean(running):.4f}")
            running = []
        if (step + 1) % every == 0 or step + 1 in (steps, until):
            meta["step"] = step + 1
            if distributed.is_main():
                save_checkpoint(ckpt, model, ema, opt, meta)
            last = meta["history"]["loss"][-1] if meta["history"]["loss"] else float("nan")
            log_line(run, f"diffusion step {step + 1}/{steps}: loss (mean of the last 10 steps) {last:.4f}")
    return ema


# Export ---------------------------------------------------------------------------------------
def plot_history(run: Path, out: Path, vae_run: Path | None = None) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vae_meta = checkpoint.read_meta((vae_run or run) / "vae")
    dif_meta = checkpoint.read_meta(run / "diffusion")
    history = {"vae": vae_meta["history"], "diffusion": dif_meta["history"]}
    write_json(history, out / "training_log.json")
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), layout="constrained")
    h = history["vae"]
    axes[0].semilogy(h["step"], h["loss"], lw=0.8)
    axes[0].set(title="stage 1: VAE loss (L1 + L2 + KL)", xlabel="step", ylabel="loss")
    psnr_steps, psnr_values = zip(*h["eval_psnr"])
    axes[1].plot(psnr_steps, psnr_values, marker="o", ms=3)
    axes[1].axhline(30, color="gray", ls="--", lw=0.8, label="30 dB goal")
    axes[1].set(title="stage 1: held-out reconstruction PSNR", xlabel="step", ylabel="dB")
    axes[1].legend()
    h = history["diffusion"]
    axes[2].semilogy(h["step"], h["loss"], lw=0.8)
    axes[2].set(title="stage 2: U-Net + text encoder, L_simple", xlabel="step", ylabel="loss (mean of 10 steps)")
    fig.savefig(out / "training.png", dpi=110)
    plt.close(fig)


def check_finite(module: nn.Module, name: str) -> None:
    """Refuse weights that hold NaN or inf (a diverged run), naming the first such tensor."""
    for key, tensor in module.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ValueError(f"{name} weight {key} holds NaN or inf values: the training diverged (try a lower "
                             f"learning rate); nothing was exported")


def export(out: Path, vae: AutoencoderKL, scale: float, model: TextToLatent,
           recipe: ToyRecipe = DEFAULT_RECIPE, run: Path | None = None, vae_run: Path | None = None) -> None:
    """The model folder at ``out``, written whole or not at all: the parts (and, given ``run``, the
    training log and its figure) go to a temporary folder beside ``out``, which is then swapped into
    place (weights/atomic.py). Non-finite weights are refused before anything is written."""
    from dataclasses import replace

    from weights.atomic import recover, swap_into_place, temporary_folder

    for module, name in ((vae, "VAE"), (model.unet, "U-Net"), (model.text_encoder, "text encoder")):
        check_finite(module, name)
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"latent scale {scale} is not a positive finite number; nothing was exported")
    final_vae = AutoencoderKL(replace(recipe.vae, scaling_factor=scale))
    final_vae.load_state_dict(vae.state_dict())
    recover(out, lambda text: log_line(run, text) if run else None)
    tmp = temporary_folder(out)
    try:
        save_unet(model.unet.cpu(), tmp)
        save_vae(final_vae, tmp)
        save_text_encoder(model.text_encoder.cpu(), tmp)
        tokenizer = recipe.tokenizer()
        tokenizer.save(tmp / "tokenizer")
        write_json(manifest(scale, tokenizer, dict(TOY_SCHEDULE), image_size=TOY_IMAGE_SIZE), tmp / "model.json")
        if run is not None:
            plot_history(run, tmp, vae_run)
        swap_into_place(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone after the swap; the debris after a failure


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", choices=sorted(RECIPES), default="toy1",
                   help="the world and networks to train (toyworld/model.py; default toy1, the shipped model)")
    p.add_argument("--run", type=Path, default=Path("runs/toy"), help="checkpoints and train.log (default runs/toy)")
    p.add_argument("--vae-run", type=Path, default=None,
                   help="where stage 1's checkpoint and the encoded latents live (default: --run); "
                        "runs of one world can share one autoencoder")
    p.add_argument("--out", type=Path, default=Path("weights/toy"), help="where the trained model goes")
    p.add_argument("--vae-steps", type=int, default=2500)
    p.add_argument("--vae-batch", type=int, default=16)
    p.add_argument("--vae-lr", type=float, default=1e-3)
    p.add_argument("--clip-steps", type=int, default=3000, help="contrastive text-encoder steps (frozen recipes)")
    p.add_argument("--clip-batch", type=int, default=256)
    p.add_argument("--clip-lr", type=float, default=1e-3)
    p.add_argument("--diffusion-steps", type=int, default=7000)
    p.add_argument("--diffusion-batch", type=int, default=64)
    p.add_argument("--diffusion-lr", type=float, default=1e-3)
    p.add_argument("--latent-images", type=int, default=40000, help="training images encoded for stage 2")
    p.add_argument("--scale-images", type=int, default=2048, help="fresh images the latent scale is measured on")
    p.add_argument("--checkpoint-every", type=int, default=250)
    p.add_argument("--stop-after", choices=("vae", "clip", "diffusion"), default=None,
                   help="end after this stage (no export): to share stage 1 between runs")
    p.add_argument("--export-now", action="store_true",
                   help="train no further: export the EMA weights of the latest checkpoints to --out "
                        "(to look at a run in progress; run the same command without it to go on)")
    p.add_argument("--device", type=device_name, default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = p.parse_args(argv)
    for name in ("vae_steps", "vae_batch", "clip_steps", "clip_batch", "diffusion_steps", "diffusion_batch",
                 "latent_images", "scale_images", "checkpoint_every"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return args


def encoded_latents(run: Path, vae: AutoencoderKL, n: int, device: str, recipe: ToyRecipe):
    """Stage 2's training set, encoded once and cached in ``run/latents.safetensors`` (one file: the
    posterior means and stds, and the scenes as JSON metadata)."""
    import json

    from weights.io import read_safetensors, read_safetensors_header, write_safetensors

    cache = run / "latents.safetensors"
    if cache.exists():
        stored, scenes = read_safetensors(cache), json.loads(read_safetensors_header(cache)["__metadata__"]["scenes"])
        if stored["mean"].shape[0] == n == len(scenes):
            return stored["mean"], stored["std"], [scene_from_json(d) for d in scenes]
    means, stds, scenes = encode_dataset(vae, n, device, recipe)
    write_safetensors({"mean": means, "std": stds}, cache,
                      metadata={"scenes": json.dumps([scene_to_json(s) for s in scenes])})
    return means, stds, scenes


def pretrain_text_encoder(run: Path, recipe: ToyRecipe, means: torch.Tensor, scale: float, scenes: list,
                          args: argparse.Namespace) -> CLIPTextModel:
    """The frozen recipes' text encoder: CLIP's objective against the latents (toyworld/clip_pretrain.py);
    cached as ``run/clip_text.safetensors``."""
    from weights.io import read_safetensors

    from .clip_pretrain import ContrastivePair, save_text_encoder_state, train_clip

    text_encoder = CLIPTextModel(recipe.text)
    path = run / "clip_text.safetensors"
    if path.exists():
        text_encoder.load_state_dict(read_safetensors(path))
        log_line(run, f"clip: text encoder read from {path}")
        return text_encoder.to(args.device)
    torch.manual_seed(0)
    pair = ContrastivePair(text_encoder, recipe.vae.latent_channels, recipe.latent_side).to(args.device)
    tokenizer = recipe.tokenizer()
    history = train_clip(pair, scale * means, lambda idx, rng: [training_caption(recipe, scenes[i], rng) for i in idx],
                         tokenizer, args.clip_steps, args.clip_batch, args.clip_lr, args.device,
                         lambda text: log_line(run, text))
    save_text_encoder_state(pair.text_encoder, path)
    write_json({"history": history}, run / "clip.json")
    return pair.text_encoder.requires_grad_(False)


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(parse_args(argv))
    except (ValueError, OSError) as e:  # WeightsFileError is a ValueError: bad files, diverged runs, a full disk
        print(f"error: {e}", file=sys.stderr)
        return 2


def _main(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    distributed.init_from_env(args.device)
    if args.device == "cuda" and distributed.world_size() > 1:
        args.device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"  # one GPU per process
    recipe = RECIPES[args.recipe]
    vae_run = args.vae_run or args.run
    for folder in (args.run, vae_run):
        folder.mkdir(parents=True, exist_ok=True)
    log_line(args.run, f"training the toy model on {args.device}: {vars(args)}")
    def saved_step(path: Path) -> int | None:  # --export-now trains up to the checkpoint it finds: no step
        if not args.export_now:
            return None
        if not checkpoint.exists(path):
            raise ValueError(f"--export-now: {path}.safetensors does not exist yet; train first")
        return checkpoint.read_meta(path)["step"]

    vae = train_vae(vae_run, args.vae_steps, args.vae_batch, args.vae_lr, args.device, args.checkpoint_every,
                    until=saved_step(vae_run / "vae"), recipe=recipe)
    scale = measure_latent_scale(vae, args.device, n=args.scale_images, recipe=recipe)
    log_line(args.run, f"latent scale 1/std = {scale:.5f}")
    for turn in ("main", "others"):  # process 0 encodes (or reads the cache); the others then read it
        if distributed.is_main() == (turn == "main"):
            means, stds, scenes = encoded_latents(vae_run, vae, args.latent_images, args.device, recipe)
        distributed.barrier()
    if args.stop_after == "vae":
        return 0
    text_encoder = None
    if recipe.text_training == "frozen":
        for turn in ("main", "others"):  # likewise: process 0 trains the text encoder, the others read it
            if distributed.is_main() == (turn == "main"):
                text_encoder = pretrain_text_encoder(args.run, recipe, means, scale, scenes, args)
            distributed.barrier()
    if args.stop_after == "clip":
        return 0
    model = train_diffusion(args.run, scale, means, stds, args.diffusion_steps, args.diffusion_batch,
                            args.diffusion_lr, args.device, args.checkpoint_every,
                            until=saved_step(args.run / "diffusion"), recipe=recipe, scenes=scenes,
                            text_encoder=text_encoder)
    if args.stop_after == "diffusion" or not distributed.is_main():
        return 0
    export(args.out, vae.cpu(), scale, model.cpu(), recipe, args.run, vae_run)
    log_line(args.run, f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
