"""The SD v1 KL autoencoder: parity with diffusers' ``AutoencoderKL``, the weight layouts, bad input.

Parity is checked with the same random weights at two tiny configs and at SD v1.5's full size
(83.7M parameters, on a 64x64 image); the original ``first_stage_model.*`` table is proved
against diffusers' own single-file converter (``convert_ldm_vae_checkpoint``).
"""
from __future__ import annotations

import gc

import pytest
import torch
from diffusers import AutoencoderKL as DiffusersVAE
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

from ldm import AutoencoderKL, DiagonalGaussian, VAEConfig
from weights.checks import WeightsMismatchError, load_checked
from weights.diffusers_layout import diffusers_to_project
from weights.io import write_json, write_safetensors
from weights.original_vae import PREFIX, original_to_project, project_to_original
from weights.vae_loading import export_vae_to_diffusers, load_vae, save_vae

# Two tiny configs that move every index of the table: SD's 4 levels (f = 8) with one ResBlock per
# encoder level, and 2 levels x 2 ResBlocks with 3 latent channels and 16 -> 32 widths.
TINY = VAEConfig.tiny()
TINY2 = VAEConfig(block_out_channels=(16, 32), layers_per_block=2, latent_channels=3, norm_num_groups=8)
SD = VAEConfig.sd_v1()
DECOYS = {  # the rest of a full checkpoint, which the VAE loader must ignore
    "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2, 2),
    "cond_stage_model.transformer.text_model.embeddings.position_ids": torch.arange(4),
    "first_stage_model.loss.logvar": torch.zeros(()),
}

# Tolerance, relative to the output's largest magnitude. Measured (CPU, seed 0, these inputs):
# diffusers fp32 against the same diffusers model in fp64 differs by up to 4.2e-6 (SD encoder
# mean/logvar) and 8.3e-6 (SD decoder) relative; ours against diffusers fp32 by 1.0e-6 / 1.1e-5
# (the fused attention kernel sums in another order). 5e-5 is ~5x the fp32 rounding measured,
# while one misplaced or transposed weight changes the outputs by O(1).
RTOL_TO_SCALE = 5e-5


def random_pair(config: VAEConfig, seed: int = 0) -> tuple[AutoencoderKL, DiffusersVAE]:
    """diffusers' VAE with random weights, and ours built on ``meta`` holding the same tensors."""
    torch.manual_seed(seed)
    ref = DiffusersVAE(**{k: v for k, v in config.to_diffusers().items() if not k.startswith("_")}).eval()
    with torch.device("meta"):
        ours = AutoencoderKL(config)
    load_checked(ours, diffusers_to_project(ref.state_dict()), "diffusers VAE", assign=True)
    return ours.eval(), ref


def images(config: VAEConfig, side: int, batch: int = 2, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, config.in_channels, side, side, generator=g) * 2 - 1  # (B, 3, H, W) in [-1, 1]


def close(got: torch.Tensor, expected: torch.Tensor) -> None:
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=0, atol=RTOL_TO_SCALE * expected.abs().max().item())


@torch.no_grad()
def assert_parity(ours: AutoencoderKL, ref: DiffusersVAE, side: int, batch: int = 2) -> None:
    config = ours.config
    x = images(config, side, batch)
    posterior, expected = ours.encode(x), ref.encode(x).latent_dist
    f = config.downsample_factor
    assert posterior.mean.shape == (batch, config.latent_channels, side // f, side // f)
    close(posterior.mean, expected.mean)
    close(posterior.logvar, expected.logvar)
    close(posterior.std, expected.std)
    # The same generator draws: one randn of the whole (B, C, h, w) batch, z = mu + sigma * eps.
    z = posterior.sample(torch.Generator().manual_seed(7))
    close(z, expected.sample(torch.Generator().manual_seed(7)))
    close(posterior.kl(), expected.kl())
    decoded = ours.decode(z)
    assert decoded.shape == (batch, config.out_channels, side, side)
    close(decoded, ref.decode(z).sample)


@torch.no_grad()
def test_latent_helpers_apply_the_scale():
    """encode_to_latents: z_0 = 0.18215 mu (or 0.18215 (mu + sigma eps)); decode_latents: decode(z_0 / 0.18215)."""
    ours, ref = random_pair(TINY)
    x = images(TINY, 32)
    expected = ref.encode(x).latent_dist
    close(ours.encode_to_latents(x), TINY.scaling_factor * expected.mean)
    z0 = ours.encode_to_latents(x, torch.Generator().manual_seed(3), sample=True)
    close(z0, TINY.scaling_factor * expected.sample(torch.Generator().manual_seed(3)))
    close(ours.decode_latents(z0), ref.decode(z0 / TINY.scaling_factor).sample)
    close(ours(x), ref(x).sample)  # reconstruction through the mode, as diffusers' forward


@pytest.mark.parametrize("config, side", [(TINY, 32), (TINY2, 16)], ids=["tiny", "tiny2"])
def test_parity_tiny(config, side):
    ours, ref = random_pair(config)
    assert_parity(ours, ref, side)


@pytest.fixture(scope="module")
def sd_pair():
    pair = random_pair(SD)
    yield pair
    del pair
    gc.collect()


def test_parity_sd_v1(sd_pair):
    ours, ref = sd_pair
    assert sum(p.numel() for p in ours.parameters()) == 83_653_863  # SD v1.5's VAE
    assert_parity(ours, ref, 64, batch=1)


# --- the posterior's maths ---------------------------------------------------------------------
def test_diagonal_gaussian():
    """Reparameterisation z = mu + sigma * eps, the clamp on log sigma^2, and the closed-form KL."""
    g = torch.Generator().manual_seed(0)
    mean, logvar = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    q = DiagonalGaussian(torch.cat([mean, logvar], dim=1))
    assert torch.equal(q.mode(), mean)
    eps = torch.randn(mean.shape, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(q.sample(torch.Generator().manual_seed(5)), mean + torch.exp(0.5 * logvar) * eps)
    # KL against N(0, I) from torch.distributions, summed over (C, h, w).
    p = torch.distributions.Normal(mean, torch.exp(0.5 * logvar))
    kl = torch.distributions.kl_divergence(p, torch.distributions.Normal(0.0, 1.0)).sum(dim=(1, 2, 3))
    torch.testing.assert_close(q.kl(), kl)
    wild = DiagonalGaussian(torch.cat([mean, torch.full_like(logvar, 100.0)], dim=1))
    assert wild.logvar.max().item() == 20.0 and torch.isfinite(wild.var).all()


# --- the original layout, against diffusers' own converter -------------------------------------
@pytest.mark.parametrize("config", [TINY, TINY2, SD], ids=["tiny", "tiny2", "sd_v1"])
def test_original_table_matches_diffusers_converter(config, request):
    ref = request.getfixturevalue("sd_pair")[1] if config == SD else random_pair(config)[1]
    reference = ref.state_dict()
    original = project_to_original(diffusers_to_project(reference), config)
    attn = [k for k in original if ".attn_1." in k and k.endswith(("q.weight", "proj_out.weight"))]
    assert attn and all(original[k].ndim == 4 for k in attn)  # stored as 1x1 convolutions
    assert sum(k.startswith(PREFIX + "decoder.up.0.upsample") for k in original) == 0  # up.0 is full resolution
    converted = convert_ldm_vae_checkpoint({**original, **DECOYS}, config.to_diffusers())
    assert set(converted) == set(reference)
    for k, v in reference.items():
        assert torch.equal(converted[k], v), k
    # And back: the table is a bijection.
    back = original_to_project({**original, **DECOYS}, config)
    assert back.keys() == diffusers_to_project(reference).keys()


def test_original_unknown_key_is_listed():
    ours, _ = random_pair(TINY2)
    original = project_to_original(ours.state_dict(), TINY2)
    original[PREFIX + "encoder.down.5.block.0.conv1.weight"] = torch.zeros(1)
    with pytest.raises(WeightsMismatchError, match=r"encoder\.down\.5\.block\.0\.conv1\.weight"):
        original_to_project(original, TINY2)
    with pytest.raises(ValueError, match="no keys start with 'first_stage_model.'"):
        original_to_project({"encoder.conv_in.weight": torch.zeros(1)}, TINY2)


# --- loading and saving -------------------------------------------------------------------------
def assert_same_weights(model: torch.nn.Module, expected: dict[str, torch.Tensor]) -> None:
    got = model.state_dict()
    assert set(got) == set(expected)
    for k, v in expected.items():
        assert got[k].dtype == torch.float32 and torch.equal(got[k], v), k


def test_load_original_file(tmp_path):
    ours, ref = random_pair(TINY)
    original = project_to_original(ours.state_dict(), TINY)
    write_safetensors({k: v.half() for k, v in {**original, **DECOYS}.items()}, tmp_path / "sd.safetensors")
    loaded = load_vae(tmp_path / "sd.safetensors", TINY)  # fp16 on disk, cast to fp32
    assert_same_weights(loaded, {k: v.half().float() for k, v in ours.state_dict().items()})


def test_diffusers_folder_round_trip(tmp_path):
    ours, ref = random_pair(TINY2)
    ref.save_pretrained(tmp_path / "model" / "vae")
    loaded = load_vae(tmp_path / "model")  # the whole model folder: finds vae/
    assert loaded.config == TINY2
    assert_same_weights(loaded, ours.state_dict())
    export_vae_to_diffusers(loaded, tmp_path / "export")
    again = DiffusersVAE.from_pretrained(tmp_path / "export", subfolder="vae")
    assert set(again.state_dict()) == set(ref.state_dict())
    for k, v in ref.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k


def test_project_layout_round_trip(tmp_path):
    ours, _ = random_pair(TINY)
    save_vae(ours, tmp_path)
    assert (tmp_path / "vae.safetensors").is_file() and (tmp_path / "vae.json").is_file()
    loaded = load_vae(tmp_path)
    assert loaded.config == TINY
    assert_same_weights(loaded, ours.state_dict())
    with pytest.raises(ValueError, match="differs from the one stored"):
        load_vae(tmp_path, TINY2)


def test_missing_keys_are_listed(tmp_path):
    ours, _ = random_pair(TINY)
    state = dict(ours.state_dict())
    del state["decoder.mid_block.attentions.0.to_q.weight"], state["encoder.conv_in.bias"]
    write_safetensors(state, tmp_path / "vae.safetensors")
    write_json(TINY.to_dict(), tmp_path / "vae.json")
    with pytest.raises(WeightsMismatchError, match=r"missing \(2\)[\s\S]*decoder\.mid_block\.attentions\.0\.to_q"
                                                   r"\.weight[\s\S]*encoder\.conv_in\.bias"):
        load_vae(tmp_path)


# --- bad input ----------------------------------------------------------------------------------
def test_bad_input():
    ours, _ = random_pair(TINY2)  # f = 2, 3 latent channels
    with pytest.raises(ValueError, match=r"images must be \(B, 3, H, W\), got \(1, 4, 16, 16\)"):
        ours.encode(torch.zeros(1, 4, 16, 16))
    with pytest.raises(ValueError, match=r"multiples of 2 .* got \(15, 16\)"):
        ours.encode(torch.zeros(1, 3, 15, 16))
    with pytest.raises(ValueError, match=r"multiples of 8 .* got \(60, 64\)"):
        random_pair(TINY)[0].encode(torch.zeros(1, 3, 60, 64))
    with pytest.raises(ValueError, match=r"latents must be \(B, 3, H, W\), got \(1, 4, 8, 8\)"):
        ours.decode(torch.zeros(1, 4, 8, 8))
    with pytest.raises(ValueError, match=r"images must be in \[-1, 1\], got values in \[0, 255\]"):
        ours.encode_to_latents(torch.linspace(0, 255, 3 * 16 * 16).reshape(1, 3, 16, 16))


def test_bad_config():
    with pytest.raises(ValueError, match="not divisible by norm_num_groups=32"):
        VAEConfig(block_out_channels=(48, 64))
    with pytest.raises(ValueError, match="unsupported diffusers VAE options .*use_quant_conv"):
        VAEConfig.from_diffusers({**SD.to_diffusers(), "use_quant_conv": False})
    with pytest.raises(ValueError, match="unsupported up_block_types"):
        VAEConfig.from_diffusers({**SD.to_diffusers(), "up_block_types": ["UpDecoderBlock2D"] * 3})
    with pytest.raises(ValueError, match=r"unknown VAEConfig keys \['zzz'\]"):
        VAEConfig.from_dict({**SD.to_dict(), "zzz": 1})
    assert VAEConfig.from_diffusers(SD.to_diffusers()) == SD and VAEConfig.from_dict(SD.to_dict()) == SD


def test_resblock_time_embedding_must_match_how_it_was_built():
    """The U-Net's ResBlock serves the VAE with time_dim=None; an emb it cannot use is an error."""
    from unet.resnet import ResBlock

    x = torch.zeros(1, 8, 4, 4)
    with pytest.raises(ValueError, match="emb is given but the block was built with time_dim=None"):
        ResBlock(8, 8, None, None, groups=4)(x, torch.zeros(1, 16))
    with pytest.raises(ValueError, match="emb is None but the block was built with time_dim=16"):
        ResBlock(8, 8, 16, None, groups=4)(x, None)
