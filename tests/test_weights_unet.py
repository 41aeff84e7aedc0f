"""Loading real SD U-Net weights: the original single file, diffusers folders, the project's layout.

The original layout is proved against diffusers' own single-file converter
(``convert_ldm_unet_checkpoint``), at tiny configs and at SD v1.5's full size, and every loader
against diffusers' ``UNet2DConditionModel`` output for output.
"""
from __future__ import annotations

import gc
import re

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

from unet import UNet, UNetConfig
from weights.checks import WeightsMismatchError, check_state_dict
from weights.diffusers_layout import diffusers_to_project, project_to_diffusers
from weights.io import WeightsFileError, read_json, write_json, write_safetensors
from weights.original_unet import PREFIX, module_table, original_to_project, project_to_original
from weights.unet_loading import export_unet_to_diffusers, load_unet, save_unet

# Two tiny configs that move every index of the table: 2 levels x 2 ResBlocks with attention at
# the top only, and 3 levels x 1 ResBlock with attention at the bottom two.
TINY = UNetConfig(block_out_channels=(32, 64), attention_levels=(True, False), layers_per_block=2,
                  num_heads=2, norm_num_groups=8, cross_attention_dim=16)
TINY3 = UNetConfig(block_out_channels=(32, 32, 64), attention_levels=(False, True, True), layers_per_block=1,
                   num_heads=4, norm_num_groups=8, cross_attention_dim=24)
SD = UNetConfig.sd_v1()
DECOYS = {  # the rest of a full checkpoint, which the U-Net loader must ignore
    "model_ema.decay": torch.tensor(0.9999),
    "model_ema.diffusion_modelinput_blocks00weight": torch.zeros(3),
    "first_stage_model.decoder.conv_in.weight": torch.zeros(2, 2),
    "cond_stage_model.transformer.text_model.embeddings.position_ids": torch.arange(4),
    "alphas_cumprod": torch.linspace(1, 0, 10),
}


def diffusers_config(config: UNetConfig) -> dict:
    return {k: v for k, v in config.to_diffusers().items() if not k.startswith("_")}


def random_diffusers(config: UNetConfig, seed: int = 0) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(**diffusers_config(config)).eval()


def inputs(config: UNetConfig, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    side = 2 * config.downsample_factor
    x = torch.randn(2, config.in_channels, side, side, generator=g)  # (B, C, H, W)
    context = torch.randn(2, 7, config.cross_attention_dim, generator=g)  # (B, tokens, C_ctx)
    return x, torch.tensor([10, 700]), context


@torch.no_grad()
def assert_same_output(ours: UNet, reference: UNet2DConditionModel) -> None:
    x, t, context = inputs(ours.config)
    eps, expected = ours(x, t, context), reference(x, t, context).sample  # (B, C_out, H, W)
    # Same weights and the same sequence of fp32 operations: measured max |diff| = 0.0 on CPU.
    # 1e-5 of the output's scale leaves room for kernels that sum in another order (fp32 rounding
    # ~1e-7 per op over a few hundred ops), while one misplaced tensor changes eps by O(1).
    torch.testing.assert_close(eps, expected, rtol=0, atol=1e-5 * expected.abs().max().item())


def assert_same_weights(model: torch.nn.Module, expected: dict[str, torch.Tensor]) -> None:
    got = model.state_dict()
    assert set(got) == set(expected)
    for k, v in expected.items():
        assert got[k].dtype == torch.float32 and torch.equal(got[k], v), k


def write_original(ref: UNet2DConditionModel, config: UNetConfig, path, extra=DECOYS) -> dict[str, torch.Tensor]:
    original = project_to_original(diffusers_to_project(ref.state_dict()), config)
    write_safetensors({**original, **extra}, path)
    return original


# --- the key table ----------------------------------------------------------------------------

@pytest.mark.parametrize("config", [TINY, TINY3, SD], ids=["tiny", "tiny3", "sd_v1"])
def test_key_table_agrees_with_diffusers_single_file_converter(config):
    """Every tensor lands where diffusers' own converter puts it, checked with a unique tag per tensor.

    The tags stand in for the weights (which the renaming never looks at), so SD v1.5's 686
    tensors are checked without 3.4 GB of memory.
    """
    with torch.device("meta"):
        names = list(UNet2DConditionModel(**diffusers_config(config)).state_dict())
    tags = {k: torch.tensor(i) for i, k in enumerate(names)}
    original = project_to_original(diffusers_to_project(tags), config)
    assert len(original) == len(tags) and all(k.startswith(PREFIX) for k in original)
    back = convert_ldm_unet_checkpoint(original, diffusers_config(config))
    assert set(back) == set(tags)
    assert all(back[k] is tags[k] for k in tags)
    # ... and original_to_project is its exact inverse.
    assert original_to_project(original, config) == diffusers_to_project(tags)


@pytest.mark.parametrize("config", [TINY, TINY3, SD], ids=["tiny", "tiny3", "sd_v1"])
def test_module_table_is_one_to_one(config):
    table = module_table(config)
    assert len(set(table.values())) == len(table)


def test_sd_v1_original_names_and_shapes_fit_our_unet():
    """At full size, the original names (from the table) carry the shapes our U-Net expects."""
    with torch.device("meta"):
        ours = UNet(SD)
        reference = UNet2DConditionModel(**diffusers_config(SD))
    original = project_to_original(diffusers_to_project(reference.state_dict()), SD)
    assert len(original) == 686  # the U-Net tensors of an SD v1.5 checkpoint
    # Independent facts about real SD v1 files: the resampling convs by which the ComfyUI-GGUF
    # converter (tools/convert.py, ModelSD1.keys_detect) recognises one. (diffusers' converter
    # accepts an Upsample at .1 or .2, so only these facts pin output_blocks.2.1.)
    widths = {"input_blocks.3.0.op": 320, "input_blocks.6.0.op": 640, "input_blocks.9.0.op": 1280,
              "output_blocks.2.1.conv": 1280, "output_blocks.5.2.conv": 1280, "output_blocks.8.2.conv": 640}
    for k, c in widths.items():
        assert original[f"{PREFIX}{k}.weight"].shape == (c, c, 3, 3), k
    expected = {k: v.shape for k, v in ours.state_dict().items()}
    check_state_dict(expected, original_to_project(original, SD), "SD v1 original layout")


# --- loading each layout ----------------------------------------------------------------------

@pytest.mark.parametrize("config", [TINY, TINY3], ids=["tiny", "tiny3"])
def test_original_single_file_loads_faithfully(tmp_path, config):
    ref = random_diffusers(config)
    path = tmp_path / "model.safetensors"
    original = write_original(ref, config, path)
    # The file is faithful: diffusers' single-file converter recovers every tensor of the model.
    back = convert_ldm_unet_checkpoint({**original, **DECOYS}, diffusers_config(config))
    expected = ref.state_dict()
    assert set(back) == set(expected) and all(torch.equal(back[k], v) for k, v in expected.items())

    unet = load_unet(path, config)
    assert not unet.training
    assert_same_weights(unet, diffusers_to_project(expected))
    assert_same_output(unet, ref)


@pytest.mark.slow
def test_sd_v1_size_fp16_original_file_loads_exactly(tmp_path):
    """The real-world call, at full size: load_unet("v1-5.safetensors") with no config.

    The file is fp16 (as many SD v1.5 downloads are), 1.7 GB, with the decoys of a full
    checkpoint; every one of the 686 tensors must come back cast to fp32 and bit-equal.
    Peak RSS measured 7.1 GB: the fp16 source kept for the comparison (1.7 GB), the fp32 model
    (3.4 GB) and the file's pages mapped while it is read (1.7 GB, page cache).
    Output parity at this size is the U-Net's own test; here the weights are the point.
    """
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in UNet2DConditionModel(**diffusers_config(SD)).state_dict().items()}
    # Random values, cheaply: each tensor is a copy of a different stretch of one random pool,
    # so no two tensors are equal and a misplaced one cannot go unnoticed.
    pool_size = 2**25  # more than the largest tensor (1280 x 2560 x 3 x 3 = 29.5M)
    pool = torch.randn(pool_size, generator=torch.Generator().manual_seed(0)).half().repeat(2)
    tensors = {k: pool[(i * 1_000_003) % pool_size:][: s.numel()].view(s).clone()
               for i, (k, s) in enumerate(shapes.items())}
    del pool
    expected = diffusers_to_project(tensors)
    path = tmp_path / "v1-5.safetensors"
    write_safetensors({**project_to_original(expected, SD), **DECOYS}, path)
    try:
        unet = load_unet(path)
    finally:
        path.unlink()  # pytest keeps the last runs' tmp_path: leave no 1.7 GB behind
    assert unet.config == SD
    got = unet.state_dict()
    assert set(got) == set(expected)
    assert all(v.dtype == torch.float32 for v in got.values())
    mismatched = [k for k, v in expected.items() if not torch.equal(got[k], v.float())]
    assert mismatched == []
    del unet, got, tensors, expected
    gc.collect()


def test_diffusers_folder_loads(tmp_path):
    ref = random_diffusers(TINY)
    ref.save_pretrained(tmp_path / "model" / "unet")
    for source in (tmp_path / "model", tmp_path / "model" / "unet",
                   tmp_path / "model" / "unet" / "diffusion_pytorch_model.safetensors"):
        unet = load_unet(source)
        assert unet.config == TINY
        assert_same_weights(unet, diffusers_to_project(ref.state_dict()))
    assert_same_output(unet, ref)


def test_export_to_diffusers_round_trip(tmp_path):
    ref = random_diffusers(TINY3)
    ref.save_pretrained(tmp_path / "in")
    ours = load_unet(tmp_path / "in")
    export_unet_to_diffusers(ours, tmp_path / "out")
    assert read_json(tmp_path / "out" / "unet" / "config.json") == TINY3.to_diffusers()
    exported = UNet2DConditionModel.from_pretrained(tmp_path / "out", subfolder="unet").eval()
    theirs = exported.state_dict()
    assert set(theirs) == set(ref.state_dict()) and all(torch.equal(theirs[k], v) for k, v in ref.state_dict().items())
    assert_same_output(ours, exported)


def test_project_layout_round_trip_is_exact(tmp_path):
    torch.manual_seed(0)
    unet = UNet(TINY).eval()
    save_unet(unet, tmp_path / "toy")
    assert sorted(p.name for p in (tmp_path / "toy").iterdir()) == ["unet.json", "unet.safetensors"]
    assert UNetConfig.from_dict(read_json(tmp_path / "toy" / "unet.json")) == TINY
    for source in (tmp_path / "toy", tmp_path / "toy" / "unet.safetensors"):
        back = load_unet(source)
        assert back.config == TINY
        assert_same_weights(back, unet.state_dict())
    x, t, context = inputs(TINY)
    with torch.no_grad():
        assert torch.equal(back(x, t, context), unet(x, t, context))  # same weights, same code: same bits


def test_pickled_checkpoint_is_refused_unless_opted_in(tmp_path):
    ref = random_diffusers(TINY)
    original = project_to_original(diffusers_to_project(ref.state_dict()), TINY)
    torch.save({"state_dict": {**original, **DECOYS}, "global_step": 1}, tmp_path / "sd.ckpt")
    with pytest.raises(WeightsFileError, match=r"(?s)sd\.ckpt is a pickled PyTorch file.*st\.save_file"):
        load_unet(tmp_path / "sd.ckpt", TINY)
    unet = load_unet(tmp_path / "sd.ckpt", TINY, allow_pickle_weights_only=True)
    assert_same_weights(unet, diffusers_to_project(ref.state_dict()))
    # A pickle is taken for an original checkpoint; one without its prefix says so.
    torch.save(ref.state_dict(), tmp_path / "diffusers.bin")
    with pytest.raises(ValueError, match=r"diffusers\.bin.*: no keys start with 'model\.diffusion_model\.'"):
        load_unet(tmp_path / "diffusers.bin", TINY, allow_pickle_weights_only=True)


# --- bad input ----------------------------------------------------------------------------------

def _project_file(folder, state_dict) -> None:
    write_safetensors(state_dict, folder / "unet.safetensors")
    write_json(TINY.to_dict(), folder / "unet.json")


def _tiny_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return UNet(TINY).state_dict()


def test_missing_key_is_listed(tmp_path):
    ref = random_diffusers(TINY)
    path = tmp_path / "model.safetensors"
    original = project_to_original(diffusers_to_project(ref.state_dict()), TINY)
    del original[f"{PREFIX}middle_block.1.proj_in.weight"]
    write_safetensors(original, path)
    with pytest.raises(WeightsMismatchError, match=r"missing \(1\):\n    mid_block\.attentions\.0\.proj_in\.weight"):
        load_unet(path, TINY)


def test_unexpected_key_is_listed(tmp_path):
    _project_file(tmp_path, {**_tiny_state(), "conv_in.extra": torch.zeros(1)})
    with pytest.raises(WeightsMismatchError, match=r"unexpected \(1\):\n    conv_in\.extra"):
        load_unet(tmp_path)


def test_misshaped_key_is_listed(tmp_path):
    _project_file(tmp_path, {**_tiny_state(), "conv_out.bias": torch.zeros(5)})
    with pytest.raises(WeightsMismatchError, match=re.escape("mis-shaped (key: got -> expected) (1):\n    "
                                                             "conv_out.bias: (5,) -> (4,)")):
        load_unet(tmp_path)


def test_tiny_original_file_does_not_fit_the_default_sd_v1_config(tmp_path):
    write_original(random_diffusers(TINY), TINY, tmp_path / "tiny.safetensors")
    # No config: SD v1 is assumed, and the shapes say no (conv_in is 32 wide here, 320 in SD v1).
    with pytest.raises(WeightsMismatchError, match=r"(?s)missing \(\d+\).*conv_in\.weight: \(32, 4, 3, 3\) -> "
                                                   r"\(320, 4, 3, 3\)"):
        load_unet(tmp_path / "tiny.safetensors")


def test_unknown_original_key_is_listed(tmp_path):
    unknown = {f"{PREFIX}input_blocks.99.0.in_layers.0.weight": torch.zeros(1),
               f"{PREFIX}label_emb.0.0.weight": torch.zeros(1),
               f"{PREFIX}input_blocks.1.0.in_layers.1.weight": torch.zeros(1)}  # in_layers.1 is the SiLU
    write_original(random_diffusers(TINY), TINY, tmp_path / "m.safetensors", extra={**DECOYS, **unknown})
    pattern = r"unexpected \(3\):" + "".join(rf"\n    {re.escape(k)}" for k in sorted(unknown))
    with pytest.raises(WeightsMismatchError, match=pattern):
        load_unet(tmp_path / "m.safetensors", TINY)


def test_diffusers_folder_without_config_is_refused(tmp_path):
    random_diffusers(TINY).save_pretrained(tmp_path / "model" / "unet")
    (tmp_path / "model" / "unet" / "config.json").unlink()
    with pytest.raises(WeightsFileError, match=r"diffusers folder .*unet has no config\.json"):
        load_unet(tmp_path / "model")


def test_project_folder_without_config_is_refused(tmp_path):
    write_safetensors(_tiny_state(), tmp_path / "unet.safetensors")
    with pytest.raises(WeightsFileError, match=r"has unet\.safetensors but no unet\.json"):
        load_unet(tmp_path)


def test_stored_config_must_match_a_given_one(tmp_path):
    random_diffusers(TINY).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"config UNetConfig\(.*\) differs from the one stored in .*config\.json"):
        load_unet(tmp_path, TINY3)
    with pytest.raises(ValueError, match="config must be a UNetConfig or None, got dict"):
        load_unet(tmp_path, TINY.to_dict())
    _project_file(tmp_path / "p", _tiny_state())
    (tmp_path / "p" / "unet.json").write_text('{"block_out_channels": [32, 64], "heads": 2}')
    with pytest.raises(ValueError, match=r"unet\.json: unknown UNetConfig keys \['heads'\]"):
        load_unet(tmp_path / "p")


def test_unrecognised_sources_are_refused(tmp_path):
    with pytest.raises(WeightsFileError, match=r"empty holds none of unet\.safetensors \+ unet\.json"):
        (tmp_path / "empty").mkdir()
        load_unet(tmp_path / "empty")
    with pytest.raises(WeightsFileError, match="does not exist; expected a weights file or a model folder"):
        load_unet(tmp_path / "nowhere")
    write_safetensors(project_to_diffusers(_tiny_state()), tmp_path / "loose.safetensors")
    with pytest.raises(WeightsFileError, match=r"loose\.safetensors has no model\.diffusion_model\.\* keys"):
        load_unet(tmp_path / "loose.safetensors")
    with pytest.raises(ValueError, match=r"expected a UNet \(U-Net\), got UNet2DConditionModel"):
        save_unet(random_diffusers(TINY), tmp_path / "x")
