"""Sample SDXL images with learned textual-inversion words, from the command line.

    python demo/sampling_without_streamlit.py --task txt2img \\
        --config configs/training/sd_xl_base_finetune_textual_inversion.yaml \\
        --weight checkpoints/sd_xl_base_1.0_ms.ckpt \\
        --textual_inversion_weight runs/cat_toy/SD-XL-base-1.0_3000_ti.ckpt \\
        --prompt "a <cat-toy> backpack" --device_target CPU --num_cols 4

Several embedding files, each bringing its own word, go into one prompt:
    --textual_inversion_weight cat_toy_ti.ckpt chinese_art_ti.ckpt --prompt "a <cat-toy> in <chinese-art> style"
Image-to-image: --task img2img --img photo.png --strength 0.6
Base then refiner (the refiner finishes the last 20 % of the schedule):
    --refiner_weight checkpoints/sd_xl_refiner_1.0_ms.ckpt --refiner_switch 0.8
"""
import argparse
import glob
import os
import re
import time

from gm.checks import check_outputs, check_side, check_value
from gm.cli import ArgumentParser, add_compile_cache_arg, add_device_args, run
from gm.constants import MAX_IMAGES, SAMPLERS, SPACINGS
from gm.errors import UsageError, warn


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLER_ALIASES = {class_name: name for name, (_, class_name) in SAMPLERS.items()}
DEFAULT_PROMPT = "Astronaut in a jungle, cold color palette, muted colors, detailed, 8k"
# Flags that shape no graph, or do so only through what the compile cache's key holds instead (the configs'
# content, the loaded words, the prompts, the image size).
NOT_IN_GRAPHS = {"save_path", "seed", "weight", "refiner_weight", "config", "refiner_config",
                 "textual_inversion_weight", "img", "prompt", "compile_cache"}


def parser():
    p = ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("model")
    g.add_argument("--task", default="txt2img", choices=["txt2img", "img2img"])
    g.add_argument("--config", default="configs/inference/sd_xl_base.yaml",
                   help="model config (an inference or training config)")
    g.add_argument("--weight", default="checkpoints/sd_xl_base_1.0_ms.ckpt",
                   help="SDXL weights: a .ckpt from tools/convert_weight.py or the official .safetensors")
    g.add_argument("--textual_inversion_weight", nargs="+", action="extend", default=[], metavar="TI_CKPT",
                   help="learned-word files: _ti.ckpt from train_textual_inversion.py, or A1111/ComfyUI/kohya "
                        ".safetensors, a diffusers learned_embeds pair, mindone's _ti.ckpt; several files, or "
                        "the flag repeated, load several words")
    g.add_argument("--refiner_weight", default=None,
                   help="SDXL refiner weights (.ckpt or the official sd_xl_refiner_1.0.safetensors): the base "
                        "denoises to --refiner_switch, the refiner finishes (txt2img)")
    g.add_argument("--refiner_config", default="configs/inference/sd_xl_refiner.yaml", help="the refiner's config")
    g.add_argument("--refiner_switch", type=float, default=0.8,
                   help="share of the noise schedule the base denoises before the refiner takes over, in (0, 1)")
    g = p.add_argument_group("prompt")
    g.add_argument("--prompt", default=DEFAULT_PROMPT, help="the prompt, or a text file of prompts, one a line")
    g.add_argument("--negative_prompt", default="", help="negative prompt (empty: zero unconditional embedding)")
    g = p.add_argument_group("sampling")
    g.add_argument("--sampler", default="euler", choices=tuple(SAMPLERS) + tuple(SAMPLER_ALIASES),
                   help=", ".join(f"{name} ({label})" for name, (label, _) in SAMPLERS.items())
                   + "; or their class names")
    g.add_argument("--spacing", default="sgm", choices=SPACINGS,
                   help="noise levels: the training timesteps spaced as sgm (generative-models), leading "
                        "(diffusers' SDXL default), trailing or linspace; or karras (Karras et al.'s sigmas, "
                        "e.g. --sampler dpmpp_2m --spacing karras is DPM++ 2M Karras)")
    g.add_argument("--sample_step", type=int, default=40, help="sampling steps")
    g.add_argument("--guidance_scale", type=float, default=5.0, help="classifier-free guidance scale (1: none)")
    g.add_argument("--seed", type=int, default=42,
                   help="seed of the noise; line k of a prompt file uses seed + k")
    g.add_argument("--H", type=int, default=None,
                   help="image height in pixels, a multiple of 32 for SDXL (8 for the VAE x 4 for the UNet); "
                        "None: the config's train.resolution, else 1024 (img2img: the image's)")
    g.add_argument("--W", type=int, default=None, help="image width, as --H")
    g.add_argument("--num_cols", type=int, default=1, help="images per prompt in a grid row")
    g.add_argument("--num_rows", type=int, default=1, help="grid rows per prompt (images = rows x cols)")
    g = p.add_argument_group("img2img")
    g.add_argument("--img", default=None, help="input image for --task img2img")
    g.add_argument("--strength", type=float, default=0.75,
                   help="how much of the noise schedule to run over the image (0: keep it, 1: all)")
    g = p.add_argument_group("output and device")
    g.add_argument("--save_path", default="outputs/demo", help="folder for the PNGs and grids")
    add_device_args(g)
    add_compile_cache_arg(g)
    return p


def check_args(args):
    """Flag errors that need no model, found before the (slow) model load (gm.cli's shared value rules)."""
    for flag in ("H", "W"):
        value = getattr(args, flag)
        if value is not None:
            check_value(f"--{flag}", value, "multiple_of_8")
            check_side(f"--{flag} {value}", value)
    for flag in ("num_cols", "num_rows", "sample_step"):
        check_value(f"--{flag}", getattr(args, flag), "count")
    if args.num_cols * args.num_rows > MAX_IMAGES:
        raise UsageError(f"--num_rows {args.num_rows} x --num_cols {args.num_cols}: at most {MAX_IMAGES} images per "
                         "prompt (they are sampled as one batch); for more, run again with another --seed")
    if args.sample_step > 1000:
        raise UsageError(f"--sample_step {args.sample_step}: at most 1000 (the training timesteps)")
    check_value("--guidance_scale", args.guidance_scale, "finite")
    check_value("--seed", args.seed, "natural")
    if not os.path.isfile(args.weight):
        raise UsageError(f"--weight {args.weight}: no such file (convert the official weights with "
                         "tools/convert_weight.py)")
    check_roles(args)
    inputs = [("--weight", args.weight), ("--config", args.config), ("--img", args.img),
              ("--refiner_weight", args.refiner_weight), ("--refiner_config", args.refiner_config)]
    inputs += [("--textual_inversion_weight", path) for path in args.textual_inversion_weight]
    inputs += [("--prompt", args.prompt)] if os.path.isfile(args.prompt) else []
    check_outputs([("--save_path", args.save_path)], inputs, kind="new_files")
    if args.task == "img2img":
        if not args.img:
            raise UsageError("--img: required with --task img2img (the image to start from)")
        if not os.path.isfile(args.img):
            raise UsageError(f"--img {args.img}: no such file")
        check_value("--strength", args.strength, "probability")


def check_roles(args):
    """The base's weights in --weight, the refiner's in --refiner_weight (found by their text encoders), and a
    --refiner_switch in (0, 1); the refiner only with txt2img."""
    from gm.checkpoints.layout import weight_kind
    from gm.refiner import check_switch

    if weight_kind(args.weight) == "refiner":
        raise UsageError(f"--weight {args.weight}: an SDXL refiner checkpoint; give the base model's weights as "
                         "--weight and the refiner's as --refiner_weight")
    if args.refiner_weight is None:
        return
    check_switch(args.refiner_switch)
    if args.task != "txt2img":
        raise UsageError(f"--refiner_weight: works with --task txt2img (got --task {args.task})")
    if not os.path.isfile(args.refiner_weight):
        raise UsageError(f"--refiner_weight {args.refiner_weight}: no such file (convert the official weights with "
                         "tools/convert_weight.py)")
    if weight_kind(args.refiner_weight) == "base":
        raise UsageError(f"--refiner_weight {args.refiner_weight}: an SDXL base checkpoint; give the refiner's "
                         "weights as --refiner_weight and the base model's as --weight")


def read_prompts(prompt):
    """``[prompt]``, or the non-empty lines of the file ``prompt`` names."""
    if os.path.isfile(prompt):
        try:
            with open(prompt, encoding="utf-8") as f:
                prompts = [line.strip() for line in f if line.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"--prompt {prompt}: cannot read it as UTF-8 text ({e})") from None
        if not prompts:
            raise UsageError(f"--prompt {prompt}: the file has no prompts")
        return prompts
    return [prompt]


def check_embeddings(paths):
    """Each file readable as a learned word and no token in two files (``<a>`` with 3 vectors holds
    ``<a> <a>_1 <a>_2``); {token: path}."""
    from gm.textual_inversion.embeddings import load_ti
    from gm.textual_inversion.words import placeholder_tokens

    tokens, owners = {}, {}
    for path in paths:
        token, rows = load_ti(path)
        for t in placeholder_tokens(token, rows[0].shape[0]):
            if t in owners:
                raise UsageError(f"--textual_inversion_weight: {owners[t]} and {path} both hold {t}")
            owners[t] = path
        tokens[token] = path
    return tokens


def read_input_image(path):
    """The image at ``path`` as RGB (PIL)."""
    from PIL import Image, ImageOps

    from gm.textual_inversion.dataset import to_rgb

    try:
        with Image.open(path) as image:
            image.load()
            return to_rgb(ImageOps.exif_transpose(image))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise UsageError(f"--img {path}: not a readable image ({e})") from None


def image_size(args, config, image, multiple):
    """(height, width): --H/--W, else the input image's size cut down to ``multiple``, else the config's."""
    from gm.inference import default_size

    if image is not None:
        height, width = args.H or image.height // multiple * multiple, args.W or image.width // multiple * multiple
        if min(height, width) < multiple:
            raise UsageError(f"--img {args.img}: {image.width}x{image.height} is smaller than {multiple}x{multiple}")
    else:
        height, width = args.H or default_size(config), args.W or default_size(config)
    for flag, value in (("H", height), ("W", width)):
        if value % multiple:
            raise UsageError(f"--{flag} {value}: this model needs a multiple of {multiple} (the VAE's 8 times 2 "
                             "per UNet downsampling)")
        if image is not None and not getattr(args, flag):
            check_side(f"--img {args.img} ({image.width}x{image.height})", value, "; give --H and --W to resize it")
        check_side(f"--{flag} {value}", value)
    return height, width


def next_index(folder):
    """One past the highest ``NNNNN.png`` or ``grid_NNNNN.png`` number in ``folder`` (0 if none):
    earlier images and grids are kept."""
    numbers = [int(m.group(1)) for f in glob.glob(os.path.join(folder, "*.png"))
               if (m := re.fullmatch(r"(?:grid_)?(\d{5})\.png", os.path.basename(f)))]
    return max(numbers, default=-1) + 1


def sample_prompt(sampler, args, prompt, seed, image, height, width, method):
    """The images for one prompt (with a progress bar) and the seconds they took."""
    from tqdm import tqdm

    for message in sampler.prompt_warnings(prompt) + sampler.prompt_warnings(args.negative_prompt):
        warn(message)
    count = args.num_rows * args.num_cols
    with tqdm(total=args.sample_step, desc=prompt[:40], unit="step", leave=False) as bar:
        def progress(i, n):
            bar.total = n
            bar.update(i - bar.n)

        start = time.perf_counter()
        common = dict(negative=args.negative_prompt, seed=seed, sampler=method, callback=progress)
        if image is None:
            images = sampler.sample([prompt] * count, height, width, **common)
        else:
            images = sampler.img2img([prompt] * count, image, args.strength, **common)
    return images, time.perf_counter() - start


def save_images(images, folder, num_cols):
    """Each image as the next free ``NNNNN.png`` of ``folder``, then their grid; the paths."""
    from gm.images import make_grid, save_png

    first = next_index(folder)
    paths = [os.path.join(folder, f"{first + i:05d}.png") for i in range(len(images))]
    for image, path in zip(images, paths):
        save_png(image, path)
    grid = os.path.join(folder, f"grid_{first:05d}.png")
    save_png(make_grid(images, num_cols), grid)
    return paths, grid


def main(argv=None):
    args = parser().parse_args(argv)
    check_args(args)
    prompts = read_prompts(args.prompt)
    check_embeddings(args.textual_inversion_weight)
    from PIL import Image

    from gm.build import build_model
    from gm.compile_cache import resolve, sampling_parts, use_compile_cache
    from gm.config import load_config
    from gm.inference import SamplingPipeline
    from gm.runtime import init_mindspore
    from gm.modules.diffusionmodules.sampling import make_sampler

    configs = [load_config(args.config)] + ([load_config(args.refiner_config)] if args.refiner_weight else [])
    config = configs[0]
    image = read_input_image(args.img) if args.task == "img2img" else None
    init_mindspore(args.device_target, args.ms_mode)
    sampler = SamplingPipeline(build_model(config, args.weight, args.ms_amp_level, args.amp_dtype))
    if args.refiner_weight:
        from gm.refiner import TwoStagePipeline

        refiner = build_model(configs[1], args.refiner_weight, args.ms_amp_level, args.amp_dtype)
        sampler = TwoStagePipeline(sampler, SamplingPipeline(refiner), args.refiner_switch)
    height, width = image_size(args, config, image, sampler.size_multiple)
    if image is not None:
        image = image.resize((width, height), Image.BICUBIC)
    for path in args.textual_inversion_weight:
        token = sampler.load_concept(path)
        print(f"learned word {token} ({sampler.concepts[token]} vectors) from {path}")
    method = make_sampler(SAMPLER_ALIASES.get(args.sampler, args.sampler), args.sample_step, args.guidance_scale,
                          spacing=args.spacing)
    try:
        os.makedirs(args.save_path, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--save_path {args.save_path}: cannot write there ({e.strerror or e})") from None
    cache = use_compile_cache(resolve(args.compile_cache), sampling_parts(
        configs, sampler.concepts,
        {**{k: v for k, v in vars(args).items() if k not in NOT_IN_GRAPHS}, "prompts": prompts, "height": height,
         "width": width, "refiner": bool(args.refiner_weight)}))
    try:
        for k, prompt in enumerate(prompts):
            images, seconds = sample_prompt(sampler, args, prompt, args.seed + k, image, height, width, method)
            paths, grid = save_images(images, args.save_path, args.num_cols)
            print(f"{prompt!r}: {len(images)} images {width}x{height}, {seconds / len(images):.2f} s each -> "
                  f"{paths[0]} ... {os.path.basename(paths[-1])}, grid {grid}", flush=True)
    finally:
        if cache:
            cache.close()


if __name__ == "__main__":
    run(main)
