"""Attention in the U-Net: multi-head self/cross attention, GEGLU feed-forward, the transformer block
and the spatial transformer that runs it on a feature map.

Scaled dot-product attention (Vaswani et al. 2017, Eq. 1), per head, with d the head width:

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d)) V

The LDM conditions the U-Net through cross-attention (Rombach et al. 2022, section 3.3, the
display just before the conditional objective, Eq. 3): the queries come from the flattened
feature map phi(z_t), the keys and values from the text encoder's output tau(y) (the
(B, 77, 768) CLIP context for SD v1):

    Q = W_Q phi(z_t),   K = W_K tau(y),   V = W_V tau(y)

Self-attention is the same with K and V also taken from phi(z_t). Each of the ``heads`` heads
attends with its own d = C / heads slice of Q, K, V; the heads' outputs are concatenated and
mixed by W_O (``to_out``).

The feed-forward is GEGLU (Shazeer 2020, "GLU Variants Improve Transformer", Eq. 5 and 6):

    GEGLU(x, W, V, b, c) = GELU(x W + b) * (x V + c)            Eq. 5   (* elementwise)
    FFN_GEGLU(x)         = GEGLU(x, W, V, b, c) W_2 + b_2       Eq. 6 (with biases, as SD)

with W and V stored as one Linear(C, 2 * 4C) (``geglu.proj``): the first half of its output is
x V + c, the second half the gate x W + b.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .editor import Editor, Site, check_edited


class Attention(nn.Module):
    """Multi-head attention; self-attention when ``context`` is None, cross-attention otherwise.

    With no editor, or one that does not want this site's probabilities, the fused
    ``scaled_dot_product_attention`` computes Eq. 1; otherwise the softmax is materialised,
    handed to ``editor.attention_probs`` and then multiplied by V.
    """

    def __init__(self, dim: int, heads: int, site: Site, context_dim: int | None = None) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} is not divisible by heads={heads}")
        self.site = site
        self.heads = heads
        self.head_dim = dim // heads
        context_dim = dim if context_dim is None else context_dim
        self.to_q = nn.Linear(dim, dim, bias=False)  # W_Q
        self.to_k = nn.Linear(context_dim, dim, bias=False)  # W_K
        self.to_v = nn.Linear(context_dim, dim, bias=False)  # W_V
        self.to_out = nn.Linear(dim, dim)  # W_O, mixes the concatenated heads

    def split_heads(self, t: torch.Tensor) -> torch.Tensor:
        """(B, N, C) -> (B, heads, N, d), head i taking channels i d .. (i + 1) d - 1.

        This is einops' ``"b n (h d) -> b h n d"``; the module writes its shape changes as plain
        views with the pattern in a comment, because einops' ~10-20 microseconds of Python per
        call add up to ~5% of a step of the toy U-Net (70 calls a step).
        """
        return t.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)  # (B, N, heads, d) -> (B, heads, N, d)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, editor: Editor | None = None) -> torch.Tensor:
        """x (B, N, C) and context (B, M, C_ctx), or None for self-attention (M = N) -> (B, N, C)."""
        source = x if context is None else context
        q = self.split_heads(self.to_q(x))  # (B, heads, N, d)
        k = self.split_heads(self.to_k(source))  # (B, heads, M, d)
        v = self.split_heads(self.to_v(source))  # (B, heads, M, d)
        if editor is not None:
            q_new, k_new = editor.attention_qk(q, k, self.site)
            q = check_edited(q_new, q, "attention_qk (q)", self.site)
            k = check_edited(k_new, k, "attention_qk (k)", self.site)
        if editor is None or not editor.wants_probs(self.site):
            out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, d), Eq. 1 fused
        else:
            scores = (q * self.head_dim**-0.5) @ k.transpose(-1, -2)  # (B, heads, N, M)
            probs = scores.softmax(dim=-1)  # (B, heads, N, M), rows sum to 1
            probs = check_edited(editor.attention_probs(probs, self.site), probs, "attention_probs", self.site)
            out = probs @ v  # (B, heads, N, d)
        out = out.transpose(1, 2).flatten(2)  # (B, N, C): heads concatenated, "b h n d -> b n (h d)"
        return self.to_out(out)  # (B, N, C)


class GEGLU(nn.Module):
    """Eq. 5: one projection to 2 x inner, split into value x V + c and gate x W + b."""

    def __init__(self, dim: int, inner: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, 2 * inner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)  # 2 x (B, N, inner)
        return value * F.gelu(gate)  # (B, N, inner)


class FeedForward(nn.Module):
    """Eq. 6: GEGLU to 4 x the width, then back with ``out``."""

    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        self.geglu = GEGLU(dim, mult * dim)
        self.out = nn.Linear(mult * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.geglu(x))  # (B, N, C) -> (B, N, 4C) -> (B, N, C)


class BasicTransformerBlock(nn.Module):
    """Pre-LayerNorm transformer block on pixel tokens, each sub-layer residual:

        x = x + attn1(norm1(x))              self-attention among the pixels
        x = x + attn2(norm2(x), context)     cross-attention to the text (LDM section 3.3)
        x = x + ff(norm3(x))                 GEGLU feed-forward
    """

    def __init__(self, dim: int, heads: int, context_dim: int, self_site: Site, cross_site: Site) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads, self_site)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, heads, cross_site, context_dim=context_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor, editor: Editor | None = None) -> torch.Tensor:
        """x (B, HW, C), context (B, M, C_ctx) -> (B, HW, C)."""
        x = x + self.attn1(self.norm1(x), editor=editor)  # (B, HW, C)
        x = x + self.attn2(self.norm2(x), context, editor=editor)  # (B, HW, C)
        return x + self.ff(self.norm3(x))  # (B, HW, C)


class SpatialTransformer(nn.Module):
    """A feature map seen as HW tokens: GroupNorm, proj_in, transformer blocks, proj_out, + input.

    ``sites`` holds one (self, cross) pair per transformer block. SD v1 projects with 1x1
    convolutions; SD v2-style configs (``linear_projection``) with Linear layers on the tokens,
    which is the same map with weights of another shape.
    """

    def __init__(self, channels: int, heads: int, context_dim: int, sites: list[tuple[Site, Site]],
                 groups: int = 32, linear_projection: bool = False) -> None:
        super().__init__()
        self.linear_projection = linear_projection
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        if linear_projection:
            self.proj_in = nn.Linear(channels, channels)
            self.proj_out = nn.Linear(channels, channels)
        else:
            self.proj_in = nn.Conv2d(channels, channels, kernel_size=1)
            self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(channels, heads, context_dim, self_site, cross_site) for self_site, cross_site in sites
        )

    def forward(self, x: torch.Tensor, context: torch.Tensor, editor: Editor | None = None) -> torch.Tensor:
        """x (B, C, H, W), context (B, M, C_ctx) -> (B, C, H, W)."""
        height, width = x.shape[-2:]
        h = self.norm(x)  # (B, C, H, W)
        if not self.linear_projection:
            h = self.proj_in(h)  # (B, C, H, W)
        h = h.flatten(2).transpose(1, 2)  # (B, HW, C): one token per pixel, "b c h w -> b (h w) c"
        if self.linear_projection:
            h = self.proj_in(h)  # (B, HW, C)
        for block in self.transformer_blocks:
            h = block(h, context, editor)  # (B, HW, C)
        if self.linear_projection:
            h = self.proj_out(h)  # (B, HW, C)
        h = h.transpose(1, 2).unflatten(2, (height, width)).contiguous()  # (B, C, H, W), "b (h w) c -> b c h w"
        if not self.linear_projection:
            h = self.proj_out(h)  # (B, C, H, W)
        return x + h  # (B, C, H, W)
