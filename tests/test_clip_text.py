"""The CLIP text encoder: parity with transformers' ``CLIPTextModel``, the causal mask, weight loading
from the three layouts, and bad input.

Parity is output for output with the same random weights, at a tiny config and at SD v1's real
text config (123M parameters), with ids shaped like SD's tokenizer's: <|startoftext|>, the prompt,
<|endoftext|>, then <|endoftext|> as padding up to 77.
"""
from __future__ import annotations

import gc
import json

import pytest
import torch
import transformers

from ldm.clip_config import CLIPTextConfig
from ldm.clip_text import CLIPTextModel, quick_gelu
from weights.checks import WeightsMismatchError
from weights.clip_loading import (
    POSITION_IDS, PREFIX, diffusers_to_project, export_text_encoder_to_diffusers, load_text_encoder,
    project_to_original, save_text_encoder,
)
from weights.io import read_safetensors, write_json, write_safetensors

TINY = CLIPTextConfig.tiny()
SD = CLIPTextConfig.sd_v1()
DECOYS = {  # the rest of a full SD checkpoint, which the text-encoder loader must ignore
    "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3),
    "first_stage_model.decoder.conv_in.weight": torch.zeros(2, 2),
    "model_ema.decay": torch.tensor(0.9999),
    "alphas_cumprod": torch.linspace(1, 0, 10),
}


def tolerance(reference: torch.Tensor) -> float:
    """fp32's own rounding error, measured by ``python tests/test_clip_text.py`` (the same random
    weights run in fp32 and fp64): transformers fp32 is off its fp64 result by at most 1.2e-6 (tiny)
    and 2.4e-6 (SD v1, where max |out| = 4.75), i.e. 5e-7 of the output's scale; ours sits 0.0 from
    transformers fp32 (the same operations in the same order). 5e-6 of the scale is about 10x fp32's
    own error, while one wrong weight, mask or pooling position changes outputs by O(1)."""
    return 5e-6 * reference.abs().max().item()


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Weights that exercise everything: unit-scale embeddings, Linears that keep unit variance (so the
    attention logits are O(1), not uniform), LayerNorm gains 1 +- 0.1 and biases of 0.1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "embedding" in name:
                p.copy_(noise)
            elif p.ndim == 2:
                p.copy_(noise * p.shape[1] ** -0.5)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * noise)
            else:
                p.copy_(0.1 * noise)


def reference_model(config: CLIPTextConfig, seed: int = 0, **overrides) -> transformers.CLIPTextModel:
    torch.manual_seed(seed)
    ref_config = transformers.CLIPTextConfig(**{**config.to_transformers(), **overrides})
    ref = transformers.CLIPTextModel(ref_config).eval()
    randomize(ref, seed)
    return ref


def ours_from(ref: transformers.CLIPTextModel, config: CLIPTextConfig) -> CLIPTextModel:
    ours = CLIPTextModel(config).eval()
    ours.load_state_dict(diffusers_to_project(ref.state_dict(), config, "reference"), strict=True)
    return ours


def sd_like_ids(config: CLIPTextConfig, lengths: list[int], seq_len: int = 77, seed: int = 1) -> torch.Tensor:
    """<bos> prompt <eos> <pad = eos>...: ``lengths`` prompt tokens per row, drawn from the ordinary ids."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.full((len(lengths), seq_len), config.pad_token_id, dtype=torch.long)  # (B, L)
    for row, n in enumerate(lengths):
        ids[row, 0] = config.bos_token_id
        ids[row, 1:n + 1] = torch.randint(0, config.vocab_size - 2, (n,), generator=g)
        ids[row, n + 1] = config.eos_token_id
    return ids


@torch.no_grad()
def assert_parity(ours: CLIPTextModel, ref: transformers.CLIPTextModel, ids: torch.Tensor) -> None:
    out, expected = ours(ids), ref(input_ids=ids)
    assert out.last_hidden_state.shape == (*ids.shape, ours.config.hidden_size)
    assert out.pooled.shape == (ids.shape[0], ours.config.hidden_size)
    for got, want in ((out.last_hidden_state, expected.last_hidden_state), (out.pooled, expected.pooler_output)):
        torch.testing.assert_close(got, want, rtol=0, atol=tolerance(want))


# --- parity -------------------------------------------------------------------------------------
@pytest.mark.parametrize("seq_len, lengths", [(77, [3, 40, 75]), (12, [0, 10])])
def test_parity_tiny(seq_len, lengths):
    ref = reference_model(TINY)
    assert_parity(ours_from(ref, TINY), ref, sd_like_ids(TINY, lengths, seq_len))


def test_parity_tiny_gelu():
    config = CLIPTextConfig(**{**TINY.to_dict(), "hidden_act": "gelu"})
    ref = reference_model(config)
    assert_parity(ours_from(ref, config), ref, sd_like_ids(config, [5, 30]))


def test_legacy_config_pools_where_transformers_does():
    """SD v1's config.json says eos 2; transformers then pools at each row's largest id. Read as
    eos = V - 1, ours pools at the first <|endoftext|>, the same position for CLIP-style ids."""
    legacy = {**TINY.to_transformers(), "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1}
    config = CLIPTextConfig.from_transformers(legacy)
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (998, 999, 999)
    ref = reference_model(TINY, bos_token_id=0, eos_token_id=2, pad_token_id=1)
    assert ref.config.eos_token_id == 2  # transformers takes its argmax branch
    assert_parity(ours_from(ref, config), ref, sd_like_ids(config, [7, 20, 60]))


def test_parity_sd_v1():
    """SD v1.5's text encoder at full size (123M parameters), batch 2 of 77 ids."""
    ref = reference_model(SD)
    ours = ours_from(ref, SD)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())
    assert_parity(ours, ref, sd_like_ids(SD, [8, 50]))
    del ref, ours
    gc.collect()


# --- maths --------------------------------------------------------------------------------------
def test_quick_gelu_approximates_gelu():
    """x sigmoid(1.702 x) is within 0.021 of x Phi(x) everywhere (measured max 0.0203, at |x| = 2.27)."""
    x = torch.linspace(-8, 8, 2001, dtype=torch.float64)
    err = (quick_gelu(x) - torch.nn.functional.gelu(x)).abs().max().item()
    assert 0.005 < err < 0.021  # an approximation, close but not GELU itself


@torch.no_grad()
def test_causal_mask_and_pooling_position():
    """Changing token j changes no output at positions < j; the pooled output is the final state at
    the first <|endoftext|>, so padding after it changes the pooled output not at all."""
    torch.manual_seed(0)
    model = CLIPTextModel(TINY).eval()
    randomize(model, 0)
    ids = sd_like_ids(TINY, [10, 20])
    out = model(ids)
    changed = ids.clone()
    changed[:, 30] = 5  # after both rows' first eos (positions 11 and 21)
    out2 = model(changed)
    torch.testing.assert_close(out2.last_hidden_state[:, :30], out.last_hidden_state[:, :30], rtol=0, atol=0)
    assert (out2.last_hidden_state[:, 30] - out.last_hidden_state[:, 30]).abs().max() > 0.1
    torch.testing.assert_close(out2.pooled, out.pooled, rtol=0, atol=0)
    torch.testing.assert_close(out.pooled, out.last_hidden_state[[0, 1], [11, 21]], rtol=0, atol=0)


# --- config -------------------------------------------------------------------------------------
@pytest.mark.parametrize("config", [TINY, SD])
def test_config_round_trips(config):
    assert CLIPTextConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert CLIPTextConfig.from_transformers(config.to_transformers()) == config
    ref = transformers.CLIPTextConfig(**config.to_transformers())
    assert CLIPTextConfig.from_transformers(ref.to_dict()) == config


def test_config_bad_values():
    with pytest.raises(ValueError, match="unknown CLIPTextConfig keys \\['hidden'\\]"):
        CLIPTextConfig.from_dict({"hidden": 3})
    with pytest.raises(ValueError, match="hidden_act 'relu' is not supported"):
        CLIPTextConfig(hidden_act="relu")
    with pytest.raises(ValueError, match="hidden_size 32 is not divisible by num_attention_heads=5"):
        CLIPTextConfig(**{**TINY.to_dict(), "num_attention_heads": 5})
    with pytest.raises(ValueError, match="eos_token_id=49407 is not a token id of a vocabulary of 1000"):
        CLIPTextConfig(vocab_size=1000, bos_token_id=0, pad_token_id=0)
    with pytest.raises(ValueError, match="model_type 'clip_vision_model' is not a CLIP text model"):
        CLIPTextConfig.from_transformers({"model_type": "clip_vision_model"})


# --- bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize("mutate, message", [
    (lambda ids: ids.float(), "must be int64 or int32 token ids, got dtype torch.float32"),
    (lambda ids: ids[0], "must have shape \\(B, L\\), got \\(77,\\)"),
    (lambda ids: torch.cat([ids, ids[:, -1:]], dim=1), "sequence length 78 is not in 1..77"),
    (lambda ids: ids.index_fill(1, torch.tensor([3]), 1000), "token id 1000 is outside the vocabulary 0..999"),
    (lambda ids: ids.index_fill(1, torch.tensor([3]), -1), "token id -1 is outside the vocabulary 0..999"),
    (lambda ids: torch.where(torch.arange(2)[:, None] == 1, torch.full_like(ids, 4), ids),
     "rows \\[1\\] of input_ids hold no end token \\(eos_token_id=999\\)"),
])
def test_bad_input_ids(mutate, message):
    model = CLIPTextModel(TINY)
    with pytest.raises(ValueError, match=message):
        model(mutate(sd_like_ids(TINY, [3, 4])))


# --- weights: the three layouts -----------------------------------------------------------------
@pytest.fixture
def tiny_model() -> CLIPTextModel:
    torch.manual_seed(0)
    model = CLIPTextModel(TINY).eval()
    randomize(model, 3)
    return model


def assert_same_weights(model: CLIPTextModel, expected: CLIPTextModel) -> None:
    got, want = model.state_dict(), expected.state_dict()
    assert set(got) == set(want)
    for k, v in want.items():
        assert got[k].dtype == torch.float32 and torch.equal(got[k], v), k


def test_project_layout_round_trip(tiny_model, tmp_path):
    save_text_encoder(tiny_model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["text_encoder.json", "text_encoder.safetensors"]
    loaded = load_text_encoder(tmp_path)
    assert loaded.config == TINY and not loaded.training
    assert_same_weights(loaded, tiny_model)
    assert_same_weights(load_text_encoder(tmp_path / "text_encoder.safetensors", config=TINY), tiny_model)


@torch.no_grad()
def test_diffusers_export_loads_in_transformers_and_back(tiny_model, tmp_path):
    export_text_encoder_to_diffusers(tiny_model, tmp_path)
    ref = transformers.CLIPTextModel.from_pretrained(tmp_path, subfolder="text_encoder").eval()
    assert_parity(tiny_model, ref, sd_like_ids(TINY, [2, 30]))
    assert_same_weights(load_text_encoder(tmp_path), tiny_model)  # the model folder
    assert_same_weights(load_text_encoder(tmp_path / "text_encoder"), tiny_model)  # its subfolder


def test_diffusers_layouts_of_both_transformers_versions(tiny_model, tmp_path):
    """transformers 5's save_pretrained (no text_model. prefix) and an SD v1.5-era folder
    (text_model.*, a position_ids buffer, the legacy eos 2 config) both load."""
    ref = transformers.CLIPTextModel(transformers.CLIPTextConfig(**TINY.to_transformers()))
    ref.load_state_dict({k.removeprefix("text_model."): v for k, v in tiny_model.state_dict().items()})
    assert "embeddings.position_ids" not in ref.state_dict()  # transformers 5: a non-persistent buffer
    ref.save_pretrained(tmp_path / "v5" / "text_encoder")
    saved = read_safetensors(tmp_path / "v5" / "text_encoder" / "model.safetensors")
    assert not any(k.startswith("text_model.") for k in saved)
    assert_same_weights(load_text_encoder(tmp_path / "v5"), tiny_model)

    old = tmp_path / "v4" / "text_encoder"
    write_safetensors({**tiny_model.state_dict(), POSITION_IDS: torch.arange(77)[None]}, old / "model.safetensors")
    write_json({**TINY.to_transformers(), "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1}, old / "config.json")
    loaded = load_text_encoder(tmp_path / "v4")
    assert loaded.config == TINY
    assert_same_weights(loaded, tiny_model)


def write_original(model: CLIPTextModel, path, extra: dict) -> None:
    write_safetensors({**project_to_original(model.state_dict()), **DECOYS, **extra}, path)


def test_original_layout_with_decoys_and_position_ids(tiny_model, tmp_path):
    path = tmp_path / "sd.safetensors"
    write_original(tiny_model, path, {PREFIX + POSITION_IDS: torch.arange(77.0)[None]})  # float, as some merges
    assert_same_weights(load_text_encoder(path, config=TINY), tiny_model)
    write_original(tiny_model, path, {})  # an original without position_ids
    assert_same_weights(load_text_encoder(path, config=TINY), tiny_model)


def test_original_layout_bad_files(tiny_model, tmp_path):
    path = tmp_path / "sd.safetensors"
    write_original(tiny_model, path, {PREFIX + POSITION_IDS: torch.arange(76)[None]})
    with pytest.raises(WeightsMismatchError, match="position_ids: \\(1, 76\\) -> \\(1, 77\\)"):
        load_text_encoder(path, config=TINY)
    write_original(tiny_model, path, {})
    with pytest.raises(WeightsMismatchError, match="token_embedding.weight: \\(1000, 32\\) -> \\(49408, 768\\)"):
        load_text_encoder(path)  # an original file is read as SD v1 unless a config is given
    with pytest.raises(ValueError, match="config must be a CLIPTextConfig or None, got dict"):
        load_text_encoder(path, config=TINY.to_dict())


def test_missing_and_unexpected_keys_are_listed(tiny_model, tmp_path):
    save_text_encoder(tiny_model, tmp_path)
    sd = tiny_model.state_dict()
    missing = "text_model.encoder.layers.1.mlp.fc2.bias"
    del sd[missing]
    sd["text_model.text_projection.weight"] = torch.zeros(2, 2)
    write_safetensors(sd, tmp_path / "text_encoder.safetensors")
    with pytest.raises(WeightsMismatchError, match=f"missing \\(1\\):\\n    {missing}") as e:
        load_text_encoder(tmp_path)
    assert "unexpected (1):\n    text_model.text_projection.weight" in str(e.value)


def test_stored_config_must_match_given(tiny_model, tmp_path):
    save_text_encoder(tiny_model, tmp_path)
    with pytest.raises(ValueError, match="differs from the one stored in"):
        load_text_encoder(tmp_path, config=SD)
    with pytest.raises(ValueError, match=r"expected a CLIPTextModel \(text encoder\), got dict"):
        save_text_encoder({}, tmp_path)


@torch.no_grad()
def measure_fp32_error(config: CLIPTextConfig) -> None:
    """Print max |ours - transformers| in fp32 and max |transformers fp32 - transformers fp64|."""
    ref = reference_model(config)
    ours = ours_from(ref, config)
    ids = sd_like_ids(config, [8, 50])
    out, ref32 = ours(ids), ref(input_ids=ids)
    ref64 = ref.double()(input_ids=ids)
    for name, a, b, c in (
        ("last_hidden_state", out.last_hidden_state, ref32.last_hidden_state, ref64.last_hidden_state),
        ("pooled", out.pooled, ref32.pooler_output, ref64.pooler_output),
    ):
        print(f"{name:>18}: ours - transformers32 {(a - b).abs().max().item():.3g}, transformers32 - "
              f"transformers64 {(b.double() - c).abs().max().item():.3g}, max |out| {c.abs().max().item():.3g}")


if __name__ == "__main__":
    for name, config in (("tiny", TINY), ("sd_v1", SD)):
        print(name)
        measure_fp32_error(config)
