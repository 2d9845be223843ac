"""Show what learned-word files hold: format, model family, token, vectors per text encoder and their norms.

    python tools/inspect_embedding.py runs/cat_toy/weights/SD-XL-base-1.0_3000_ti.ckpt cat-toy.safetensors out/

Reads every format this toolkit knows (its _ti.ckpt, A1111/ComfyUI/kohya SDXL .safetensors, diffusers'
learned_embeds pair or folder, mindone's _ti.ckpt) and names the family of other models' files
(SD 1.x: 768-wide vectors, SD 2.x: 1024-wide). Exit status 1 if any file is unreadable or not usable
here as an SDXL learned word.
"""
import argparse
import os
import sys


import numpy as np

from gm.cli import ArgumentParser, run
from gm.errors import WeightFileError
from gm.textual_inversion import formats
from gm.textual_inversion.words import placeholder_tokens

MAX_NORMS = 8
MAX_TENSORS = 10


def norms(value):
    """Per-vector L2 norms (all of them up to MAX_NORMS, else min/mean/max)."""
    if value is None:
        return "(not read)"
    n = np.linalg.norm(value.reshape(-1, value.shape[-1]) if value.ndim else value.reshape(1, 1), axis=-1)
    if n.size == 0:
        return "no vectors"
    if n.size <= MAX_NORMS:
        return "norms " + " ".join(f"{x:.4g}" for x in n)
    return f"norms min {n.min():.4g} mean {n.mean():.4g} max {n.max():.4g}"


def report(found):
    """The lines describing one EmbeddingFile."""
    lines = [found.path, f"  format  {found.format}" + (f" ({formats.FORMATS[found.format]})"
                                                        if found.format in formats.FORMATS else "")]
    lines.append(f"  family  {found.family}")
    if found.token is not None:
        source = " (the file name)" if found.format == "a1111" else ""
        trained = f", trained as {found.trained_token}" if found.trained_token not in (None, found.token) else ""
        lines.append(f"  token   {found.token}{source}{trained}")
    if found.rows is not None:
        count = found.rows[0].shape[0]
        lines.append(f"  vectors {count} per encoder: {' '.join(placeholder_tokens(found.token, count))}")
    shown = list(found.tensors.items())[:MAX_TENSORS]
    width = max((len(k) for k, _ in shown), default=0)
    for key, stored in shown:
        where = f" ({stored.name} in {os.path.basename(stored.file)})" if stored.name != key else ""
        lines.append(f"  {key:<{width}}  {list(stored.shape)} {stored.dtype}  {norms(stored.value)}{where}")
    if len(found.tensors) > MAX_TENSORS:
        lines.append(f"  ... {len(found.tensors) - MAX_TENSORS} more tensors")
    lines.append("  usable  yes" if found.problem is None else f"  usable  no: {found.problem}")
    return lines


def main(argv=None):
    p = ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 2)[2])
    p.add_argument("files", nargs="+", metavar="FILE", help="embedding files or diffusers folders")
    args = p.parse_args(argv)
    failed = False
    for path in args.files:
        try:
            found = formats.describe(path)
        except WeightFileError as e:
            print(f"error: {e}", file=sys.stderr)
            failed = True
            continue
        print("\n".join(report(found)), flush=True)
        failed = failed or found.problem is not None
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    run(main)
