"""Merge learned words into one: their vectors concatenated or averaged, encoder by encoder.

    python tools/merge_embedding.py --src cat_ti.ckpt toy.safetensors --mode concat --format ours \
        --dst cat_toy_ti.ckpt --token "<cat-toy>"
    python tools/merge_embedding.py --src run1_ti.ckpt run2_ti.ckpt --mode mean --format a1111 --dst exports/ \
        --token "<cat-avg>"

--src takes two or more files (or diffusers folders) of any readable format, as tools/export_embedding.py
does; --format and --dst are as there. --mode:
  concat  the merged word has every source's vectors in --src order (clip_l after clip_l, clip_g after
          clip_g): N1 + N2 + ... vectors, at most the 75 a prompt holds
  mean    vector i is the mean of the sources' vectors i, in each encoder; the sources need the same count
Sources must come from the same model (equal vector widths). Files appear only when complete.
"""
import argparse

import numpy as np

from gm.checks import check_outputs
from gm.cli import ArgumentParser, run
from gm.errors import UsageError, WeightFileError
from gm.textual_inversion import formats
from gm.textual_inversion.words import check_vectors, check_word

MODES = ("concat", "mean")


def parser():
    p = ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog=__doc__.split("\n\n", 2)[2])
    p.add_argument("--src", required=True, nargs="+", help="embedding files (or diffusers folders) to merge")
    p.add_argument("--mode", required=True, choices=MODES, help="concatenate or average the vectors")
    p.add_argument("--format", required=True, choices=sorted(formats.FORMATS), help="format to write")
    p.add_argument("--dst", required=True, help="output file, or folder (diffusers: always a folder)")
    p.add_argument("--token", required=True, help="the merged word; for an a1111 file it is the file name")
    p.add_argument("--dtype", choices=sorted(formats.DTYPES), default="fp32", help="stored precision (default fp32)")
    return p


def merge(found, mode):
    """One row array per encoder from the sources' EmbeddingFiles; WeightFileError/UsageError naming a file
    that does not fit the first."""
    first = found[0]
    for other in found[1:]:
        for key, a, b in zip(formats.ENCODER_KEYS, first.rows, other.rows):
            if a.shape[1] != b.shape[1]:
                raise WeightFileError(f"{other.path}: {key} vectors are {b.shape[1]} wide but {first.path}'s are "
                                      f"{a.shape[1]} (embeddings of different models)")
        if mode == "mean" and other.rows[0].shape[0] != first.rows[0].shape[0]:
            raise UsageError(f"--mode mean: {other.path} has {other.rows[0].shape[0]} vectors but {first.path} "
                             f"has {first.rows[0].shape[0]}; averaging needs equal counts (or use --mode concat)")
    if mode == "concat":
        return [np.concatenate([f.rows[k] for f in found]) for k in range(len(formats.ENCODER_KEYS))]
    return [np.mean([f.rows[k] for f in found], axis=0, dtype=np.float64).astype(np.float32)
            for k in range(len(formats.ENCODER_KEYS))]


def main(argv=None):
    args = parser().parse_args(argv)
    if len(args.src) < 2:
        raise UsageError(f"--src {args.src[0]}: give two or more files to merge (tools/export_embedding.py "
                         "converts one)")
    found = [formats.read(path, need_word=False) for path in args.src]
    rows = merge(found, args.mode)
    count = rows[0].shape[0]
    check_vectors(f"--mode {args.mode}: the merged word's vectors", count)
    check_word("--token", args.token, count)
    dst, word = formats.output_path(args.dst, args.format, args.token)
    if word != args.token:
        check_word(f"--dst {dst}: its word", word, count,
                   hint="an a1111 file's word is its file name; choose another --token or --dst name")
    kind = "folder" if args.format == "diffusers" else "file"
    check_outputs([("--dst", dst)], [(f"--src {path}", path) for path in args.src], kind)
    paths = formats.write(dst, args.token, rows, args.format, formats.DTYPES[args.dtype])
    shapes = ", ".join(f"{key} {list(r.shape)}" for key, r in zip(formats.ENCODER_KEYS, rows))
    sources = " + ".join(f"{f.path} ({f.rows[0].shape[0]})" for f in found)
    print(f"{args.mode} of {sources}; wrote {args.format} {', '.join(paths)} ({shapes}, {args.dtype}); "
          f"word in prompts: {word}")


if __name__ == "__main__":
    run(main)
