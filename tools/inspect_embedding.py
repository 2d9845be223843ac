"""Show what learned-word files hold: format, model family, token, each vector's norm per text encoder and,
with the model's weights, its nearest vocabulary words.

    python tools/inspect_embedding.py runs/cat_toy/weights/SD-XL-base-1.0_3000_ti.ckpt cat-toy.safetensors out/
    python tools/inspect_embedding.py cat-toy.safetensors --weight checkpoints/sd_xl_base_1.0_ms.ckpt

Reads every format this toolkit knows (its _ti.ckpt, A1111/ComfyUI/kohya SDXL .safetensors, diffusers'
learned_embeds pair or folder, mindone's _ti.ckpt) and names the family of other models' files
(SD 1.x: 768-wide vectors, SD 2.x: 1024-wide). With --weight (SDXL weights, .ckpt or official
.safetensors) each vector also lists the vocabulary tokens whose rows in that encoder's token-embedding
table point most nearly its way (cosine similarity; a token that only starts a word ends in -).
Exit status 1 if any file is unreadable or not usable here as an SDXL learned word.
"""
import argparse
import os
import sys

import numpy as np

from gm.checkpoints.weight_files import open_weights
from gm.checks import check_value
from gm.cli import ArgumentParser, run
from gm.errors import WeightFileError
from gm.textual_inversion import formats
from gm.textual_inversion.words import placeholder_tokens

MAX_NORMS = 8
MAX_TENSORS = 10
# The two text encoders' token-embedding tables in SDXL weights: this toolkit's and the official names, mindone's
TABLE_KEYS = (("conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight",
               "conditioner.embedders.1.model.token_embedding.weight"), formats.MINDONE_KEYS)


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


def token_tables(path):
    """The text encoders' token-embedding tables of SDXL weights ``path``, each row scaled to length 1."""
    if not os.path.isfile(path):
        raise WeightFileError(f"--weight {path}: no such file")
    with open_weights(path) as reader:
        keys = next((keys for keys in TABLE_KEYS if set(keys) <= set(reader.keys())), None)
        if keys is None:
            raise WeightFileError(f"--weight {path}: no text-encoder token-embedding tables ({TABLE_KEYS[0][0]} "
                                  "...); expected SDXL weights")
        tables = [np.array(reader.get(key), np.float32) for key in keys]
    return [t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-12) for t in tables]


def token_name(index):
    """A vocabulary token as text: ``cat</w>`` -> ``cat``, a token that only starts a word ``kit`` -> ``kit-``."""
    from gm.modules.encoders.tokenizer import load_vocab

    tokens = load_vocab().tokens
    if index >= len(tokens):
        return f"#{index}"
    token = tokens[index]
    return load_vocab().decode([token]) + ("" if token.endswith("</w>") else "-")


def nearest(row, table, count):
    """The ``count`` vocabulary tokens whose rows of ``table`` (unit length) are nearest ``row`` by cosine."""
    cosine = table @ (row / max(float(np.linalg.norm(row)), 1e-12))
    count = min(count, len(cosine))
    best = np.argpartition(-cosine, count - 1)[:count]
    return ", ".join(f"{token_name(i)} {cosine[i]:.2f}" for i in best[np.argsort(-cosine[best])])


def vector_lines(token, rows, table, count):
    """One line per vector of one encoder: its token, its norm and, with ``table`` (that encoder's, unit rows),
    its ``count`` nearest vocabulary tokens."""
    if table is not None and table.shape[1] != rows.shape[1]:
        return [f"    nearest words not shown: the vectors are {rows.shape[1]} wide, --weight's table "
                f"{table.shape[1]} (another model)"]
    tokens = placeholder_tokens(token, rows.shape[0])
    width = max(len(t) for t in tokens)
    return [f"    {t:<{width}}  norm {np.linalg.norm(row):.4g}"
            + (f"  nearest {nearest(row, table, count)}" if table is not None else "")
            for t, row in zip(tokens, rows)]


def report(found, tables=None, count=5):
    """The lines describing one EmbeddingFile; a usable file's vectors one per line, with their nearest
    vocabulary tokens when ``tables`` (the model's, one per encoder) are given."""
    lines = [found.path, f"  format  {found.format}" + (f" ({formats.FORMATS[found.format]})"
                                                        if found.format in formats.FORMATS else "")]
    lines.append(f"  family  {found.family}")
    if found.token is not None:
        source = " (the file name)" if found.format == "a1111" else ""
        trained = f", trained as {found.trained_token}" if found.trained_token not in (None, found.token) else ""
        lines.append(f"  token   {found.token}{source}{trained}")
    if found.rows is not None:
        n = found.rows[0].shape[0]
        lines.append(f"  vectors {n} per encoder: {' '.join(placeholder_tokens(found.token, n))}")
    shown = list(found.tensors.items())[:MAX_TENSORS]
    width = max((len(k) for k, _ in shown), default=0)
    for index, (key, stored) in enumerate(shown):
        where = f" ({stored.name} in {os.path.basename(stored.file)})" if stored.name != key else ""
        summary = "" if found.rows is not None else f"  {norms(stored.value)}"
        lines.append(f"  {key:<{width}}  {list(stored.shape)} {stored.dtype}{summary}{where}")
        if found.rows is not None:
            lines += vector_lines(found.token, found.rows[index], tables[index] if tables else None, count)
    if len(found.tensors) > MAX_TENSORS:
        lines.append(f"  ... {len(found.tensors) - MAX_TENSORS} more tensors")
    lines.append("  usable  yes" if found.problem is None else f"  usable  no: {found.problem}")
    return lines


def main(argv=None):
    p = ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog=__doc__.split("\n\n", 2)[2])
    p.add_argument("files", nargs="+", metavar="FILE", help="embedding files or diffusers folders")
    p.add_argument("--weight", default=None,
                   help="SDXL weights (.ckpt or official .safetensors): also list each vector's nearest words")
    p.add_argument("--nearest", type=int, default=5, help="how many nearest words per vector (with --weight)")
    args = p.parse_args(argv)
    check_value("--nearest", args.nearest, "count")
    tables = token_tables(args.weight) if args.weight else None
    failed = False
    for path in args.files:
        try:
            found = formats.describe(path)
        except WeightFileError as e:
            print(f"error: {e}", file=sys.stderr)
            failed = True
            continue
        print("\n".join(report(found, tables, args.nearest)), flush=True)
        failed = failed or found.problem is not None
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    run(main)
