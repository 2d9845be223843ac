"""How well the toy SDXL draws what it is told, read by the concept meter.

    python bench/toy_model.py [--weight checkpoints/sd_xl_toy.safetensors] [--grid samples.png]

Captions of combinations seen in pretraining, drawn from a seed stream the pretraining never used,
naming every attribute of one object ("a striped red star on a blue background"); one sample each
(30 Euler steps, guidance 5); the meter says whether the drawn shape, colour, pattern and background
match the caption. Then the held-out combinations, asked for by their words: a measure of how the
model composes what it never saw together (textual inversion later teaches them as new words).
"""
import argparse
import os

import numpy as np


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FRESH_STREAM = 1000  # seed stream of the evaluation captions; pretraining uses streams 1-4
ATTRIBUTES = ("shape", "colour", "pattern", "background")


def seen_scenes(count, size, seed=FRESH_STREAM):
    """Single-object scenes of combinations seen in pretraining, from a fresh seed stream."""
    from gm.toyworld.world import random_scene

    scenes, index = [], 0
    while len(scenes) < count:
        scene = random_scene(np.random.default_rng([seed, index]), size, two_objects_p=0.0)
        scenes.append(scene)
        index += 1
    return scenes


def scores(readings, scenes):
    """Share of pictures whose reading matches each attribute of its scene's (first) object."""
    hits = {a: [] for a in ATTRIBUTES}
    for reading, scene in zip(readings, scenes):
        thing = scene.things[0]
        for a in ATTRIBUTES:
            value = scene.background if a == "background" else getattr(thing, a)
            hits[a].append(reading.shows(**{a: value}))
    return {a: float(np.mean(v)) for a, v in hits.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=os.path.join(ROOT, "configs/inference/sd_xl_toy.yaml"))
    parser.add_argument("--weight", default=os.path.join(ROOT, "checkpoints/sd_xl_toy.safetensors"))
    parser.add_argument("--count", type=int, default=64, help="captions of seen combinations")
    parser.add_argument("--held_out_samples", type=int, default=16, help="samples per held-out combination")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling noise")
    parser.add_argument("--grid", default=None, help="write the samples of the first 32 captions here (PNG)")
    args = parser.parse_args()

    import mindspore as ms
    from gm.build import build_model
    from gm.images import make_grid, save_png
    from gm.inference import SamplingPipeline
    from gm.modules.diffusionmodules.sampling import make_sampler
    from gm.toyworld import meter
    from gm.toyworld.world import HELD_OUT, full_caption

    ms.set_context(mode=0)
    ms.set_device("CPU")
    sampler = SamplingPipeline(build_model(args.config, args.weight))
    method = make_sampler("euler", args.steps, args.guidance)
    size = 64
    scenes = seen_scenes(args.count, size)
    captions = [full_caption(s) for s in scenes]
    images = sampler.sample(captions, size, size, seed=args.seed, sampler=method)
    readings = [meter.read(i) for i in images]
    result = scores(readings, scenes)
    print(f"{args.count} captions of seen combinations, {args.steps} Euler steps, guidance {args.guidance}:")
    print("  " + ", ".join(f"{a} {100 * v:.0f} %" for a, v in result.items()))
    if args.grid:
        save_png(make_grid(images[:32], 8), args.grid)
        print(f"  samples of the first 32 captions: {args.grid}")
        for c in captions[:32]:
            print(f"    {c}")
    print(f"held-out combinations asked for by their words ({args.held_out_samples} samples each):")
    for rule in HELD_OUT:
        shape, colour, pattern = rule
        words = " ".join(w for w in (pattern, colour, shape) if w)
        prompt = f"a {words}"
        pictures = sampler.sample([prompt] * args.held_out_samples, size, size, seed=args.seed + 1, sampler=method)
        shown = np.mean([meter.read(p).shows(shape=shape, colour=colour, pattern=pattern) for p in pictures])
        print(f"  {prompt!r}: shown {100 * shown:.0f} %")


if __name__ == "__main__":
    main()
