"""Blocks of SD3's MMDiT with Stability AI's parameter names: per-stream `DismantledBlock`s
(`x_block`, `context_block`) joined by one attention over both streams, SD3.5's RMS
qk-norm (`ln_q`, `ln_k`) and MMDiT-X's extra image-only attention (`attn2`, SD3.5-medium)."""
from __future__ import annotations

import torch
from torch import nn

from .flux_blocks import modulate, sdpa


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in float32."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, pre_only: bool = False, qk_norm: bool = False):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        if qk_norm:
            self.ln_q, self.ln_k = RMSNorm(dim // heads), RMSNorm(dim // heads)
        if not pre_only:
            self.proj = nn.Linear(dim, dim)

    def qkv_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """[B, L, D] -> q, k, v [B, H, L, d], q and k normalised per head when qk_norm."""
        b, length, _ = x.shape
        q, k, v = self.qkv(x).view(b, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        if hasattr(self, 'ln_q'):
            q, k = self.ln_q(q), self.ln_k(k)
        return q, k, v


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel=sdpa) -> torch.Tensor:
    return kernel(q, k, v).transpose(1, 2).flatten(2)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(approximate='tanh'), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DismantledBlock(nn.Module):
    """One stream's half of a joint block: modulated pre-attention, then (unless pre_only,
    the last context block) the gated attention output and MLP."""

    sdpa = staticmethod(sdpa)

    def __init__(self, dim: int, heads: int, mlp_ratio: float, pre_only: bool = False, qk_norm: bool = False,
                 self_attn2: bool = False):
        super().__init__()
        self.pre_only, self.self_attn2 = pre_only, self_attn2
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(dim, heads, pre_only, qk_norm)
        if self_attn2:
            self.attn2 = SelfAttention(dim, heads, False, qk_norm)
        if not pre_only:
            self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
            self.mlp = Mlp(dim, int(dim * mlp_ratio))
        n = 2 if pre_only else 9 if self_attn2 else 6
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, n * dim))

    def pre_attention(self, x: torch.Tensor, c: torch.Tensor) -> tuple[tuple, list, torch.Tensor | None]:
        """(q, k, v) for the joint attention, the modulation, and attn2's output (MMDiT-X)."""
        mods = list(self.adaLN_modulation(c)[:, None].chunk(self.adaLN_modulation[1].out_features // c.shape[-1], -1))
        normed = self.norm1(x)
        qkv = self.attn.qkv_heads(modulate(normed, mods[0], mods[1]))
        extra = attend(*self.attn2.qkv_heads(modulate(normed, mods[6], mods[7])), self.sdpa) if self.self_attn2 \
            else None
        return qkv, mods, extra

    def post_attention(self, x: torch.Tensor, attn: torch.Tensor, mods: list, extra: torch.Tensor | None):
        x = x + mods[2] * self.attn.proj(attn)
        if extra is not None:
            x = x + mods[8] * self.attn2.proj(extra)
        return x + mods[5] * self.mlp(modulate(self.norm2(x), mods[3], mods[4]))


class JointBlock(nn.Module):
    sdpa = staticmethod(sdpa)

    def __init__(self, dim: int, heads: int, mlp_ratio: float, pre_only: bool, qk_norm: bool, self_attn2: bool):
        super().__init__()
        self.context_block = DismantledBlock(dim, heads, mlp_ratio, pre_only, qk_norm)
        self.x_block = DismantledBlock(dim, heads, mlp_ratio, False, qk_norm, self_attn2)

    def forward(self, context: torch.Tensor, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c_qkv, c_mods, _ = self.context_block.pre_attention(context, c)
        x_qkv, x_mods, extra = self.x_block.pre_attention(x, c)
        joint = attend(*(torch.cat([a, b], dim=2) for a, b in zip(c_qkv, x_qkv)), kernel=self.sdpa)
        n = context.shape[1]
        x = self.x_block.post_attention(x, joint[:, n:], x_mods, extra)
        if not self.context_block.pre_only:
            context = self.context_block.post_attention(context, joint[:, :n], c_mods, None)
        return context, x
