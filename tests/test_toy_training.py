"""The toy model's trainer: checkpoints restore everything, a resumed run equals an uninterrupted one,
the learning-rate schedule and PSNR are what their docstrings say, and the export loads."""

import pytest
import torch

from toyworld import train
from toyworld.checkpoint import load_checkpoint, save_checkpoint
from toyworld.model import toy_vae_config
from weights.model_folder import load_model_folder, read_manifest


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_checkpoint_round_trip_restores_model_ema_and_adam(tmp_path):
    torch.manual_seed(0)
    model, ema = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(4, 3)).square().sum().backward()
        opt.step()
    save_checkpoint(tmp_path / "c", model, ema, opt, {"step": 3, "history": {"loss": [1.0]}})
    model2, ema2 = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-2)
    meta = load_checkpoint(tmp_path / "c", model2, ema2, opt2)
    assert meta == {"step": 3, "history": {"loss": [1.0]}}
    assert _same_state(model, model2) and _same_state(ema, ema2)
    # The next optimiser step is identical only if Adam's moments and step counts came back.
    for m, o in ((model, opt), (model2, opt2)):
        o.zero_grad()
        m(torch.ones(4, 3)).square().sum().backward()
        o.step()
    assert _same_state(model, model2)


def test_vae_stage_resumed_equals_uninterrupted(tmp_path):
    # eval_images=8: the log's held-out PSNR is not what this test checks (256 would cost ~30 s)
    kw = dict(steps=4, batch_size=2, lr=1e-3, device="cpu", every=100, eval_images=8)
    straight = train.train_vae(tmp_path / "a", **kw)
    train.train_vae(tmp_path / "b", **kw, until=2)
    resumed = train.train_vae(tmp_path / "b", **kw)
    assert _same_state(straight, resumed)


@pytest.mark.parametrize("eval_images", [0, -1, 2.5, True])
def test_vae_stage_refuses_a_bad_held_out_size(tmp_path, eval_images):
    with pytest.raises(ValueError, match="eval_images must be a positive int"):
        train.train_vae(tmp_path, steps=1, batch_size=1, lr=1e-3, device="cpu", every=1, eval_images=eval_images)


def test_diffusion_stage_resumed_equals_uninterrupted_and_exports(tmp_path):
    torch.manual_seed(0)
    means, stds = torch.randn(16, 4, 8, 8), torch.rand(16, 4, 8, 8) * 0.1
    kw = dict(vae_scale=0.5, means=means, stds=stds, steps=4, batch_size=3, lr=1e-3, device="cpu", every=100)
    straight = train.train_diffusion(tmp_path / "a", **kw)
    train.train_diffusion(tmp_path / "b", **kw, until=2)
    resumed = train.train_diffusion(tmp_path / "b", **kw)
    assert _same_state(straight, resumed)

    vae = train.AutoencoderKL(toy_vae_config())
    train.export(tmp_path / "model", vae, 0.5, resumed)
    unet, vae2, text_encoder, tokenizer = load_model_folder(tmp_path / "model")
    assert _same_state(unet, resumed.unet) and _same_state(text_encoder, resumed.text_encoder)
    assert vae2.config.scaling_factor == 0.5 and read_manifest(tmp_path / "model")["image_size"] == 64
    assert tokenizer(["a big red circle"]).shape == (1, 77)


def test_learning_rate_warms_up_then_decays_to_a_tenth():
    peak, steps = 1e-3, 1000
    assert train.learning_rate(0, steps, peak) == pytest.approx(peak / 200)
    assert train.learning_rate(199, steps, peak) == pytest.approx(peak)
    assert train.learning_rate(steps, steps, peak) == pytest.approx(peak / 10)
    lrs = [train.learning_rate(s, steps, peak) for s in range(200, steps)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))  # monotone cosine decay


def test_psnr_of_a_known_error():
    from toyworld.evaluate import psnr_db

    x = torch.zeros(2, 3, 8, 8)
    y = x + 0.1  # an error of 0.1 everywhere on the [0, 1] scale: MSE 0.01 -> 10 log10(1 / 0.01) = 20 dB
    assert torch.allclose(psnr_db(x, y), torch.tensor([20.0, 20.0]), atol=1e-4)
    assert torch.allclose(psnr_db(x, x), torch.tensor([120.0, 120.0]))  # no error: the MSE's floor 1e-12, not inf


def test_cli_rejects_bad_counts():
    with pytest.raises(SystemExit):
        train.parse_args(["--vae-steps", "0"])


# ----------------------------------------------------------------------------------------------- data parallel

def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _data_parallel_worker(rank: int, world: int, port: int, run: str, out: str, kw: dict) -> None:
    """One torchrun-like process: join the gloo group on 127.0.0.1, train, process 0 saves the weights."""
    import os

    import torch.distributed as dist

    from weights.io import write_safetensors

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = train.train_diffusion(__import__("pathlib").Path(run), **kw)
        if rank == 0:
            write_safetensors({k: v.contiguous() for k, v in model.state_dict().items()}, out)
    finally:
        dist.destroy_process_group()


def _data_parallel_kwargs() -> dict:
    torch.manual_seed(0)
    means, stds = torch.randn(16, 4, 8, 8), torch.rand(16, 4, 8, 8) * 0.1
    return dict(vae_scale=0.5, means=means, stds=stds, steps=3, batch_size=4, lr=1e-3, device="cpu", every=100)


@pytest.mark.slow
def test_two_processes_with_half_batches_take_the_one_process_step(tmp_path):
    """torchrun's data parallelism: 2 gloo processes of B/2 = 2 items each, gradients averaged,
    against one process of B = 4, three steps (Adam, EMA, clipping included).

    The two runs sum the batch's per-item losses in another order, so gradients differ by float
    rounding (~1e-7 relative); Adam's first steps divide by sqrt(v), which keeps such errors at
    about lr x 1e-6 per step. Measured max |dW| over all weights after 3 steps: 2.1e-7;
    bound 1e-5 = lr / 100, far below one Adam step (lr = 1e-3 per weight), so a shard that saw the
    wrong items or gradients that were not averaged (each an O(lr) change) fails."""
    import torch.multiprocessing as mp

    from weights.io import read_safetensors

    kw = _data_parallel_kwargs()
    one = train.train_diffusion(tmp_path / "one", **kw)
    out = tmp_path / "two.safetensors"
    mp.spawn(_data_parallel_worker, args=(2, _free_port(), str(tmp_path / "two"), str(out), kw), nprocs=2)
    two = read_safetensors(out)
    state = one.state_dict()
    assert two.keys() == state.keys()
    diff = max((state[k] - two[k]).abs().max().item() for k in state)
    print(f"max |dW| one process vs two: {diff:.2e}")
    assert diff <= 1e-5
    # And it is not trivially equal: one step of training moves weights by ~lr.
    fresh = train.TextToLatent().state_dict()
    assert max((state[k] - fresh[k]).abs().max().item() for k in state) > 1e-4


def test_a_batch_that_does_not_split_evenly_is_refused(monkeypatch):
    from toyworld import distributed

    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    monkeypatch.setattr(distributed, "rank", lambda: 0)
    with pytest.raises(ValueError, match="does not split evenly over 3"):
        distributed.shard(64)
    assert distributed.shard(63) == slice(0, 21)


# ----------------------------------------------------------------------------------------------- crashes

class Crash(Exception):
    """A simulated kill at a write."""


def _crash_at(monkeypatch, k: int, inside) -> list:
    """Make the k-th rename into ``inside`` (a file or folder put in place) raise Crash; count them."""
    import os
    from pathlib import Path

    from weights import atomic

    real, calls = os.replace, []

    def replace(a, b):
        if Path(b).resolve().is_relative_to(inside.resolve()):
            calls.append(b)
            if len(calls) == k:
                raise Crash(f"killed while writing {b}")
        real(a, b)

    monkeypatch.setattr(atomic.os, "replace", replace)
    return calls


def test_a_crash_at_any_checkpoint_write_then_resume_gives_the_uninterrupted_bits(tmp_path, monkeypatch):
    """#2: a checkpoint is one file written atomically (toyworld/checkpoint.py), so a crash at any
    write leaves the previous checkpoint whole; the data stream is a function of the step, so the
    resumed run retrains the lost steps and ends on the uninterrupted run's bits."""
    kw = _data_parallel_kwargs() | dict(steps=4, every=1)
    straight = train.train_diffusion(tmp_path / "straight", **kw)
    calls = _crash_at(monkeypatch, 0, tmp_path / "count")  # k = 0: count the writes, crash none
    train.train_diffusion(tmp_path / "count", **kw)
    monkeypatch.undo()
    assert len(calls) == 4  # one checkpoint file per step
    for k in range(1, 5):
        run = tmp_path / f"crash{k}"
        _crash_at(monkeypatch, k, run)
        with pytest.raises(Crash):
            train.train_diffusion(run, **kw)
        monkeypatch.undo()
        resumed = train.train_diffusion(run, **kw)
        assert _same_state(straight, resumed), k


def test_a_crash_during_export_leaves_the_old_folder_and_diverged_weights_are_refused(tmp_path, monkeypatch):
    """#3: export wrote file by file into --out; a crash left mismatched parts that loaded. Now the
    folder is built aside and swapped in: a crash at any of its writes leaves the previous export
    whole (or no folder). A diverged model (NaN weights) is refused before anything is written."""
    kw = _data_parallel_kwargs() | dict(steps=2)
    model = train.train_diffusion(tmp_path / "run", **kw)
    vae = train.AutoencoderKL(toy_vae_config())
    out = tmp_path / "model"
    train.export(out, vae, 0.5, model)
    before = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with torch.no_grad():
        model.unet.conv_in.bias.add_(1.0)  # a different model to export over the first
    for k in range(1, 12):
        calls = _crash_at(monkeypatch, k, tmp_path)
        try:
            train.export(out, vae, 0.5, model)
            crashed = False
        except Crash:
            crashed = True
        monkeypatch.undo()
        now = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
        if crashed:
            assert now == before, k  # all of the old export, nothing of the new
        else:
            assert len(calls) < k and now != before  # past the last write: the new export, whole
            break
    else:
        pytest.fail("export made more than 11 writes")
    with torch.no_grad():
        model.unet.conv_in.bias.fill_(float("nan"))
    with pytest.raises(ValueError, match="conv_in.bias holds NaN"):
        train.export(tmp_path / "nan", vae, 0.5, model)
    assert not (tmp_path / "nan").exists()


def test_a_diverged_run_stops_with_a_message_and_exit_code(tmp_path, capsys):
    """#3: at --diffusion-lr 1e30 the loss becomes NaN; the run stops there (exit 2, no traceback)."""
    kw = _data_parallel_kwargs() | dict(steps=6, lr=1e30)
    with pytest.raises(ValueError, match="the training diverged"):
        train.train_diffusion(tmp_path / "run", **kw)

    def diverge(args):
        raise ValueError("diffusion step 3: the loss is nan; the training diverged")

    import toyworld.train as module

    original, module._main = module._main, diverge
    try:
        assert train.main(["--run", str(tmp_path / "r"), "--out", str(tmp_path / "o")]) == 2
    finally:
        module._main = original
    assert "error: diffusion step 3" in capsys.readouterr().err


def test_export_now_writes_the_latest_checkpoints_ema_without_training(tmp_path):
    """--export-now: a look at a run in progress. It trains nothing (the checkpoint's step stays)
    and exports exactly the checkpoint's EMA weights."""
    from weights.io import read_safetensors

    common = ["--run", str(tmp_path / "run"), "--vae-steps", "2", "--vae-batch", "2", "--latent-images", "64",
              "--scale-images", "64",
              "--diffusion-batch", "4", "--checkpoint-every", "2", "--threads", "1"]
    assert train.main([*common, "--diffusion-steps", "4", "--stop-after", "diffusion"]) == 0
    assert train.main([*common, "--diffusion-steps", "10", "--export-now", "--out", str(tmp_path / "model")]) == 0
    from toyworld import checkpoint

    assert checkpoint.read_meta(tmp_path / "run" / "diffusion")["step"] == 4
    stored = read_safetensors(tmp_path / "run" / "diffusion.safetensors")
    exported = read_safetensors(tmp_path / "model" / "unet.safetensors")
    assert all(torch.equal(exported[k], stored[f"ema.unet.{k}"]) for k in exported)
    assert train.main([*common, "--export-now", "--run", str(tmp_path / "empty"), "--out", str(tmp_path / "m2")]) == 2
