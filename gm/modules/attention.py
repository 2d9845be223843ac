"""Transformer blocks of the SDXL UNet (generative-models' ``sgm/modules/attention.py``).

Parameter names follow the official checkpoint: ``attn1``/``attn2`` with ``to_q``/``to_k``/``to_v``
(no bias) and ``to_out.0``, ``norm1/2/3``, ``ff.net.0.proj`` (GEGLU) and ``ff.net.2``.
"""
import mindspore as ms
from mindspore import nn, ops

from gm.modules.layers import GroupNorm, LayerNorm, linear


class CrossAttention(nn.Cell):
    """Multi-head attention ``softmax(q k^T / sqrt(d)) v``; self-attention when no context is given.

    Tokens are flattened to 2-D: ``x`` [B*N, query_dim], ``context`` [B*M, context_dim] (``batch`` = B),
    so every projection is a plain 2-D matmul. All heads go through one batched matmul
    ([B, heads, N, d]); the softmax is taken in float32.
    """

    def __init__(self, query_dim, context_dim=None, heads=8, dim_head=64):
        super().__init__()
        inner_dim = heads * dim_head
        context_dim = context_dim or query_dim
        self.heads = heads
        self.dim_head = dim_head
        self.scale = dim_head ** -0.5
        self.to_q = linear(query_dim, inner_dim, bias=False)
        self.to_k = linear(context_dim, inner_dim, bias=False)
        self.to_v = linear(context_dim, inner_dim, bias=False)
        self.to_out = nn.CellList([linear(inner_dim, query_dim)])
        self.qk = ops.BatchMatMul(transpose_b=True)
        self.pv = ops.BatchMatMul()

    def _heads(self, t, batch):
        return ops.transpose(t.reshape(batch, -1, self.heads, self.dim_head), (0, 2, 1, 3))

    def construct(self, x, batch, context=None):
        if context is None:
            context = x
        q = self._heads(self.to_q(x) * self.scale, batch)
        k = self._heads(self.to_k(context), batch)
        v = self._heads(self.to_v(context), batch)
        sim = self.qk(q, k).astype(ms.float32)
        attn = ops.softmax(sim, axis=-1).astype(v.dtype)
        out = ops.transpose(self.pv(attn, v), (0, 2, 1, 3)).reshape(-1, self.heads * self.dim_head)
        return self.to_out[0](out)


class GEGLU(nn.Cell):
    """``a * gelu(b)`` where ``[a, b] = proj(x)`` (exact, erf-based GELU)."""

    def __init__(self, dim_in, dim_out):
        super().__init__()
        self.dim_out = dim_out
        self.proj = linear(dim_in, dim_out * 2)

    def construct(self, x):
        h, gate = ops.split(self.proj(x), self.dim_out, axis=-1)
        return h * ops.gelu(gate, approximate="none")


class FeedForward(nn.Cell):
    """GEGLU feed-forward ``dim -> 4 dim -> dim``; ``net.1`` is the (inactive) dropout slot."""

    def __init__(self, dim, mult=4):
        super().__init__()
        inner_dim = int(dim * mult)
        self.net = nn.CellList([GEGLU(dim, inner_dim), nn.Identity(), linear(inner_dim, dim)])

    def construct(self, x):
        return self.net[2](self.net[0](x))


class BasicTransformerBlock(nn.Cell):
    """Pre-norm self-attention, cross-attention on ``context`` and GEGLU feed-forward, each residual.

    ``x`` [B*N, dim] and ``context`` [B*M, context_dim] are flattened tokens of ``batch`` = B samples.
    """

    def __init__(self, dim, n_heads, d_head, context_dim):
        super().__init__()
        self.attn1 = CrossAttention(dim, heads=n_heads, dim_head=d_head)
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, context_dim=context_dim, heads=n_heads, dim_head=d_head)
        self.norm1 = LayerNorm(dim)
        self.norm2 = LayerNorm(dim)
        self.norm3 = LayerNorm(dim)

    def construct(self, x, context, batch):
        x = self.attn1(self.norm1(x), batch) + x
        x = self.attn2(self.norm2(x), batch, context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Cell):
    """Transformer over the pixels of ``x`` [B, C, H, W], cross-attending to ``context`` [B, T, D].

    Linear ``proj_in``/``proj_out`` (SDXL's ``use_linear_in_transformer``), residual around the whole.
    ``use_checkpoint`` marks every transformer block for recomputation in the backward pass.
    """

    def __init__(self, in_channels, n_heads, d_head, depth=1, context_dim=None, use_checkpoint=False):
        super().__init__()
        if context_dim is None:
            raise ValueError("SpatialTransformer: context_dim is required (SDXL cross-attends to text)")
        inner_dim = n_heads * d_head
        self.norm = GroupNorm(32, in_channels, eps=1e-6)
        self.proj_in = linear(in_channels, inner_dim)
        self.transformer_blocks = nn.CellList(
            [BasicTransformerBlock(inner_dim, n_heads, d_head, context_dim) for _ in range(depth)])
        self.proj_out = linear(inner_dim, in_channels)
        if use_checkpoint:
            for block in self.transformer_blocks:
                block.recompute()

    def construct(self, x, context):
        b, c, h, w = x.shape
        t = self.proj_in(ops.transpose(self.norm(x).reshape(b, c, h * w), (0, 2, 1)).reshape(b * h * w, c))
        context = context.reshape(-1, context.shape[-1])
        for block in self.transformer_blocks:
            t = block(t, context, b)
        t = self.proj_out(t)
        return ops.transpose(t.reshape(b, h * w, c), (0, 2, 1)).reshape(b, c, h, w) + x
