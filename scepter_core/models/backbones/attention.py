"""Cross-attention transformer of the LDM UNet, with original (CompVis) parameter names:
`norm`, `proj_in`, `transformer_blocks.N.{attn1,attn2,ff,norm1..3}`, `proj_out`."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn import Conv2d, Linear

from .unet_blocks import maybe_checkpoint


class CrossAttention(nn.Module):
    """Multi-head attention over `context` (self-attention when it is None), through SDPA."""

    def __init__(self, query_dim: int, context_dim: int | None = None, heads: int = 8,
                 dim_head: int = 64, dropout: float = 0.0, upcast: bool = False):
        super().__init__()
        inner = heads * dim_head
        context_dim = context_dim or query_dim
        self.heads = heads
        self.upcast = upcast
        self.to_q = Linear(query_dim, inner, bias=False)
        self.to_k = Linear(context_dim, inner, bias=False)
        self.to_v = Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(Linear(inner, query_dim), nn.Dropout(dropout))

    attention = staticmethod(F.scaled_dot_product_attention)  # the kernel; a subclass may choose another

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        c = x if context is None else context
        b, n, _ = x.shape
        # [B, L, H*D] -> [B, H, L, D] as strided views; SDPA accepts them without a copy.
        q = self.to_q(x).view(b, n, self.heads, -1).transpose(1, 2)
        k = self.to_k(c).view(b, c.shape[1], self.heads, -1).transpose(1, 2)
        v = self.to_v(c).view(b, c.shape[1], self.heads, -1).transpose(1, 2)
        if self.upcast and q.dtype in (torch.float16, torch.bfloat16):  # SD2's upcast_attention
            out = self.attention(q.float(), k.float(), v.float()).to(q.dtype)
        else:
            out = self.attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class _GatedGELU(torch.autograd.Function):
    """x * gelu(gate) for [x | gate] = h. Keeps only h for the backward and computes gelu(gate)
    again there: autograd of the plain expression also keeps gelu(gate), a third more memory
    (SD1.5 at 512 px: 21 MB an image in each 64x64-latent layer, fp32)."""

    @staticmethod
    def forward(ctx, h: torch.Tensor) -> torch.Tensor:
        x, gate = h.chunk(2, dim=-1)
        ctx.save_for_backward(h)
        return F.gelu(gate).mul_(x)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (h,) = ctx.saved_tensors
        x, gate = h.chunk(2, dim=-1)
        d_h = torch.empty_like(h)
        d_x, d_gate = d_h.chunk(2, dim=-1)  # both halves written in place: no concatenation
        torch.mul(grad, F.gelu(gate), out=d_x)
        torch.ops.aten.gelu_backward.grad_input(grad * x, gate, approximate='none', grad_input=d_gate)
        return d_h


class GEGLU(nn.Module):
    """Gated GELU projection (`proj` holds both halves)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(x)
        # Under torch.compile the plain expression: its partitioner recomputes pointwise ops by itself.
        if torch.is_grad_enabled() and h.requires_grad and not torch.compiler.is_compiling():
            return _GatedGELU.apply(h)
        x, gate = h.chunk(2, dim=-1)
        return F.gelu(gate).mul_(x)


class FeedForward(nn.Module):
    """`net.0` GEGLU, `net.1` dropout, `net.2` output projection (LDM layout)."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        inner = dim * mult
        self.net = nn.Sequential(GEGLU(dim, inner), nn.Dropout(dropout), Linear(inner, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Self-attention (or cross-only when disabled), cross-attention, feed-forward; pre-norm."""

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int | None,
                 dropout: float = 0.0, disable_self_attn: bool = False, upcast: bool = False):
        super().__init__()
        self.disable_self_attn = disable_self_attn
        self.attn1 = CrossAttention(dim, context_dim if disable_self_attn else None, heads, dim_head, dropout, upcast)
        self.ff = FeedForward(dim, dropout=dropout)
        self.attn2 = CrossAttention(dim, context_dim, heads, dim_head, dropout, upcast)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        # Residuals are added in place into fresh projection outputs (autograd keeps none of them).
        x = self.attn1(self.norm1(x), context if self.disable_self_attn else None).add_(x)
        x = self.attn2(self.norm2(x), context).add_(x)
        return self.ff(self.norm3(x)).add_(x)


class SpatialTransformer(nn.Module):
    """Image features -> tokens -> transformer blocks -> image features, plus the residual.
    `use_linear` chooses Linear projections (SD2 style) over 1x1 convolutions (SD1)."""

    def __init__(self, channels: int, heads: int, dim_head: int, depth: int = 1,
                 context_dim: int | None = None, dropout: float = 0.0, disable_self_attn: bool = False,
                 use_linear: bool = False, use_checkpoint: bool = False, upcast: bool = False):
        super().__init__()
        inner = heads * dim_head
        self.use_linear = use_linear
        self.use_checkpoint = use_checkpoint
        self.norm = nn.GroupNorm(32, channels, eps=1e-6)
        self.proj_in = Linear(channels, inner) if use_linear else Conv2d(channels, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner, heads, dim_head, context_dim, dropout, disable_self_attn, upcast)
            for _ in range(depth))
        self.proj_out = Linear(inner, channels) if use_linear else Conv2d(inner, channels, 1)
        nn.init.zeros_(self.proj_out.weight)  # the block starts as the identity
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None, context: torch.Tensor | None = None,
                size: torch.Size | None = None) -> torch.Tensor:
        return maybe_checkpoint(self, self._forward, x, context)

    def _forward(self, x: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        b, _, h, w = x.shape
        # A 1x1 convolution is a linear map of the tokens: run as one it costs half of oneDNN's
        # convolution on small maps (training included) and needs no layout change of its own.
        # Wrapped projections (a LoRA layer) keep their module call.
        as_conv = not self.use_linear and not (isinstance(self.proj_in, Conv2d) and isinstance(self.proj_out, Conv2d))
        tokens = self.norm(x)
        if as_conv:
            tokens = self.proj_in(tokens)
        # NCHW -> [B, HW, C]: free for channels_last input, one copy otherwise.
        tokens = tokens.permute(0, 2, 3, 1).reshape(b, h * w, -1)
        if not as_conv:
            tokens = self._project(self.proj_in, tokens)
        for block in self.transformer_blocks:
            tokens = block(tokens, context)
        if not as_conv:
            tokens = self._project(self.proj_out, tokens)
        out = tokens.reshape(b, h, w, -1).permute(0, 3, 1, 2)
        fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) \
            and not x.is_contiguous() else torch.contiguous_format
        out = out.contiguous(memory_format=fmt)
        if as_conv:
            out = self.proj_out(out)
        return out.add_(x)

    def _project(self, layer: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
        if self.use_linear:
            return layer(tokens)
        return F.linear(tokens, layer.weight.flatten(1), layer.bias)
