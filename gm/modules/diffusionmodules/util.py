"""Shared diffusion helpers."""
import math

import numpy as np
import mindspore as ms
from mindspore import Tensor, ops


def timestep_embedding(timesteps, dim, max_period=10000):
    """Sinusoidal embedding of a 1-D tensor of (possibly fractional) timesteps: [N] -> [N, dim].

    cos first, then sin, as in generative-models (and diffusers with flip_sin_to_cos=True).
    """
    half = dim // 2
    freqs = Tensor(np.exp(-math.log(max_period) * np.arange(half, dtype=np.float32) / half))
    args = timesteps.astype(ms.float32)[:, None] * freqs[None]
    emb = ops.cat([ops.cos(args), ops.sin(args)], axis=-1)
    if dim % 2:
        emb = ops.cat([emb, ops.zeros_like(emb[:, :1])], axis=-1)
    return emb
