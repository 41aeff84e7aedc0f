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

from dataclasses import dataclass

from ldm.clip_config import CLIPTextConfig
from ldm.tokenizer import WordTokenizer
from ldm.vae_config import VAEConfig
from unet.config import UNetConfig

from .scenes import SCENE_VOCABULARY
from .world import IMAGE_SIZE, VOCABULARY

TEXT_WIDTH = 64


def toy_tokenizer(vocabulary: tuple[str, ...] = VOCABULARY) -> WordTokenizer:
    """One token per word of the caption grammar: ids 0..25 the words, then <pad>, <bos>, <eos>."""
    return WordTokenizer(list(vocabulary))


def toy_vae_config(scaling_factor: float = 1.0) -> VAEConfig:
    return VAEConfig(block_out_channels=(32, 32, 64, 64), layers_per_block=1, norm_num_groups=8,
                     scaling_factor=scaling_factor)


def toy_text_config(vocabulary: tuple[str, ...] = VOCABULARY) -> CLIPTextConfig:
    tok = toy_tokenizer(vocabulary)
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


@dataclass(frozen=True)
class ToyRecipe:
    """What ``python -m toyworld.train --recipe NAME`` builds and trains.

    ``world`` is "single" (``world.ToyDataset``: one object, the first model) or "scenes"
    (``scenes.SceneDataset``: one to three objects on plain or structured backgrounds).
    ``text_training`` is "joint" (the text encoder learns with the U-Net, as the first model did) or
    "frozen" (it is first trained contrastively against an image encoder, CLIP's objective, and then
    frozen while the U-Net learns, as SD freezes CLIP; see ``toyworld/clip_pretrain.py``)."""

    name: str
    world: str
    text_training: str
    vae: VAEConfig
    unet: UNetConfig
    text: CLIPTextConfig
    vocabulary: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.world not in ("single", "scenes"):
            raise ValueError(f"world must be 'single' or 'scenes', got {self.world!r}")
        if self.text_training not in ("joint", "frozen"):
            raise ValueError(f"text_training must be 'joint' or 'frozen', got {self.text_training!r}")

    @property
    def latent_side(self) -> int:
        return IMAGE_SIZE // self.vae.downsample_factor

    def tokenizer(self) -> WordTokenizer:
        return toy_tokenizer(self.vocabulary)


def _scene_unet(widths: tuple[int, ...] = (32, 64, 96), attention: tuple[bool, ...] = (False, True, True)) -> UNetConfig:
    return UNetConfig(block_out_channels=widths, layers_per_block=1, attention_levels=attention,
                      cross_attention_dim=TEXT_WIDTH, num_heads=4, norm_num_groups=8)


# The second world's autoencoder: f = 4, so 64x64 images <-> 16x16x4 latents (LDM's f = 4 models);
# a 16-channel full-resolution level keeps stage 1 as cheap as the first model's f = 8 one.
SCENE_VAE = VAEConfig(block_out_channels=(16, 32, 64), layers_per_block=1, norm_num_groups=8)
RECIPES = {
    "toy1": ToyRecipe("toy1", "single", "joint", toy_vae_config(), toy_unet_config(), toy_text_config(), VOCABULARY),
    # The design study of the second model (see toyworld/STUDY.md): 16x16 latents, a U-Net of three
    # levels (16, 8, 4) with attention at 8x8 and 4x4 (1/4 of the latent side) and in the middle.
    "toy2-joint": ToyRecipe("toy2-joint", "scenes", "joint", SCENE_VAE, _scene_unet(),
                            toy_text_config(SCENE_VOCABULARY), SCENE_VOCABULARY),
    "toy2-frozen": ToyRecipe("toy2-frozen", "scenes", "frozen", SCENE_VAE, _scene_unet(),
                             toy_text_config(SCENE_VOCABULARY), SCENE_VOCABULARY),
    # The study's width arm: every level 1.5x as wide (48/96/144 channels), 2.2x the parameters
    # (6.1M against 2.7M); on two processes of one thread it trains as fast as toy2-frozen (STUDY.md).
    "toy2-frozen-wide": ToyRecipe("toy2-frozen-wide", "scenes", "frozen", SCENE_VAE,
                                  _scene_unet(widths=(48, 96, 144)), toy_text_config(SCENE_VOCABULARY),
                                  SCENE_VOCABULARY),
    # The study's attention arm: cross- and self-attention at 16x16 too (one latent pixel is 4 image
    # pixels there, so a word's map can follow an object's outline); 2.2x the cost of a step on one
    # thread, 1.4x on two processes (1.2 against 1.7 steps a second, STUDY.md).
    "toy2-frozen-a16": ToyRecipe("toy2-frozen-a16", "scenes", "frozen", SCENE_VAE,
                                 _scene_unet(attention=(True, True, True)),
                                 toy_text_config(SCENE_VOCABULARY), SCENE_VOCABULARY),
}
