"""How fast and how well a word is learned: concept score against optimiser steps, ours against diffusers'.

    python bench/ti_quality.py [--concept toy_star] [--steps 0,50,100,200,400] [--samples 32]
    python bench/ti_quality.py --sides ours --ours_args "--preserve_norm True"   # measure a trainer option

Both sides learn the same toy-world concept (``gm/toyworld/concepts.py``) from the same pictures on the
same toy SDXL checkpoint (``checkpoints/sd_xl_toy.safetensors``):

- ours: ``train_textual_inversion.py`` exactly as users run it, with the toy training config's defaults
  (both encoders);
- diffusers: the recipe of diffusers' ``textual_inversion_sdxl.py`` (v0.39) with that script's own
  defaults (``bench/diffusers_ti_recipe.py``: AdamW 1e-4 constant, batch 16, its templates, flips, both
  encoders' token tables as that version trains them), run by PyTorch on diffusers' single-file
  conversion of the same checkpoint.

At each step count the word's test prompts (reconstruction ``a photo of a <word>``, editability
``a <word> on a green background``; for a style ``a square/circle in <word> style``) are sampled
``--samples`` times by each side's own pipeline (Euler, 20 steps, guidance 5, the same seeds) and read by
the same concept meter. Step 0 is the word's initial vectors (the initializer word). Printed: the
scores per step, the wall-clock training seconds, and for each side the first step (and its seconds)
at which the reconstruction score reaches ``--target``, with the ratios ours/diffusers.
"""
import argparse
import csv
import glob
import itertools
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time

import numpy as np

from side_by_side import machine

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = {"toy_star": "datasets/demo_toy", "toy_dotted": "datasets/toy_dotted"}
WORD = {"toy_star": "<toy-star>", "toy_dotted": "<toy-dotted>"}


def train_ours(args, concept, work):
    """Run our trainer; returns {step: _ti.ckpt path} and {step: cumulative training seconds}."""
    steps = [s for s in args.steps if s > 0]
    interval = int(np.gcd.reduce(steps))
    command = [sys.executable, os.path.join(ROOT, "train_textual_inversion.py"), "--config", args.train_config,
               "--weight", args.weight, "--data_path", os.path.join(ROOT, DATA[concept.name]),
               "--placeholder_token", WORD[concept.name], "--initializer_token", concept.initializer_token,
               "--learnable_property", concept.learnable_property, "--total_step", str(max(steps)),
               "--save_ckpt_interval", str(interval), "--max_num_ckpt", str(len(steps) * max(steps)),
               "--save_path", work, "--seed", str(args.seed), "--device_target", "CPU", *shlex.split(args.ours_args)]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    found = (re.search(r"_(\d+)_ti\.ckpt$", p) for p in glob.glob(os.path.join(work, "weights", "*_ti.ckpt")))
    files = {int(m.group(1)): m.string for m in found if m}  # best_ti.ckpt has no step
    with open(os.path.join(work, "loss.csv")) as f:
        seconds = np.cumsum([float(row["step_seconds"]) for row in csv.DictReader(f)])
    return {s: files[s] for s in steps}, {0: 0.0, **{s: float(seconds[s - 1]) for s in steps}}


def score_ours(args, concept, files):
    """{step: {measure: score}} of our pipeline with the word's vectors at each step."""
    import mindspore as ms
    from gm.build import build_model
    from gm.inference import SamplingPipeline
    from gm.toyworld.concepts import measure

    ms.set_context(mode=0)
    ms.set_device("CPU")
    pipeline = SamplingPipeline(build_model(args.config, args.weight))
    results = {0: measure(pipeline, concept, concept.initializer_token, args.samples, seed=args.seed)[0]}
    for step, path in sorted(files.items()):
        word = pipeline.load_concept(path)
        results[step] = measure(pipeline, concept, word, args.samples, seed=args.seed)[0]
    return results


def run_diffusers(args, concept):
    """{step: {measure: score}} and {step: seconds} of diffusers' recipe on the same checkpoint."""
    from diffusers_ti_recipe import train_and_sample
    from gm.toyworld.concepts import score

    word = WORD[concept.name]
    tests = concept.test_prompts(word)
    found = train_and_sample(args.config, args.weight, os.path.join(ROOT, DATA[concept.name]), word,
                             concept.initializer_token, concept.learnable_property, args.steps,
                             [prompt for prompt, _ in tests.values()], args.samples, seed=args.seed,
                             threads=args.torch_threads)
    results = {}
    for step, pictures in found["pictures"].items():
        results[step] = {name: score(concept, wanted, pictures[prompt]) for name, (prompt, wanted) in tests.items()}
    return results, found["seconds"], found["settings"]


def first_reaching(results, seconds, target, criterion):
    """(step, seconds) of the first step whose reconstruction score reaches ``target``; (None, None) if none."""
    for step in sorted(results):
        if results[step]["reconstruction"][criterion] >= target:
            return step, seconds[step]
    return None, None


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--concept", default="toy_star", choices=sorted(DATA))
    p.add_argument("--steps", default="0,50,100,200,400", help="optimiser steps at which the word is scored")
    p.add_argument("--samples", type=int, default=32, help="samples per test prompt and step")
    p.add_argument("--target", type=float, default=0.8, help="reconstruction score to reach")
    p.add_argument("--criterion", default="concept",
                   help="what a sample must show: concept (every attribute) or some, e.g. colour+pattern "
                        "(the toy model cannot draw shapes yet)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ours_args", default="",
                   help="more flags for our trainer, e.g. \"--preserve_norm True --snr_gamma 5\" (to measure them)")
    p.add_argument("--config", default=os.path.join(ROOT, "configs/inference/sd_xl_toy.yaml"))
    p.add_argument("--train_config", default=os.path.join(ROOT, "configs/training/sd_xl_toy_finetune_textual_inversion.yaml"))
    p.add_argument("--weight", default=os.path.join(ROOT, "checkpoints/sd_xl_toy.safetensors"))
    p.add_argument("--sides", default="ours,diffusers")
    p.add_argument("--torch_threads", type=int, default=2,
                   help="diffusers side; use 1 if another process is busy (2 OpenMP threads then stall)")
    args = p.parse_args()
    args.steps = sorted({0, *(int(s) for s in args.steps.split(","))})
    sides = args.sides.split(",")

    from gm.toyworld.concepts import CONCEPTS

    concept = CONCEPTS[args.concept]
    parts = sorted(concept.attributes)
    known = ["concept"] + ["+".join(s) for k in range(1, len(parts)) for s in itertools.combinations(parts, k)]
    if args.criterion not in known:
        p.error(f"--criterion {args.criterion!r}: expected one of {', '.join(known)}")
    print(f"{machine()}; concept {concept.name} "
          f"({concept.learnable_property}: {concept.attributes}); {args.samples} samples per prompt", flush=True)
    table = {}
    if "ours" in sides:
        with tempfile.TemporaryDirectory() as work:
            clock = time.perf_counter()
            files, seconds = train_ours(args, concept, os.path.join(work, "run"))
            print(f"ours: trained in {time.perf_counter() - clock:.0f} s (process, compile included)", flush=True)
            table["ours"] = (score_ours(args, concept, files), seconds)
    if "diffusers" in sides:
        results, seconds, settings = run_diffusers(args, concept)
        print(f"diffusers recipe settings: {settings}", flush=True)
        table["diffusers"] = (results, seconds)

    names = list(next(iter(table.values()))[0][0])
    c = args.criterion
    print(f"\nshare of samples showing {c} (the whole concept and the rest of the prompt in brackets); "
          "training seconds (compile included)")
    print("step  " + "  ".join(f"{side}: " + " | ".join(names) + " | s" for side in table))
    for step in args.steps:
        cells = []
        for side, (results, seconds) in table.items():
            r = results[step]
            cells.append(" | ".join(f"{100 * r[n][c]:3.0f} % ({100 * r[n]['concept']:3.0f}, {100 * r[n]['prompt']:3.0f})"
                                    for n in names) + f" | {seconds[step]:6.1f}")
        print(f"{step:4d}  " + "  ".join(cells))
    reached = {side: first_reaching(results, seconds, args.target, c) for side, (results, seconds) in table.items()}
    print(f"\nfirst step with reconstruction ({c}) >= {100 * args.target:.0f} %:")
    for side, (step, secs) in reached.items():
        print(f"  {side}: " + (f"step {step}, {secs:.1f} s of training" if step is not None else
                                f"not reached by step {args.steps[-1]}"))
    if len(reached) == 2 and all(step for step, _ in reached.values()):
        (s1, t1), (s2, t2) = reached["ours"], reached["diffusers"]
        print(f"  ratio ours/diffusers: steps {s1 / s2:.2f}, seconds {t1 / t2:.2f}")


if __name__ == "__main__":
    main()
