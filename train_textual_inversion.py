"""Teach SDXL a new word: textual inversion in both text encoders, every model weight frozen.

    python train_textual_inversion.py --demo True          # the toy SDXL learns a word from datasets/demo_toy
    python train_textual_inversion.py --data_path datasets/cat_toy --save_path runs/cat_toy \\
        --num_vectors 10 --total_step 3000 --placeholder_token "<cat-toy>" --learnable_property object

Flags left unset take their value from the training config (configs/training/*.yaml).
"""
import argparse
import os
import sys

from gm.cli import ArgumentParser, add_compile_cache_arg, add_device_args, run, str2bool
from gm.errors import UsageError


ROOT = os.path.dirname(os.path.abspath(__file__))
# The demo: the toy SDXL (pretrained by us, checkpoints/sd_xl_toy.md) learns a word for a striped orange
# star, a combination it never saw, from 5 pictures; the concept meter scores it before and after.
DEMO = {
    "config": "configs/training/sd_xl_toy_finetune_textual_inversion.yaml",
    "weight": "checkpoints/sd_xl_toy.safetensors",
    "data_path": "datasets/demo_toy",
    "save_path": "runs/demo",
    "placeholder_token": "<demo-toy>",
    "initializer_token": "star",
    "infer_during_train": True,
    "measure_concept": "toy_star",
}


def parser():
    p = ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("model")
    g.add_argument("--config", default="configs/training/sd_xl_base_finetune_textual_inversion.yaml",
                   help="training config: the model (via base:) plus optimiser/data/inference defaults")
    g.add_argument("--weight", default="checkpoints/sd_xl_base_1.0_ms.ckpt",
                   help="SDXL weights: a .ckpt from tools/convert_weight.py or the official .safetensors")
    g.add_argument("--demo", type=str2bool, default=False,
                   help="run the built-in demo: the toy SDXL (checkpoints/sd_xl_toy.safetensors) learns "
                        "<demo-toy> from datasets/demo_toy, scored by the concept meter; output in runs/demo; "
                        "other flags still override")
    g = p.add_argument_group("concept")
    g.add_argument("--data_path", default=None, help="folder of 3-20 images (jpg/png/webp), optional .txt captions")
    g.add_argument("--placeholder_token", default="<cat-toy>", help="the new word, written in prompts")
    g.add_argument("--num_vectors", type=int, default=1,
                   help="vectors per encoder for the word (the token expands to this many tokens)")
    g.add_argument("--initializer_token", default=None,
                   help="start from the embedding of this word or phrase (default: random). The phrase's tokens "
                        "are spread over the vectors in order: as many vectors as tokens, one each; fewer "
                        "vectors, each the mean of a run of consecutive tokens (1 vector: the mean of all); "
                        "more vectors, each token repeated over a run ('plush toy cat', 6 vectors: plush plush "
                        "toy toy cat cat)")
    g.add_argument("--learnable_property", default="object", help="object, style or face: picks the prompt templates")
    g.add_argument("--template_file", default=None, help="text file of prompt templates, one per line with {}")
    g.add_argument("--initializer_file", default=None,
                   help="start from an existing SDXL embedding file of this word (any supported format)")
    g.add_argument("--initializer_file_l", default=None,
                   help="start encoder 1 (CLIP ViT-L, clip_l) from an SD 1.x embedding (the same text tower): a "
                        ".safetensors with one [N, 768] tensor (A1111/kohya emb_params or string_to_param.*, "
                        "diffusers' {token: vectors}); encoder 2 starts from --initializer_token or random; "
                        "--train_encoders then defaults to g")
    g.add_argument("--concepts", default=None,
                   help="YAML file listing several concepts to learn in one run (each: placeholder_token, "
                        "data_path, learnable_property, num_vectors, initializer_token, initializer_file, initializer_file_l, "
                        "template_file; paths relative to the YAML file); replaces the concept flags")
    g = p.add_argument_group("training")
    g.add_argument("--total_step", type=int, default=None, help="optimiser steps (config: train.total_step)")
    g.add_argument("--train_batch_size", type=int, default=None, help="images per micro-batch (config)")
    g.add_argument("--gradient_accumulation_steps", type=int, default=1, help="micro-batches per optimiser step")
    g.add_argument("--learning_rate", type=float, default=None, help="AdamW learning rate (config: optim)")
    g.add_argument("--lr_scheduler", default=None, help="constant or cosine (config: optim)")
    g.add_argument("--lr_warmup_steps", type=int, default=None, help="linear warm-up steps (config: optim)")
    g.add_argument("--clip_grad", type=str2bool, default=True, help="clip the gradient's global norm")
    g.add_argument("--max_grad_norm", type=float, default=1.0, help="norm for --clip_grad")
    g.add_argument("--resolution", type=int, default=None, help="training image side, multiple of 8 (config)")
    g.add_argument("--center_crop", type=str2bool, default=None, help="center crop (else a few random crops)")
    g.add_argument("--aspect_buckets", type=str2bool, default=None,
                   help="crop each image to the bucket nearest its aspect ratio (sides multiples of 64, area at "
                        "most --resolution squared, up to 4:1) instead of a square; --resolution a multiple of 64 "
                        "(config: train.aspect_buckets; default False)")
    g.add_argument("--flip_p", type=float, default=None, help="probability of a horizontal flip (config)")
    g.add_argument("--repeats", type=int, default=None, help="times each image appears per epoch (config)")
    g.add_argument("--seed", type=int, default=42, help="seed of initialisation, data order and noise")
    g.add_argument("--snr_gamma", type=float, default=None,
                   help="min-SNR-gamma loss weights: each sample's eps loss times min(SNR, gamma) / SNR, SNR = "
                        "1/sigma^2 (e.g. 5; config: train.snr_gamma; default: off, the plain eps loss)")
    g.add_argument("--preserve_norm", type=str2bool, default=None,
                   help="after each optimiser step, rescale every learned vector to the mean norm of its "
                        "encoder's ordinary word vectors (config: train.preserve_norm; default False)")
    g.add_argument("--train_encoders", default=None,
                   help="text encoders whose vectors are learned: l (CLIP ViT-L, encoder 1, clip_l), g (OpenCLIP "
                        "ViT-bigG, encoder 2, clip_g) or l,g; the others keep their starting vectors (default: "
                        "l,g, or g when every concept has --initializer_file_l)")
    g.add_argument("--resume", type=str2bool, default=False,
                   help="continue from --save_path/train_state.ckpt (vectors, optimiser, step, data order)")
    g = p.add_argument_group("outputs")
    g.add_argument("--save_path", default="runs/textual_inversion",
                   help="output folder; one that holds an earlier run is refused unless --resume or --overwrite")
    g.add_argument("--overwrite", type=str2bool, default=False,
                   help="replace the earlier run in --save_path: its _ti.ckpt files, train_state.ckpt, loss log, "
                        "samples and TensorBoard event files are deleted once this run has been checked and "
                        "starts writing")
    g.add_argument("--save_ckpt_interval", type=int, default=None, help="save the _ti.ckpt every N steps (config)")
    g.add_argument("--max_num_ckpt", type=int, default=None,
                   help="keep at most N >= 1 _ti.ckpt files (config; a config without max_num_ckpt keeps all)")
    g.add_argument("--log_with", default=None,
                   help="none, or tensorboard: every loss.csv column also as TensorBoard scalars in "
                        "--save_path/logs (view with tensorboard --logdir; config: train.log_with; default none)")
    g.add_argument("--infer_during_train", type=str2bool, default=False,
                   help="sample images for a fixed prompt and seed every --infer_interval steps")
    g.add_argument("--infer_interval", type=int, default=None, help="steps between samples (config: infer)")
    g.add_argument("--infer_prompt", default=None, help="prompt for those samples, with {} for the word")
    g.add_argument("--validation_samples", type=int, default=None,
                   help="held-out samples per concept (fixed views, noise and noise levels) whose loss is logged "
                        "every --infer_interval steps; 0: no validation (config: infer.validation_samples; "
                        "default 8)")
    g.add_argument("--best_by", default=None,
                   help="what picks weights/best_ti.ckpt among the evaluated steps: validation_loss (lowest) or "
                        "concept (the --measure_concept score, highest); default: concept with "
                        "--measure_concept, else validation_loss")
    g.add_argument("--measure_concept", default=None,
                   help="toy model only: score a toy-world concept (toy_star, toy_dotted) with the concept meter "
                        "before training and at every inference step")
    g = p.add_argument_group("device")
    add_device_args(g)
    add_compile_cache_arg(g)
    g.add_argument("--is_parallel", type=str2bool, default=False,
                   help="data-parallel training over the processes started by mpirun -n N or msrun "
                        "--worker_num N (see README): data sharded by rank, gradients averaged, rank 0 writes")
    return p


def concepts_from_file(path):
    """The concepts of a --concepts YAML file."""
    from omegaconf import OmegaConf
    from gm.textual_inversion.settings import Concept

    if not os.path.isfile(path):
        raise UsageError(f"--concepts {path}: no such file")
    try:
        content = OmegaConf.to_container(OmegaConf.load(path))
    except Exception as e:  # yaml and omegaconf raise many types for a bad file
        raise UsageError(f"--concepts {path}: not a readable YAML file ({type(e).__name__})") from None
    entries = content.get("concepts") if isinstance(content, dict) else None
    if not isinstance(entries, list) or not entries:
        found = ("an empty file" if not content else f"a {type(content).__name__}" if not isinstance(content, dict)
                 else f"keys {sorted(map(str, content))}" if "concepts" not in content
                 else f"concepts: {entries!r}"[:80])
        raise UsageError(f"--concepts {path}: expected a mapping with a non-empty list under 'concepts:' "
                         f"(found {found}); see the README's example")
    fields = set(Concept.__dataclass_fields__) - {"source"}
    concepts = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise UsageError(f"--concepts {path}: concept {i + 1}: {entry!r}: expected a mapping such as "
                             "{placeholder_token: <cat-toy>, data_path: cat_toy}")
        unknown = set(entry) - fields
        missing = {"placeholder_token", "data_path"} - set(entry)
        if unknown or missing:
            raise UsageError(f"--concepts {path}: concept {i + 1}: "
                             + (f"unknown keys {sorted(unknown)}" if unknown else f"missing {sorted(missing)}"))
        for key in ("data_path", "initializer_file", "initializer_file_l", "template_file"):
            if entry.get(key) is not None and not isinstance(entry[key], str):
                raise UsageError(f"--concepts {path}: concept {i + 1}: {key} {entry[key]!r}: expected a path")
            if entry.get(key):
                entry[key] = os.path.join(os.path.dirname(os.path.abspath(path)), entry[key])
        concepts.append(Concept(**entry, source=f"--concepts {path}: concept {i + 1}"))
    return concepts


def settings(args):
    """Flags merged over the training config."""
    from gm.config import load_config
    from gm.textual_inversion.settings import OPTIONS, Concept, Settings

    config = load_config(args.config)
    if args.concepts:
        concepts = concepts_from_file(args.concepts)
    elif args.data_path:
        concepts = [Concept(args.placeholder_token, args.data_path, args.num_vectors, args.learnable_property,
                            args.initializer_token, args.initializer_file, args.template_file,
                            initializer_file_l=args.initializer_file_l)]
    else:
        concepts = []
    values, from_config = {}, set()
    for key, (flag, config_key, _) in OPTIONS.items():
        value = getattr(args, flag[2:]) if flag else None
        if value is None and config_key:
            section, name = config_key.split(".")
            value = (config.get(section) or {}).get(name)
            if value is not None:
                from_config.add(key)
        if value is not None:
            values[key] = value
    return Settings(
        config=config, config_path=args.config, weight=args.weight, save_path=args.save_path, concepts=concepts,
        concepts_path=args.concepts,
        infer_during_train=args.infer_during_train, infer_prompt=args.infer_prompt, resume=args.resume,
        overwrite=args.overwrite,
        amp_level=args.ms_amp_level, amp_dtype=args.amp_dtype, from_config=from_config, **values)


def apply_demo(args, given):
    """--demo: the built-in defaults for every flag the user did not give."""
    for key, value in DEMO.items():
        if key not in given:
            setattr(args, key, os.path.join(ROOT, value) if key in ("config", "weight", "data_path") else value)


def given_flags(argv):
    """Names of the flags present on the command line."""
    explicit = parser()
    explicit.set_defaults(**{a.dest: None for a in explicit._actions})
    return {k for k, v in vars(explicit.parse_args(argv)).items() if v is not None}


def main(argv=None):
    args = parser().parse_args(argv)
    from gm.runtime import init_mindspore
    from gm.parallel import init_parallel

    init_mindspore(args.device_target, args.ms_mode)
    parallel = init_parallel(args.is_parallel)
    if args.demo:
        apply_demo(args, given_flags(sys.argv[1:] if argv is None else argv))
    from gm.compile_cache import resolve, training_parts, use_compile_cache
    from gm.textual_inversion.trainer import Trainer

    trainer = Trainer(settings(args), parallel=parallel)
    # with aspect buckets the order of the graphs' shapes depends on the images: no cache (it matches by order)
    off = args.is_parallel or trainer.s.aspect_buckets
    cache = use_compile_cache(None if off else resolve(args.compile_cache), training_parts(trainer.s))
    try:
        step = trainer.run()
    finally:
        if cache:
            cache.close()
    for out in trainer.outputs:
        print(f"learned vectors: {out.ti_path(step)}")
    if trainer.best:
        best_step, value = trainer.best
        print(f"best step by {trainer.criterion}: {best_step} ({value:.6g}): "
              + ", ".join(out.best_path for out in trainer.outputs))
    if trainer.scores:
        first, last = min(trainer.scores), max(trainer.scores)
        for name, before in trainer.scores[first].items():
            after = trainer.scores[last][name]
            shares = ", ".join(f"{key} {100 * before[key]:.0f} -> {100 * after[key]:.0f} %" for key in before
                               if "+" not in key)
            print(f"{args.measure_concept} {name} (share of samples, step {first} -> {last}): {shares}")
    if args.demo:
        print(f"Samples per inference step: {args.save_path}/samples/progression.png. With the real SDXL weights: convert "
              "them with tools/convert_weight.py (see README), then run with --data_path YOUR_FOLDER.")


if __name__ == "__main__":
    run(main)
