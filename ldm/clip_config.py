"""The CLIP text encoder's configuration: one small dataclass, the SD v1 preset, transformers' config.json.

SD v1 conditions on the text tower of OpenAI's CLIP ViT-L/14 (``openai/clip-vit-large-patch14``;
Radford et al. 2021, section 2.4): a 12-layer, 768-wide, 12-head causal transformer over at most
77 byte-pair tokens from a 49408-entry vocabulary, 123M parameters. The tokenizer brackets every
prompt with ``<|startoftext|>`` (id 49406) and ``<|endoftext|>`` (id 49407, the largest id) and SD's
tokenizer pads the rest of the 77 positions with ``<|endoftext|>`` too.

The field names are transformers' ``CLIPTextConfig`` names, so :meth:`from_transformers` and
:meth:`to_transformers` are near copies; the fields that only matter for training (dropout,
initialisation) or for the CLIP image tower (``projection_dim``) are not kept.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from weights.config_json import JsonConfig

# transformers configs written before its PR #24773 (SD v1's text_encoder/config.json among them)
# carry placeholder special-token ids, and transformers then pools at the largest id of each row.
LEGACY_TOKEN_IDS = {"bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1}
ACTIVATIONS = ("quick_gelu", "gelu")  # CLIP ViT-L/14 (SD v1) uses quick_gelu; OpenCLIP towers use gelu


@dataclass(frozen=True)
class CLIPTextConfig(JsonConfig):
    vocab_size: int = 49408
    hidden_size: int = 768
    intermediate_size: int = 3072  # the MLP's inner width, 4 x hidden_size
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    max_position_embeddings: int = 77  # the longest token sequence, and the context length of SD v1
    layer_norm_eps: float = 1e-5
    hidden_act: str = "quick_gelu"
    bos_token_id: int = 49406  # <|startoftext|>
    eos_token_id: int = 49407  # <|endoftext|>: the pooled output is read at its first position
    pad_token_id: int = 49407  # SD v1's tokenizer pads with <|endoftext|>

    LIMITS: ClassVar[dict[str, tuple[float, float]]] = {
        "vocab_size": (1, 1_000_000), "hidden_size": (1, 16384), "intermediate_size": (1, 65536),
        "num_hidden_layers": (1, 128), "num_attention_heads": (1, 1024), "max_position_embeddings": (1, 4096),
        "layer_norm_eps": (1e-12, 1.0)}

    def __post_init__(self) -> None:
        self.check_fields()
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads={self.num_attention_heads}"
            )
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act {self.hidden_act!r} is not supported; expected one of {ACTIVATIONS}")
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value < self.vocab_size:
                raise ValueError(f"{name}={value!r} is not a token id of a vocabulary of {self.vocab_size}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def sd_v1(cls) -> "CLIPTextConfig":
        """The text tower of ``openai/clip-vit-large-patch14``, Stable Diffusion v1's text encoder."""
        return cls()

    @classmethod
    def tiny(cls) -> "CLIPTextConfig":
        """A 2-layer, 32-wide CLIP text encoder over 1000 ids, with SD v1's structure and 77 positions,
        for tests and CPU notebooks. Its last two ids play <|startoftext|> and <|endoftext|>."""
        return cls(vocab_size=1000, hidden_size=32, intermediate_size=128, num_hidden_layers=2,
                   num_attention_heads=4, bos_token_id=998, eos_token_id=999, pad_token_id=999)

    # transformers' config.json ---------------------------------------------------------------
    @classmethod
    def from_transformers(cls, config: dict[str, Any]) -> "CLIPTextConfig":
        """Read a transformers ``CLIPTextConfig`` (a diffusers ``text_encoder/config.json``).

        A whole ``CLIPConfig`` (with ``text_config``) is read for its text tower. A legacy config
        (bos 0, eos 2, pad 1: SD v1.x's own) makes transformers pool at each row's largest id; with
        CLIP's vocabulary that is the first ``<|endoftext|>``, the largest id, so it is read as
        bos = V - 2, eos = pad = V - 1 for a vocabulary of V ids, which pools at the same position.
        """
        if not isinstance(config, dict):
            raise ValueError(f"expected a transformers CLIPTextConfig dict, got {type(config).__name__}")
        if isinstance(config.get("text_config"), dict):
            config = config["text_config"]
        model_type = config.get("model_type", "clip_text_model")
        if model_type != "clip_text_model":
            raise ValueError(f"model_type {model_type!r} is not a CLIP text model; expected 'clip_text_model'")
        fields = {k: config[k] for k in cls.__dataclass_fields__ if k in config}
        tokens = {k: config.get(k) for k in LEGACY_TOKEN_IDS}
        if tokens["eos_token_id"] == LEGACY_TOKEN_IDS["eos_token_id"]:
            vocab = fields.get("vocab_size", cls.vocab_size)
            fields.update(bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=vocab - 1)
        elif tokens["pad_token_id"] is None:
            fields["pad_token_id"] = fields.get("eos_token_id", cls.eos_token_id)
        return cls(**fields)

    def to_transformers(self) -> dict[str, Any]:
        """The transformers ``CLIPTextConfig`` dict that builds the same network (as config.json)."""
        return {
            "architectures": ["CLIPTextModel"],
            "model_type": "clip_text_model",
            **self.to_dict(),
            "projection_dim": self.hidden_size,
            "attention_dropout": 0.0,
            "dropout": 0.0,
            "initializer_factor": 1.0,
            "initializer_range": 0.02,
            "torch_dtype": "float32",
        }
