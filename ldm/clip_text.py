"""The CLIP text encoder tau(y): token ids (B, 77) -> context (B, 77, 768) for the U-Net's cross-attention.

CLIP's text tower (Radford et al. 2021, section 2.4) is a GPT-2-style transformer (Vaswani et al.
2017; Radford et al. 2019): a stack of pre-LayerNorm blocks with *masked* (causal) self-attention,
so position i sees the tokens 0..i only. For token ids y_1..y_L (L <= 77):

    h^0_i  = E_tok[y_i] + E_pos[i]                                 token + learned position embedding
    h'     = h^{l-1} + W_O MHA(LN_1(h^{l-1}))                      for l = 1..N (N = 12), pre-LN residual
    h^l    = h'      + W_2 act(W_1 LN_2(h') + b_1) + b_2           the MLP, 4 x wide
    out    = LN_f(h^N)                                             (B, L, 768): SD v1's context

with each attention head (Vaswani et al. 2017, Eq. 1) masked to the past:

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d) + M) V,    M_ij = 0 if j <= i else -inf

and act the "quick GELU" of OpenAI's CLIP code, a sigmoid approximation of GELU(x) = x Phi(x)
(Hendrycks & Gimpel 2016, section 2):

    quick_gelu(x) = x * sigmoid(1.702 x)

SD v1 uses the whole (B, 77, 768) ``last_hidden_state`` as the U-Net's context. CLIP itself
summarises the text by the final state at the ``<|endoftext|>`` token ("the activations of the
highest layer of the transformer at the [EOS] token are treated as the feature representation
of the text", section 2.4): the ``pooled`` output, read at each row's *first* end token, since SD's
tokenizer also pads with it and, the mask being causal, the pads after it see the same text.

Parameter names are those of transformers' ``CLIPTextModel``
(``text_model.encoder.layers.3.self_attn.q_proj.weight``), so its state dict loads unrenamed.
Positions are always 0..L-1, so the model keeps no ``position_ids`` buffer.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .clip_config import CLIPTextConfig


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """x * sigmoid(1.702 x): OpenAI CLIP's sigmoid approximation of GELU."""
    return x * torch.sigmoid(1.702 * x)


ACTIVATION = {"quick_gelu": quick_gelu, "gelu": F.gelu}


class CLIPTextOutput(NamedTuple):
    last_hidden_state: torch.Tensor  # (B, L, C): SD v1's context
    pooled: torch.Tensor  # (B, C): the final state at each row's first <|endoftext|>


class CLIPEmbeddings(nn.Module):
    """h^0_i = E_tok[y_i] + E_pos[i]."""

    def __init__(self, config: CLIPTextConfig) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size)  # E_tok
        self.position_embedding = nn.Embedding(config.max_position_embeddings, config.hidden_size)  # E_pos

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids (B, L) -> (B, L, C)."""
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)  # (L,): 0..L-1
        return self.token_embedding(input_ids) + self.position_embedding(positions)  # (B, L, C) + (L, C)


class CLIPAttention(nn.Module):
    """Multi-head causal self-attention, Eq. 1 with the mask M; Q, K, V and out projections have biases."""

    def __init__(self, config: CLIPTextConfig) -> None:
        super().__init__()
        self.heads = config.num_attention_heads
        width = config.hidden_size
        self.q_proj = nn.Linear(width, width)  # W_Q
        self.k_proj = nn.Linear(width, width)  # W_K
        self.v_proj = nn.Linear(width, width)  # W_V
        self.out_proj = nn.Linear(width, width)  # W_O, mixes the concatenated heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, L, C) -> (B, L, C); position i attends to positions 0..i."""
        q = rearrange(self.q_proj(x), "b l (h d) -> b h l d", h=self.heads)  # (B, heads, L, d)
        k = rearrange(self.k_proj(x), "b l (h d) -> b h l d", h=self.heads)  # (B, heads, L, d)
        v = rearrange(self.v_proj(x), "b l (h d) -> b h l d", h=self.heads)  # (B, heads, L, d)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, heads, L, d): Eq. 1 with M
        out = rearrange(out, "b h l d -> b l (h d)")  # (B, L, C): heads concatenated
        return self.out_proj(out)  # (B, L, C)


class CLIPMLP(nn.Module):
    """W_2 act(W_1 x + b_1) + b_2, to ``intermediate_size`` (4 x C) and back."""

    def __init__(self, config: CLIPTextConfig) -> None:
        super().__init__()
        self.act = ACTIVATION[config.hidden_act]
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)  # W_1, b_1
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)  # W_2, b_2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))  # (B, L, C) -> (B, L, 4C) -> (B, L, C)


class CLIPEncoderLayer(nn.Module):
    """One pre-LayerNorm block: h' = h + attn(LN_1(h)), then h' + mlp(LN_2(h'))."""

    def __init__(self, config: CLIPTextConfig) -> None:
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = CLIPAttention(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = CLIPMLP(config)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h (B, L, C) -> (B, L, C)."""
        h = h + self.self_attn(self.layer_norm1(h))  # (B, L, C)
        return h + self.mlp(self.layer_norm2(h))  # (B, L, C)


class CLIPEncoder(nn.Module):
    """The N blocks, applied in order."""

    def __init__(self, config: CLIPTextConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(CLIPEncoderLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            h = layer(h)  # (B, L, C)
        return h


class CLIPTextTransformer(nn.Module):
    """Embeddings, the N blocks, LN_f: ids (B, L) -> out (B, L, C). Held as ``text_model`` for the names."""

    def __init__(self, config: CLIPTextConfig) -> None:
        super().__init__()
        self.embeddings = CLIPEmbeddings(config)
        self.encoder = CLIPEncoder(config)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        h = self.embeddings(input_ids)  # (B, L, C): h^0
        h = self.encoder(h)  # (B, L, C): h^N
        return self.final_layer_norm(h)  # (B, L, C)


class CLIPTextModel(nn.Module):
    """CLIP's text encoder: ``model(input_ids)`` -> (last_hidden_state (B, L, C), pooled (B, C)).

    ``input_ids`` are int64 (or int32) token ids of shape (B, L), 1 <= L <= 77, each row holding
    ``config.eos_token_id`` at least once (as a CLIP tokenizer makes them). SD v1 passes L = 77.
    """

    def __init__(self, config: CLIPTextConfig) -> None:
        super().__init__()
        if not isinstance(config, CLIPTextConfig):
            raise ValueError(f"config must be a CLIPTextConfig, got {type(config).__name__}")
        self.config = config
        self.text_model = CLIPTextTransformer(config)

    def check_input_ids(self, input_ids: torch.Tensor) -> None:
        """Raise a ValueError naming what is wrong with ``input_ids``, before any work."""
        c = self.config
        if not isinstance(input_ids, torch.Tensor):
            raise ValueError(f"input_ids must be a torch.Tensor of token ids, got {type(input_ids).__name__}")
        if input_ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"input_ids must be int64 or int32 token ids, got dtype {input_ids.dtype}")
        if input_ids.ndim != 2 or input_ids.shape[0] < 1:
            raise ValueError(f"input_ids must have shape (B, L), got {tuple(input_ids.shape)}")
        if not 1 <= input_ids.shape[1] <= c.max_position_embeddings:
            raise ValueError(
                f"sequence length {input_ids.shape[1]} is not in 1..{c.max_position_embeddings} "
                f"(max_position_embeddings); truncate the prompt's tokens"
            )
        low, high = input_ids.min().item(), input_ids.max().item()
        if low < 0 or high >= c.vocab_size:
            bad = low if low < 0 else high
            raise ValueError(f"token id {bad} is outside the vocabulary 0..{c.vocab_size - 1}")
        without_eos = (~(input_ids == c.eos_token_id).any(dim=1)).nonzero().flatten().tolist()
        if without_eos:
            raise ValueError(
                f"rows {without_eos} of input_ids hold no end token (eos_token_id={c.eos_token_id}); "
                f"the pooled output is read there"
            )

    def forward(self, input_ids: torch.Tensor) -> CLIPTextOutput:
        """input_ids (B, L) -> CLIPTextOutput(last_hidden_state (B, L, C), pooled (B, C))."""
        self.check_input_ids(input_ids)
        input_ids = input_ids.long()
        out = self.text_model(input_ids)  # (B, L, C)
        first_eos = (input_ids == self.config.eos_token_id).int().argmax(dim=1)  # (B,): argmax takes the first 1
        pooled = out[torch.arange(out.shape[0], device=out.device), first_eos]  # (B, C)
        return CLIPTextOutput(out, pooled)
