"""Random weights for any model of the toolkit, scaled so activations stay in a sane range.

Used by ``tools/random_checkpoint.py`` and the tests: the numbers are arbitrary but the file
layout and the loading path are the real ones. Each tensor depends only on (seed, name).
"""
import zlib

import numpy as np
from mindspore import Tensor

from gm.checkpoints.layout import write_official

DTYPES = {"fp32": np.float32, "fp16": np.float16}


def random_tensor(name, shape, seed=0):
    """A float32 array for parameter ``name``: norms near 1, biases small, matrices ~ 1/sqrt(fan_in)."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    shape = tuple(int(s) for s in shape)
    if len(shape) == 0:
        return np.asarray(rng.uniform(0.5, 1.5), np.float32)
    if len(shape) == 1:
        if name.endswith(".weight"):  # 1-D weights are the scales of LayerNorm/GroupNorm
            return (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        return (0.05 * rng.standard_normal(shape)).astype(np.float32)
    if "embedding" in name:
        return (0.5 * rng.standard_normal(shape)).astype(np.float32)
    fan_in = shape[0] if name.endswith("text_projection") else int(np.prod(shape[1:]))
    return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)


def randomize_cell(cell, seed=0, prefix=""):
    """Fill every parameter of ``cell`` with random weights; returns {prefix+name: array}."""
    weights = {}
    for name, param in cell.parameters_and_names():
        weights[prefix + name] = random_tensor(prefix + name, param.shape, seed)
        param.set_data(Tensor(weights[prefix + name], param.dtype))
    return weights


def write_random_checkpoint(config, out, seed=0, dtype="fp32"):
    """Random weights for ``config`` written to ``out`` (.safetensors) in the official layout.

    Tensors are generated and written one at a time; returns the number of keys.
    """
    return write_official(config, out, lambda name, shape: random_tensor(name, shape, seed), DTYPES[dtype],
                          metadata={"format": "pt", "source": "random", "seed": seed})
