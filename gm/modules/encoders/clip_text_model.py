"""CLIP text tower with Hugging Face ``CLIPTextModel`` parameter names (SDXL text encoder 1).

Parameters are ``text_model.embeddings.*``, ``text_model.encoder.layers.{i}.*`` and
``text_model.final_layer_norm.*``: the keys of the official SDXL file below
``conditioner.embedders.0.transformer.``.
"""
import math

import numpy as np
import mindspore as ms
from mindspore import Tensor, nn, ops

from gm.modules.layers import Embedding, LayerNorm, linear


def causal_mask(length):
    """Additive causal mask [length, length]: 0 on and below the diagonal, -inf above."""
    return Tensor(np.triu(np.full((length, length), -np.inf, np.float32), 1))


def multi_head_attention(q, k, v, num_heads, mask):
    """Scaled dot-product attention of [B, L, W] projections with ``num_heads`` heads -> [B, L, W]."""
    b, length, width = q.shape
    head_dim = width // num_heads

    def split(t):
        return t.reshape(b, length, num_heads, head_dim).transpose(0, 2, 1, 3)

    q, k, v = split(q), split(k), split(v)
    scores = ops.BatchMatMul(transpose_b=True)(q, k) * (1.0 / math.sqrt(head_dim)) + mask
    out = ops.BatchMatMul()(ops.softmax(scores, axis=-1), v)
    return out.transpose(0, 2, 1, 3).reshape(b, length, width)


def quick_gelu(x):
    """x * sigmoid(1.702 x), the activation of OpenAI's CLIP."""
    return x * ops.sigmoid(1.702 * x)


def gelu(x):
    """Exact (erf) GELU."""
    return ops.gelu(x, approximate="none")


ACTIVATIONS = {"quick_gelu": quick_gelu, "gelu": gelu}


class CLIPAttention(nn.Cell):
    """Self-attention with separate ``q_proj``/``k_proj``/``v_proj``/``out_proj``."""

    def __init__(self, hidden_size, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.q_proj = linear(hidden_size, hidden_size)
        self.k_proj = linear(hidden_size, hidden_size)
        self.v_proj = linear(hidden_size, hidden_size)
        self.out_proj = linear(hidden_size, hidden_size)

    def construct(self, x, mask):
        out = multi_head_attention(self.q_proj(x), self.k_proj(x), self.v_proj(x), self.num_heads, mask)
        return self.out_proj(out)


class CLIPMLP(nn.Cell):
    """``fc1`` -> activation -> ``fc2``."""

    def __init__(self, hidden_size, intermediate_size, hidden_act):
        super().__init__()
        self.act = ACTIVATIONS[hidden_act]
        self.fc1 = linear(hidden_size, intermediate_size)
        self.fc2 = linear(intermediate_size, hidden_size)

    def construct(self, x):
        return self.fc2(self.act(self.fc1(x)))


class CLIPEncoderLayer(nn.Cell):
    """Pre-norm transformer block."""

    def __init__(self, hidden_size, num_heads, intermediate_size, hidden_act, eps):
        super().__init__()
        self.self_attn = CLIPAttention(hidden_size, num_heads)
        self.layer_norm1 = LayerNorm(hidden_size, eps)
        self.mlp = CLIPMLP(hidden_size, intermediate_size, hidden_act)
        self.layer_norm2 = LayerNorm(hidden_size, eps)

    def construct(self, x, mask):
        x = x + self.self_attn(self.layer_norm1(x), mask)
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nn.Cell):
    """``layers``: a list of :class:`CLIPEncoderLayer`."""

    def __init__(self, num_layers, hidden_size, num_heads, intermediate_size, hidden_act, eps):
        super().__init__()
        self.layers = nn.CellList([
            CLIPEncoderLayer(hidden_size, num_heads, intermediate_size, hidden_act, eps)
            for _ in range(num_layers)])


class CLIPTextEmbeddings(nn.Cell):
    """``token_embedding`` (an :class:`Embedding`, extensible) plus ``position_embedding``."""

    def __init__(self, vocab_size, hidden_size, max_length):
        super().__init__()
        self.token_embedding = Embedding(vocab_size, hidden_size)
        self.position_embedding = Embedding(max_length, hidden_size)

    def construct(self, input_ids):
        return self.token_embedding(input_ids) + self.position_embedding.weight[:input_ids.shape[1]]


class CLIPTextTransformer(nn.Cell):
    """Embeddings, encoder layers and ``final_layer_norm``; see :class:`CLIPTextModel`."""

    def __init__(self, vocab_size, hidden_size, num_layers, num_heads, intermediate_size, hidden_act,
                 max_length, eps, output_layer):
        super().__init__()
        self.embeddings = CLIPTextEmbeddings(vocab_size, hidden_size, max_length)
        self.encoder = CLIPEncoder(num_layers, hidden_size, num_heads, intermediate_size, hidden_act, eps)
        self.final_layer_norm = LayerNorm(hidden_size, eps)
        self.mask = causal_mask(max_length)
        self.num_run = num_layers if output_layer is None else output_layer
        self.apply_final_norm = output_layer is None

    def construct(self, input_ids):
        length = input_ids.shape[1]
        mask = self.mask[:length, :length]
        x = self.embeddings(input_ids)
        for i in range(self.num_run):
            x = self.encoder.layers[i](x, mask)
        if self.apply_final_norm:
            x = self.final_layer_norm(x)
        return x


class CLIPTextModel(nn.Cell):
    """CLIP text tower, ``input_ids`` int32 [B, L] (L <= max_length) -> hidden states [B, L, hidden_size].

    ``output_layer=None`` returns ``last_hidden_state`` (all layers, then ``final_layer_norm``);
    ``output_layer=k`` returns Hugging Face's ``hidden_states[k]``: the output of the first k layers
    without the final norm (0 = embeddings, negative k counts from the end as in Python). Only the
    layers needed are run; all parameters exist so official checkpoints load unchanged.
    """

    def __init__(self, vocab_size=49408, hidden_size=768, num_layers=12, num_heads=12,
                 intermediate_size=3072, hidden_act="quick_gelu", max_length=77, eps=1e-5,
                 output_layer=None):
        super().__init__()
        if hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act must be one of {sorted(ACTIVATIONS)}, got {hidden_act!r}")
        if output_layer is not None:
            if not -num_layers - 1 <= output_layer <= num_layers:
                raise ValueError(f"output_layer {output_layer} out of range for {num_layers} layers")
            output_layer %= num_layers + 1
        self.text_model = CLIPTextTransformer(vocab_size, hidden_size, num_layers, num_heads,
                                              intermediate_size, hidden_act, max_length, eps, output_layer)

    @property
    def token_embedding(self):
        """The token :class:`Embedding` (extra rows for textual inversion go here)."""
        return self.text_model.embeddings.token_embedding

    def construct(self, input_ids):
        return self.text_model(input_ids.astype(ms.int32))
