"""Attention on the CPU: short sequences as plain matmuls, half precision in fp32, and
small-attention training as one autograd Function.

The attention classes this package knows (ATTENTION_SWAPS: the UNet's CrossAttention, the
VAE's AttnBlock, FLUX's and SD3's blocks, whose kernel is their `sdpa`) call their `attention`
attribute, SDPA; the swapped-in subclasses set it to
`cpu_attention`, and CrossAttention's also runs the whole layer as `_AttentionLayer` where that
applies; the VAE's block also takes `gemm.linear` for its projections, and the UNet's
SpatialTransformer runs its 1x1 projections through it. A model family with an attention class
of its own keeps plain SDPA until it is listed here.

`cpu_attention`: torch's CPU flash kernel costs 1.5-3x more than two matmuls and a softmax on
short sequences (its fixed cost per block dominates); from 256 x 256 tokens on it is as fast
and holds less. Its backward in bf16 is several times slower than in fp32 (6.1 vs 0.9 ms a call
on the tiny UNet), and fp32 is the more exact, so half-precision inputs run in fp32.

`_AttentionLayer`: at the tiny recipe's sizes (8x8 latents, batch 8) each projection of an
attention layer is a ~2 M multiply-add product, and the layer is a dozen small ops whose
autograd bookkeeping costs as much as their arithmetic. Here the whole layer (q, k, v and output
projections, scores, softmax, weighted sum) is one Function with a hand-written backward: one
Python call each way. Its products go through `gemm.matmul_t`. Used for fp32 CPU training where
each projection stays under `gemm.MIN_MACS_GRAD`; the module path is the reference it is tested
against."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models.autoencoders.vae_blocks import AttnBlock
from ..models.backbones.attention import CrossAttention, SpatialTransformer
from ..models.backbones.flux_blocks import DoubleStreamBlock, SingleStreamBlock
from ..models.backbones.mmdit_blocks import DismantledBlock, JointBlock
from . import gemm, layers
from .gemm import linear, matmul_t, weight_grad

# On the CPU, attention over at most this many query x key pairs runs as two matmuls and a softmax.
CPU_MATH_PAIRS = 128 * 128


def _math_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    scores = (q @ k.transpose(-1, -2)).mul_(q.shape[-1] ** -0.5)
    return scores.softmax(dim=-1) @ v


def cpu_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """SDPA; on the CPU in fp32, and as two matmuls for at most CPU_MATH_PAIRS pairs (module doc)."""
    if q.device.type != 'cpu':
        return F.scaled_dot_product_attention(q, k, v)
    dtype = q.dtype
    with torch.autocast('cpu', enabled=False):  # autocast would cast back to half precision
        q, k, v = q.float(), k.float(), v.float()
        short = q.shape[-2] * k.shape[-2] <= CPU_MATH_PAIRS
        out = _math_attention(q, k, v) if short else F.scaled_dot_product_attention(q, k, v)
    return out.to(dtype)


def _split(t: torch.Tensor, b: int, n: int, heads: int) -> torch.Tensor:
    """[B*N, H*D] -> [B*H, N, D]."""
    return t.view(b, n, heads, -1).transpose(1, 2).reshape(b * heads, n, -1)


def _merge(t: torch.Tensor, b: int, n: int, heads: int) -> torch.Tensor:
    """[B*H, N, D] -> [B*N, H*D]."""
    return t.view(b, heads, n, -1).transpose(1, 2).reshape(b * n, -1)


class _AttentionLayer(torch.autograd.Function):
    """out = softmax(q k^T / sqrt(d)) v W_o^T + b_o, with q = x W_q^T, k = c W_k^T, v = c W_v^T."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, c: torch.Tensor, wq: torch.Tensor, wk: torch.Tensor, wv: torch.Tensor,
                wo: torch.Tensor, bo: torch.Tensor | None, heads: int, self_attention: bool) -> torch.Tensor:
        b, n, _ = x.shape
        m = c.shape[1]
        x2 = x.reshape(b * n, -1)
        c2 = x2 if self_attention else c.reshape(b * m, -1)
        q = _split(matmul_t(x2, wq, None), b, n, heads)
        k = _split(matmul_t(c2, wk, None), b, m, heads)
        v = _split(matmul_t(c2, wv, None), b, m, heads)
        scale = q.shape[-1] ** -0.5
        p = torch.bmm(q, k.transpose(1, 2)).mul_(scale).softmax(-1)
        o = _merge(torch.bmm(p, v), b, n, heads)
        ctx.save_for_backward(x2, c2, q, k, v, p, o, wq, wk, wv, wo)
        ctx.shape = (b, n, m, heads, scale, self_attention, bo is not None)
        return matmul_t(o, wo, bo)  # [B*N, C]: a view made in here could not be written in place

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x2, c2, q, k, v, p, o, wq, wk, wv, wo = ctx.saved_tensors
        b, n, m, heads, scale, self_attention, has_bias = ctx.shape
        g = grad.reshape(b * n, -1).contiguous()
        d_o = _split(matmul_t(g, wo.t(), None), b, n, heads)
        d_v = _merge(torch.bmm(p.transpose(1, 2), d_o), b, m, heads)
        d_s = torch._softmax_backward_data(torch.bmm(d_o, v.transpose(1, 2)), p, -1, p.dtype).mul_(scale)
        d_q = _merge(torch.bmm(d_s, k), b, n, heads)
        d_k = _merge(torch.bmm(d_s.transpose(1, 2), q), b, m, heads)
        d_x = matmul_t(d_q, wq.t(), None)
        d_c = matmul_t(d_k, wk.t(), None).add_(matmul_t(d_v, wv.t(), None))
        grads_w = (weight_grad(d_q, x2), weight_grad(d_k, c2), weight_grad(d_v, c2), weight_grad(g, o))
        d_bo = g.sum(0) if has_bias else None
        if self_attention:
            return (d_x.add_(d_c).view(b, n, -1), None, *grads_w, d_bo, None, None)
        return (d_x.view(b, n, -1), d_c.view(b, m, -1), *grads_w, d_bo, None, None)


def fused_attention_applies(layer: nn.Module, x: torch.Tensor, context: torch.Tensor) -> bool:
    """Whether `layer` (a CrossAttention, on a short sequence) runs as one Function this call."""
    to_out = layer.to_out[0]
    if not all(type(t) is layers.Linear for t in (layer.to_q, layer.to_k, layer.to_v, to_out)):
        return False  # a wrapped projection (a LoRA layer) must be called
    macs = x.shape[0] * x.shape[1] * layer.to_q.in_features * layer.to_q.out_features
    return (macs < gemm.MIN_MACS_GRAD and gemm.needs_grad(x, context, layer.to_q.weight)
            and gemm.plain_fp32_cpu(x, to_out.weight) and context.dtype == x.dtype
            and gemm.backend() == 'onednn')


def fused_attention(layer: nn.Module, x: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
    """The layer's output through `_AttentionLayer` (self-attention when `context` is None)."""
    to_out, dropout = layer.to_out
    c = x if context is None else context
    out = _AttentionLayer.apply(x, c, layer.to_q.weight, layer.to_k.weight, layer.to_v.weight, to_out.weight,
                                to_out.bias, layer.heads, context is None)
    return dropout(out.view(x.shape[0], x.shape[1], -1))


class FusedCrossAttention(CrossAttention):
    """CrossAttention through `cpu_attention`, or as one Function in small fp32 CPU training."""

    attention = staticmethod(cpu_attention)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        c = x if context is None else context
        if x.shape[1] * c.shape[1] <= CPU_MATH_PAIRS and fused_attention_applies(self, x, c):
            return fused_attention(self, x, context)
        return super().forward(x, context)


class CpuAttnBlock(AttnBlock):
    """The VAE's attention block through `cpu_attention` and `gemm.linear`."""

    attention, linear = staticmethod(cpu_attention), staticmethod(linear)


class FastSpatialTransformer(SpatialTransformer):
    """SD1's 1x1 proj_in / proj_out, run as linear maps of the tokens, through `gemm.linear`."""

    def _project(self, layer: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
        if self.use_linear:
            return layer(tokens)
        return linear(tokens, layer.weight.flatten(1), layer.bias)


class CpuDoubleStreamBlock(DoubleStreamBlock):
    sdpa = staticmethod(cpu_attention)


class CpuSingleStreamBlock(SingleStreamBlock):
    sdpa = staticmethod(cpu_attention)


class CpuJointBlock(JointBlock):
    sdpa = staticmethod(cpu_attention)


class CpuDismantledBlock(DismantledBlock):  # MMDiT-X's image self-attention
    sdpa = staticmethod(cpu_attention)


# The flow blocks (FLUX, SD3) take `cpu_attention`: their half-precision attention in fp32, and
# the math path on short sequences (e.g. 16x16 latents at batch 1).
ATTENTION_SWAPS: dict[type, type] = {CrossAttention: FusedCrossAttention, AttnBlock: CpuAttnBlock,
                                     SpatialTransformer: FastSpatialTransformer,
                                     DoubleStreamBlock: CpuDoubleStreamBlock, SingleStreamBlock: CpuSingleStreamBlock,
                                     JointBlock: CpuJointBlock, DismantledBlock: CpuDismantledBlock}
