"""The toy model's trainer: checkpoints restore everything, a resumed run equals an uninterrupted one,
the learning-rate schedule and PSNR are what their docstrings say, and the export loads."""

import pytest
import torch

from toyworld import train
from toyworld.checkpoint import load_checkpoint, save_checkpoint
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

    vae = train.AutoencoderKL(train.toy_vae_config())
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
    x = torch.zeros(2, 3, 8, 8)
    y = x + 2 * 0.1  # an error of 0.1 on the [0, 1] scale everywhere: MSE 0.01 -> 20 dB
    assert torch.allclose(train.psnr(x, y), torch.tensor([20.0, 20.0]), atol=1e-4)


def test_cli_rejects_bad_counts():
    with pytest.raises(SystemExit):
        train.parse_args(["--vae-steps", "0"])
