"""Teach SDXL a new word: textual inversion in both text encoders, every model weight frozen.

    python train_textual_inversion.py --demo True          # tiny model, random weights, built-in data
    python train_textual_inversion.py --data_path datasets/cat_toy --save_path runs/cat_toy \\
        --num_vectors 10 --total_step 3000 --placeholder_token "<cat-toy>" --learnable_property object

Flags left unset take their value from the training config (configs/training/*.yaml).
"""
import argparse
import os
import sys

ROOT = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, ROOT)

from gm.cli import UsageError, add_device_args, run, str2bool  # noqa: E402

DEMO = {
    "config": "configs/training/sd_xl_tiny_finetune_textual_inversion.yaml",
    "weight": "checkpoints/sd_xl_tiny_random.safetensors",
    "data_path": "datasets/demo_toy",
    "save_path": "runs/demo",
    "placeholder_token": "<demo-toy>",
    "num_vectors": 2,
    "infer_during_train": True,
}


def parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("model")
    g.add_argument("--config", default="configs/training/sd_xl_base_finetune_textual_inversion.yaml",
                   help="training config: the model (via base:) plus optimiser/data/inference defaults")
    g.add_argument("--weight", default="checkpoints/sd_xl_base_1.0_ms.ckpt",
                   help="SDXL weights: a .ckpt from tools/convert_weight.py or the official .safetensors")
    g.add_argument("--demo", type=str2bool, default=False,
                   help="run the built-in demo: tiny SDXL-shaped model with random weights (written on first "
                        "use), datasets/demo_toy, output in runs/demo; other flags still override")
    g = p.add_argument_group("concept")
    g.add_argument("--data_path", default=None, help="folder of 3-20 images (jpg/png/webp), optional .txt captions")
    g.add_argument("--placeholder_token", default="<cat-toy>", help="the new word, written in prompts")
    g.add_argument("--num_vectors", type=int, default=1,
                   help="vectors per encoder for the word (the token expands to this many tokens)")
    g.add_argument("--initializer_token", default=None,
                   help="start from this existing single-token word's embedding (default: random)")
    g.add_argument("--learnable_property", default="object", help="object, style or face: picks the prompt templates")
    g.add_argument("--template_file", default=None, help="text file of prompt templates, one per line with {}")
    g.add_argument("--initializer_file", default=None,
                   help="start from an existing embedding file of this word (any supported format)")
    g.add_argument("--concepts", default=None,
                   help="YAML file listing several concepts to learn in one run (each: placeholder_token, "
                        "data_path, learnable_property, num_vectors, initializer_token, initializer_file, "
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
    g.add_argument("--flip_p", type=float, default=None, help="probability of a horizontal flip (config)")
    g.add_argument("--repeats", type=int, default=None, help="times each image appears per epoch (config)")
    g.add_argument("--seed", type=int, default=42, help="seed of initialisation, data order and noise")
    g.add_argument("--resume", type=str2bool, default=False,
                   help="continue from --save_path/train_state.ckpt (vectors, optimiser, step, data order)")
    g = p.add_argument_group("outputs")
    g.add_argument("--save_path", default="runs/textual_inversion", help="output folder")
    g.add_argument("--save_ckpt_interval", type=int, default=None, help="save the _ti.ckpt every N steps (config)")
    g.add_argument("--max_num_ckpt", type=int, default=None, help="keep at most N _ti.ckpt files (config)")
    g.add_argument("--infer_during_train", type=str2bool, default=False,
                   help="sample images for a fixed prompt and seed every --infer_interval steps")
    g.add_argument("--infer_interval", type=int, default=None, help="steps between samples (config: infer)")
    g.add_argument("--infer_prompt", default=None, help="prompt for those samples, with {} for the word")
    g = p.add_argument_group("device")
    add_device_args(g)
    g.add_argument("--is_parallel", type=str2bool, default=False,
                   help="data-parallel training over the processes started by mpirun -n N or msrun "
                        "--worker_num N (see README): data sharded by rank, gradients averaged, rank 0 writes")
    return p


def concepts_from_file(path):
    """The concepts of a --concepts YAML file."""
    from omegaconf import OmegaConf
    from gm.textual_inversion.trainer import Concept

    if not os.path.isfile(path):
        raise UsageError(f"--concepts {path}: no such file")
    try:
        entries = OmegaConf.to_container(OmegaConf.load(path)).get("concepts")
    except Exception as e:  # yaml and omegaconf raise many types for a bad file
        raise UsageError(f"--concepts {path}: not a readable YAML file ({type(e).__name__})") from None
    if not isinstance(entries, list) or not entries:
        raise UsageError(f"--concepts {path}: expected a non-empty list under 'concepts:'")
    fields = set(Concept.__dataclass_fields__)
    concepts = []
    for i, entry in enumerate(entries):
        unknown = set(entry) - fields if isinstance(entry, dict) else {"(not a mapping)"}
        missing = {"placeholder_token", "data_path"} - set(entry or {})
        if unknown or missing:
            raise UsageError(f"--concepts {path}: concept {i + 1}: "
                             + (f"unknown keys {sorted(unknown)}" if unknown else f"missing {sorted(missing)}"))
        for key in ("data_path", "initializer_file", "template_file"):
            if entry.get(key):
                entry[key] = os.path.join(os.path.dirname(os.path.abspath(path)), entry[key])
        concepts.append(Concept(**entry))
    return concepts


def settings(args):
    """Flags merged over the training config."""
    from gm.build import load_config
    from gm.textual_inversion.trainer import Concept, Settings

    config = load_config(args.config)
    optim, train, infer = (config.get(k) or {} for k in ("optim", "train", "infer"))

    def pick(flag, section, key, fallback):
        return flag if flag is not None else section.get(key, fallback)

    if args.concepts:
        concepts = concepts_from_file(args.concepts)
    elif args.data_path:
        concepts = [Concept(args.placeholder_token, args.data_path, args.num_vectors, args.learnable_property,
                            args.initializer_token, args.initializer_file, args.template_file)]
    else:
        concepts = []
    return Settings(
        config=config, config_path=args.config, weight=args.weight, save_path=args.save_path, concepts=concepts,
        batch_size=pick(args.train_batch_size, train, "batch_size", 1),
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        total_step=pick(args.total_step, train, "total_step", 2000),
        learning_rate=pick(args.learning_rate, optim, "learning_rate", 5e-3),
        lr_scheduler=pick(args.lr_scheduler, optim, "lr_scheduler", "constant"),
        lr_warmup_steps=pick(args.lr_warmup_steps, optim, "lr_warmup_steps", 0),
        weight_decay=optim.get("weight_decay", 0.0), betas=tuple(optim.get("betas", (0.9, 0.999))),
        eps=optim.get("eps", 1e-8), clip_grad=args.clip_grad, max_grad_norm=args.max_grad_norm,
        resolution=pick(args.resolution, train, "resolution", 1024),
        center_crop=pick(args.center_crop, train, "center_crop", True),
        flip_p=pick(args.flip_p, train, "flip_p", 0.5), repeats=pick(args.repeats, train, "repeats", 100),
        save_ckpt_interval=pick(args.save_ckpt_interval, train, "save_ckpt_interval", 500),
        max_num_ckpt=pick(args.max_num_ckpt, train, "max_num_ckpt", None),
        infer_during_train=args.infer_during_train,
        infer_interval=pick(args.infer_interval, infer, "interval", 500), infer_prompt=args.infer_prompt,
        infer_images=infer.get("num_images", 2), infer_steps=infer.get("sample_steps", 40),
        guidance_scale=infer.get("guidance_scale", 5.0), seed=args.seed, resume=args.resume,
        amp_level=args.ms_amp_level, amp_dtype=args.amp_dtype)


def apply_demo(args, given):
    """--demo: the built-in defaults for every flag the user did not give; random tiny weights."""
    from gm.random_weights import write_random_checkpoint

    for key, value in DEMO.items():
        if key not in given:
            setattr(args, key, os.path.join(ROOT, value) if key in ("config", "weight", "data_path") else value)
    if not os.path.isfile(args.weight):
        print(f"writing random weights for the demo to {args.weight}", flush=True)
        write_random_checkpoint(args.config, args.weight)


def given_flags(argv):
    """Names of the flags present on the command line."""
    explicit = parser()
    explicit.set_defaults(**{a.dest: None for a in explicit._actions})
    return {k for k, v in vars(explicit.parse_args(argv)).items() if v is not None}


def main():
    p = parser()
    args = p.parse_args()
    import mindspore as ms

    ms.set_context(mode=args.ms_mode)
    if args.device_target:
        ms.set_device(args.device_target)
    from gm.parallel import init_parallel

    parallel = init_parallel(args.is_parallel)
    if args.demo:
        apply_demo(args, given_flags(sys.argv[1:]))
    from gm.textual_inversion.trainer import Trainer

    trainer = Trainer(settings(args), parallel=parallel)
    step = trainer.run()
    for out in trainer.outputs:
        print(f"learned vectors: {out.ti_path(step)}")
    if args.demo:
        print("This was the demo on a tiny random model. With the real SDXL weights: convert them with "
              "tools/convert_weight.py (see README), then run with --data_path YOUR_FOLDER.")


if __name__ == "__main__":
    run(main)
