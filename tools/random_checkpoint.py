"""Write random weights for a model config in the official SDXL single-file layout.

    python tools/random_checkpoint.py --config configs/inference/sd_xl_tiny.yaml --out checkpoints/tiny.safetensors
    python tools/random_checkpoint.py --config configs/inference/sd_xl_refiner.yaml --out refiner.safetensors

Key names and shapes are those of ``sd_xl_base_1.0.safetensors`` or ``sd_xl_refiner_1.0.safetensors``
(for their configs, exactly their keys, including the reference code's ``position_ids`` and
``logit_scale`` buffers), so the tests and the demo load weights through the same path as real
users. Tensors are generated and written one at a time, so even the real SDXL shapes need little
memory.
"""
from gm.checkpoints.random_weights import DTYPES, write_random_checkpoint
from gm.checks import check_outputs, check_value
from gm.cli import ArgumentParser, run
from gm.errors import UsageError


def main():
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="model config YAML (e.g. configs/inference/sd_xl_tiny.yaml)")
    parser.add_argument("--out", required=True, help="output .safetensors file")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32",
                        help="weight dtype; the official file is fp16 (default fp32)")
    args = parser.parse_args()
    if not args.out.lower().endswith(".safetensors"):
        raise UsageError(f"--out {args.out}: the weights are written as safetensors; name the file *.safetensors")
    check_value("--seed", args.seed, "natural")
    check_outputs([("--out", args.out)], [("--config", args.config)])
    n = write_random_checkpoint(args.config, args.out, args.seed, args.dtype)
    print(f"wrote {n} tensors to {args.out}")


if __name__ == "__main__":
    run(main)
