"""OpenCLIP text tower with OpenCLIP parameter names (SDXL text encoder 2, ViT-bigG/14).

Parameters are ``token_embedding.weight``, ``positional_embedding``, ``transformer.resblocks.{i}.*``
(fused ``attn.in_proj_weight``), ``ln_final.*`` and ``text_projection``: the keys of the official
SDXL file below ``conditioner.embedders.1.model.``.
"""
import numpy as np
import mindspore as ms
from mindspore import Parameter, nn, ops
from mindspore.common.initializer import Normal, Uniform, initializer

from gm.modules.encoders.clip_text_model import ACTIVATIONS, causal_mask, multi_head_attention
from gm.modules.layers import Embedding, LayerNorm, linear


class MultiheadAttention(nn.Cell):
    """Self-attention laid out like ``torch.nn.MultiheadAttention``: fused q/k/v ``in_proj_*``."""

    def __init__(self, width, heads):
        super().__init__()
        self.heads = heads
        bound = float(np.sqrt(6.0 / (4 * width)))
        self.in_proj_weight = Parameter(initializer(Uniform(bound), (3 * width, width), ms.float32),
                                        name="in_proj_weight")
        self.in_proj_bias = Parameter(initializer("zeros", (3 * width,), ms.float32), name="in_proj_bias")
        self.out_proj = linear(width, width)
        self.matmul_t = ops.MatMul(transpose_b=True)

    def construct(self, x, mask):
        b, length, width = x.shape
        qkv = self.matmul_t(x.reshape(b * length, width), self.in_proj_weight) + self.in_proj_bias
        q, k, v = ops.split(qkv.reshape(b, length, 3 * width), width, axis=-1)
        return self.out_proj(multi_head_attention(q, k, v, self.heads, mask))


class MLP(nn.Cell):
    """``c_fc`` -> activation -> ``c_proj``."""

    def __init__(self, width, hidden, act):
        super().__init__()
        self.act = ACTIVATIONS[act]
        self.c_fc = linear(width, hidden)
        self.c_proj = linear(hidden, width)

    def construct(self, x):
        return self.c_proj(self.act(self.c_fc(x)))


class ResidualAttentionBlock(nn.Cell):
    """Pre-norm block: ``ln_1``, ``attn``, ``ln_2``, ``mlp``."""

    def __init__(self, width, heads, mlp_width, act, eps):
        super().__init__()
        self.ln_1 = LayerNorm(width, eps)
        self.attn = MultiheadAttention(width, heads)
        self.ln_2 = LayerNorm(width, eps)
        self.mlp = MLP(width, mlp_width, act)

    def construct(self, x, mask):
        x = x + self.attn(self.ln_1(x), mask)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Cell):
    """``resblocks``: a list of :class:`ResidualAttentionBlock`."""

    def __init__(self, width, layers, heads, mlp_width, act, eps):
        super().__init__()
        self.resblocks = nn.CellList([ResidualAttentionBlock(width, heads, mlp_width, act, eps)
                                      for _ in range(layers)])


class OpenCLIPTextModel(nn.Cell):
    """OpenCLIP text tower: ``tokens`` int32 [B, L] (L <= max_length) -> ``(hidden, pooled)``.

    ``hidden`` is the output of the first ``layers - skip_last`` blocks [B, L, width] (no final
    norm). ``pooled`` [B, embed_dim] is ``ln_final`` of the last block's output at the end-of-text
    position, times ``text_projection``. The end-of-text position is the first position whose id
    is ``eos_token_id`` (not the argmax of the ids: textual inversion adds larger ids); every
    sequence must contain it. With ``pooled=False`` only ``hidden`` is computed and returned.
    """

    def __init__(self, vocab_size=49408, width=1280, layers=32, heads=20, mlp_ratio=4.0, embed_dim=1280,
                 max_length=77, act="gelu", eps=1e-5, eos_token_id=49407, skip_last=1, pooled=True):
        super().__init__()
        if not 0 <= skip_last <= layers:
            raise ValueError(f"skip_last {skip_last} out of range for {layers} layers")
        self.token_embedding = Embedding(vocab_size, width)
        self.positional_embedding = Parameter(initializer(Normal(0.01), (max_length, width), ms.float32),
                                              name="positional_embedding")
        self.transformer = Transformer(width, layers, heads, int(width * mlp_ratio), act, eps)
        self.ln_final = LayerNorm(width, eps)
        self.text_projection = Parameter(initializer(Normal(width ** -0.5), (width, embed_dim), ms.float32),
                                         name="text_projection")
        self.mask = causal_mask(max_length)
        self.eos_token_id = eos_token_id
        self.num_hidden = layers - skip_last
        self.num_layers = layers
        self.pooled = pooled

    def construct(self, tokens):
        tokens = tokens.astype(ms.int32)
        length = tokens.shape[1]
        mask = self.mask[:length, :length]
        x = self.token_embedding(tokens) + self.positional_embedding[:length]
        for i in range(self.num_hidden):
            x = self.transformer.resblocks[i](x, mask)
        hidden = x
        if not self.pooled:
            return hidden
        for i in range(self.num_hidden, self.num_layers):
            x = self.transformer.resblocks[i](x, mask)
        is_eos = (tokens == self.eos_token_id).astype(x.dtype)
        first_eos = is_eos * (ops.cumsum(is_eos, 1) == 1).astype(x.dtype)
        x_eos = (x * first_eos.expand_dims(-1)).sum(1)
        return hidden, ops.matmul(self.ln_final(x_eos), self.text_projection)
