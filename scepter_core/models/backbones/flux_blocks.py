"""FLUX's building blocks (Black Forest Labs' parameter names): rotary positions over the
(t, h, w) axes, modulation, QK-normalised joint attention, double- and single-stream blocks.

Shapes: image tokens [B, N, D], text tokens [B, L, D], vec (timestep + pooled text
[+ guidance] embedding) [B, D], positions [B, L + N, 3], rotary tables [B, 1, L + N, d/2, 2, 2]."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features [B, dim] of t (cos first, as FLUX and diffusers' flip_sin_to_cos)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def rope(pos: torch.Tensor, dim: int, theta: float) -> torch.Tensor:
    """Rotation matrices [B, L, dim/2, 2, 2] of positions `pos` [B, L] along one axis."""
    scale = torch.arange(0, dim, 2, dtype=torch.float64, device=pos.device) / dim
    omega = 1.0 / (theta ** scale)
    angles = pos.double()[..., None] * omega
    cos, sin = torch.cos(angles), torch.sin(angles)
    return torch.stack([cos, -sin, sin, cos], dim=-1).view(*angles.shape, 2, 2).float()


def rope_table(ids: torch.Tensor, axes_dim: list[int], theta: float) -> torch.Tensor:
    """The rotary table of positions `ids` [B, L, n_axes]: one block of each axis' size."""
    return torch.cat([rope(ids[..., i], d, theta) for i, d in enumerate(axes_dim)], dim=-3).unsqueeze(1)


def apply_rope(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive pairs of x [B, H, L, d] by `table` (computed in float32)."""
    pairs = x.float().reshape(*x.shape[:-1], -1, 1, 2)
    out = table[..., 0] * pairs[..., 0] + table[..., 1] * pairs[..., 1]
    return out.reshape(*x.shape).type_as(x)


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The attention kernel of the flow blocks (their `sdpa` attribute: accel swaps in a CPU one)."""
    return F.scaled_dot_product_attention(q, k, v)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, table: torch.Tensor,
              kernel=sdpa) -> torch.Tensor:
    """`kernel` attention over rotated q, k [B, H, L, d]; returns [B, L, H * d]."""
    return kernel(apply_rope(q, table), apply_rope(k, table), v).transpose(1, 2).flatten(2)


class MLPEmbedder(nn.Module):
    def __init__(self, in_dim: int, hidden: int):
        super().__init__()
        self.in_layer, self.out_layer = nn.Linear(in_dim, hidden), nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_layer(F.silu(self.in_layer(x)))


class RMSNorm(nn.Module):
    """RMS norm computed in float32, with a learned `scale`."""

    def __init__(self, dim: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-6)).to(x.dtype) * self.scale


class QKNorm(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.query_norm, self.key_norm = RMSNorm(dim), RMSNorm(dim)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.query_norm(q).to(v), self.key_norm(k).to(v)


def split_heads(qkv: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[B, L, 3 * H * d] -> three [B, H, L, d]."""
    b, length, _ = qkv.shape
    q, k, v = qkv.view(b, length, 3, heads, -1).permute(2, 0, 3, 1, 4)
    return q, k, v


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, qkv_bias: bool):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.norm = QKNorm(dim // heads)
        self.proj = nn.Linear(dim, dim)

    def qkv_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = split_heads(self.qkv(x), self.heads)
        q, k = self.norm(q, k, v)
        return q, k, v


class Modulation(nn.Module):
    """shift, scale, gate (twice when `double`) from silu(vec), each [B, 1, D]."""

    def __init__(self, dim: int, double: bool):
        super().__init__()
        self.lin = nn.Linear(dim, dim * (6 if double else 3))

    def forward(self, vec: torch.Tensor) -> list[torch.Tensor]:
        return list(self.lin(F.silu(vec))[:, None].chunk(self.lin.out_features // self.lin.in_features, dim=-1))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (1 + scale) * x + shift


def _norm(dim: int) -> nn.LayerNorm:
    return nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)


def _mlp(dim: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate='tanh'), nn.Linear(hidden, dim))


class DoubleStreamBlock(nn.Module):
    """Image and text keep their own weights and attend jointly (text tokens first)."""

    sdpa = staticmethod(sdpa)

    def __init__(self, dim: int, heads: int, mlp_ratio: float, qkv_bias: bool):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        for side in ('img', 'txt'):
            self.add_module(f'{side}_mod', Modulation(dim, double=True))
            self.add_module(f'{side}_norm1', _norm(dim))
            self.add_module(f'{side}_attn', SelfAttention(dim, heads, qkv_bias))
            self.add_module(f'{side}_norm2', _norm(dim))
            self.add_module(f'{side}_mlp', _mlp(dim, hidden))

    def forward(self, img: torch.Tensor, txt: torch.Tensor, vec: torch.Tensor,
                table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mods, qkvs = {}, {}
        for side, x in (('txt', txt), ('img', img)):
            mods[side] = getattr(self, f'{side}_mod')(vec)
            shift, scale = mods[side][0], mods[side][1]
            qkvs[side] = getattr(self, f'{side}_attn').qkv_heads(modulate(getattr(self, f'{side}_norm1')(x),
                                                                          shift, scale))
        q, k, v = (torch.cat([qkvs['txt'][i], qkvs['img'][i]], dim=2) for i in range(3))
        joint = attention(q, k, v, table, self.sdpa)
        outs = {'txt': joint[:, :txt.shape[1]], 'img': joint[:, txt.shape[1]:]}
        result = []
        for side, x in (('img', img), ('txt', txt)):
            _, _, gate1, shift2, scale2, gate2 = mods[side]
            x = x + gate1 * getattr(self, f'{side}_attn').proj(outs[side])
            x = x + gate2 * getattr(self, f'{side}_mlp')(modulate(getattr(self, f'{side}_norm2')(x), shift2, scale2))
            result.append(x)
        return result[0], result[1]


class SingleStreamBlock(nn.Module):
    """One weight set over the joined text + image tokens: attention and MLP in parallel."""

    sdpa = staticmethod(sdpa)

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.heads, self.dim, self.mlp_hidden = heads, dim, int(dim * mlp_ratio)
        self.linear1 = nn.Linear(dim, dim * 3 + self.mlp_hidden)
        self.linear2 = nn.Linear(dim + self.mlp_hidden, dim)
        self.norm = QKNorm(dim // heads)
        self.pre_norm = _norm(dim)
        self.mlp_act = nn.GELU(approximate='tanh')
        self.modulation = Modulation(dim, double=False)

    def forward(self, x: torch.Tensor, vec: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.modulation(vec)
        qkv, mlp = self.linear1(modulate(self.pre_norm(x), shift, scale)).split([3 * self.dim, self.mlp_hidden], -1)
        q, k, v = split_heads(qkv, self.heads)
        q, k = self.norm(q, k, v)
        return x + gate * self.linear2(torch.cat([attention(q, k, v, table, self.sdpa), self.mlp_act(mlp)], dim=-1))


class LastLayer(nn.Module):
    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.norm_final = _norm(dim)
        self.linear = nn.Linear(dim, out_dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(vec)[:, None].chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))
