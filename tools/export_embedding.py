"""Convert a learned word between embedding-file formats, for use in other SDXL tools or back here.

    python tools/export_embedding.py --src runs/cat_toy/weights/SD-XL-base-1.0_3000_ti.ckpt \
        --format a1111 --dst cat-toy.safetensors
    python tools/export_embedding.py --src runs/cat_toy/weights/SD-XL-base-1.0_3000_ti.ckpt \
        --format diffusers --dst cat_toy_diffusers/
    python tools/export_embedding.py --src cat-toy.safetensors --format ours --dst cat_toy_ti.ckpt --token "<cat-toy>"

--src is any readable format (this toolkit's _ti.ckpt, an A1111/ComfyUI/kohya SDXL .safetensors, a
diffusers learned_embeds pair or its folder, mindone's _ti.ckpt). --format:
  a1111      one .safetensors with clip_l and clip_g, for AUTOMATIC1111, ComfyUI and kohya sd-scripts;
             the word in prompts is the file name (ComfyUI: embedding:NAME)
  diffusers  a folder with learned_embeds.safetensors (text_encoder) and learned_embeds_2.safetensors
             (text_encoder_2), each {token: [N, D]}, for diffusers' load_textual_inversion
  mindone    a _ti.ckpt for mindone's SDXL example
  ours       this toolkit's _ti.ckpt
A --dst folder gets a file named after the token. Files appear only when complete.
"""
import argparse

from gm.checks import check_outputs
from gm.cli import ArgumentParser, run
from gm.textual_inversion import formats
from gm.textual_inversion.words import check_word

def parser():
    p = ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 2)[2])
    p.add_argument("--src", required=True, help="embedding file (or diffusers folder) to read")
    p.add_argument("--format", required=True, choices=sorted(formats.FORMATS), help="format to write")
    p.add_argument("--dst", required=True, help="output file, or folder (diffusers: always a folder)")
    p.add_argument("--token", default=None,
                   help="the word to store (default: the source's); for a1111 the file name is the word")
    p.add_argument("--dtype", choices=sorted(formats.DTYPES), default="fp32", help="stored precision (default fp32)")
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    found = formats.read(args.src, need_word=False)
    count = found.rows[0].shape[0]
    if args.token is not None:
        check_word("--token", args.token, count)
    else:
        check_word(f"--src {args.src}: its token", found.token, count, hint="give the vectors a new word with --token")
    token = args.token if args.token is not None else found.token
    dst, word = formats.output_path(args.dst, args.format, token, token_given=args.token is not None)
    if word != token:
        check_word(f"--dst {dst}: its word", word, count,
                   hint="an a1111 file's word is its file name; choose another --token or --dst name")
    check_outputs([("--dst", dst)], [("--src", args.src)], "folder" if args.format == "diffusers" else "file")
    paths = formats.write(dst, token, found.rows, args.format, formats.DTYPES[args.dtype])
    shapes = ", ".join(f"{key} {list(r.shape)}" for key, r in zip(formats.ENCODER_KEYS, found.rows))
    print(f"read {args.src} ({found.format}: {found.token}); wrote {args.format} {', '.join(paths)} ({shapes}, "
          f"{args.dtype}); word in prompts: {word}")


if __name__ == "__main__":
    run(main)
