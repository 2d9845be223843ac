"""Write random weights for a model config in the official SDXL single-file layout.

    python tools/random_checkpoint.py --config configs/inference/sd_xl_tiny.yaml --out checkpoints/tiny.safetensors

Key names and shapes are those of ``sd_xl_base_1.0.safetensors`` (for the base config, exactly
its keys, including the reference code's ``position_ids`` and ``logit_scale`` buffers), so the
tests and the demo load weights through the same path as real users. Tensors are generated and
written one at a time, so even the real SDXL shapes need little memory.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from gm.cli import run  # noqa: E402
from gm.layout import official_layout  # noqa: E402
from gm.random_weights import random_tensor  # noqa: E402
from gm.weight_files import write_safetensors  # noqa: E402

DTYPES = {"fp32": np.float32, "fp16": np.float16}


def buffer_value(name, shape):
    """Values of the non-weight buffers of the official file."""
    if name.endswith("position_ids"):
        return np.arange(shape[-1], dtype=np.int64).reshape(shape)
    return np.asarray(np.log(1 / 0.07), np.float32)


def write_random_checkpoint(config, out, seed=0, dtype="fp32"):
    """Random weights for ``config`` (path) written to ``out`` (.safetensors); returns the key count."""
    layout = official_layout(config)
    entries = []
    for name, (shape, kind) in layout.items():
        if kind == "weight":
            entries.append((name, shape, DTYPES[dtype], lambda n=name, s=shape: random_tensor(n, s, seed)))
        else:
            value = buffer_value(name, shape)
            entries.append((name, shape, value.dtype, lambda v=value: v))
    write_safetensors(out, entries, metadata={"format": "pt", "source": "random", "seed": seed})
    return len(entries)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="model config YAML (e.g. configs/inference/sd_xl_tiny.yaml)")
    parser.add_argument("--out", required=True, help="output .safetensors file")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32",
                        help="weight dtype; the official file is fp16 (default fp32)")
    args = parser.parse_args()
    n = write_random_checkpoint(args.config, args.out, args.seed, args.dtype)
    print(f"wrote {n} tensors to {args.out}")


if __name__ == "__main__":
    run(main)
