"""The toy model: Stable Diffusion v1's three networks at a size a CPU trains in about two hours.

    VAE            SD v1's KL autoencoder, f = 8 and 4 latent channels: 64x64x3 images <-> 8x8x4
                   latents; levels of 32/32/64/64 channels, one ResBlock per encoder level.
    text encoder   CLIP's causal text transformer over the toy world's 26 words (+ pad, bos, eos):
                   2 layers, 64 wide, 4 heads, 77 positions like SD's.
    U-Net          SD v1's U-Net on 8x8x4 latents: two levels of 32/64 channels, self- and
                   cross-attention at both resolutions (8x8 and 4x4) and in the middle.

Everything else is SD v1's: the scaled-linear noise schedule over 1000 steps, epsilon
prediction, DDIM sampling with steps offset 1, classifier-free guidance with the empty prompt.
Only the latent scale differs: it is measured as 1 / std of this VAE's latents after training
(LDM appendix G), as 0.18215 was for SD's.
"""
from __future__ import annotations

from ldm.clip_config import CLIPTextConfig
from ldm.tokenizer import WordTokenizer
from ldm.vae_config import VAEConfig
from unet.config import UNetConfig

from .world import IMAGE_SIZE, VOCABULARY

TEXT_WIDTH = 64


def toy_tokenizer() -> WordTokenizer:
    """One token per word of the caption grammar: ids 0..25 the words, then <pad>, <bos>, <eos>."""
    return WordTokenizer(list(VOCABULARY))


def toy_vae_config(scaling_factor: float = 1.0) -> VAEConfig:
    return VAEConfig(block_out_channels=(32, 32, 64, 64), layers_per_block=1, norm_num_groups=8,
                     scaling_factor=scaling_factor)


def toy_text_config() -> CLIPTextConfig:
    tok = toy_tokenizer()
    return CLIPTextConfig(vocab_size=tok.vocab_size, hidden_size=TEXT_WIDTH, intermediate_size=4 * TEXT_WIDTH,
                          num_hidden_layers=2, num_attention_heads=4, bos_token_id=tok.bos_id,
                          eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)


def toy_unet_config() -> UNetConfig:
    return UNetConfig(block_out_channels=(32, 64), layers_per_block=1, attention_levels=(True, True),
                      cross_attention_dim=TEXT_WIDTH, num_heads=4, norm_num_groups=8)


TOY_SCHEDULE = {  # SD v1's training schedule and sampling offset (weights/model_folder.py)
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "num_train_timesteps": 1000,
    "steps_offset": 1,
}
TOY_IMAGE_SIZE = IMAGE_SIZE
# The classifier-free guidance scale the toy model samples with by default: chosen by
# ``benchmarks/toy_quality.py --sweep`` (fidelity against guidance; see README, "The toy model").
TOY_GUIDANCE_SCALE = 5.0
