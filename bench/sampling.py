"""Seconds per image at a fixed number of steps: our SamplingPipeline against diffusers' StableDiffusionXLPipeline.

    python bench/sampling.py                                               # SDXL-base shapes, 256x256
    python bench/sampling.py --config configs/inference/sd_xl_tiny.yaml --size 64

Both sides load the same random weights: one single file in the official layout (written once, in
--weights, fp16 like the official file for the base config), which diffusers converts with its own
single-file helpers. Both run Euler with "leading" timesteps (diffusers' SDXL default), guidance 5
and an empty negative prompt (zero unconditional embedding on both sides): text encoders, every UNet
step with classifier-free guidance, VAE decode. Each side runs in its own process, one after the other.
The first run includes graph compilation (ours) or warm-up; the steady figure is the best later run.
"""
import argparse
import json
import os
import sys
import tempfile
import time

from side_by_side import machine, peak_rss_gb, run_sides

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
from reference import diffusers_pipeline  # noqa: E402  (tests/reference.py)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPT = "a photo of an astronaut riding a horse on the moon"


def time_runs(fn, repeat):
    """Seconds of the first call and the best of ``repeat`` further calls."""
    times = []
    for _ in range(repeat + 1):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times[0], min(times[1:])


def run_ours(args):
    import mindspore as ms

    from gm.build import build_model
    from gm.inference import SamplingPipeline
    from gm.modules.diffusionmodules.sampling import make_sampler

    ms.set_context(mode=args.ms_mode)
    ms.set_device("CPU")
    sampler = SamplingPipeline(build_model(args.config, args.weights))
    method = make_sampler("euler", args.steps, 5.0, spacing="leading")
    return time_runs(lambda: sampler.sample([PROMPT] * args.batch, args.size, args.size, seed=0, sampler=method),
                     args.repeat)


def run_diffusers(args):
    import torch

    torch.set_num_threads(os.cpu_count())
    pipe = diffusers_pipeline(args.config, args.weights)
    pipe.set_progress_bar_config(disable=True)

    def once():
        with torch.no_grad():
            pipe([PROMPT] * args.batch, height=args.size, width=args.size, num_inference_steps=args.steps,
                 guidance_scale=5.0, generator=torch.Generator().manual_seed(0), output_type="np")

    return time_runs(once, args.repeat)


def child(args):
    run = run_ours if args.which == "ours" else run_diffusers
    first, best = run(args)
    print(json.dumps({"first": first / args.batch, "steady": best / args.batch, "peak_rss_gb": peak_rss_gb()}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=os.path.join(ROOT, "configs/inference/sd_xl_base.yaml"))
    parser.add_argument("--weights", default=None,
                        help="official-layout single file (default: random weights written once to the temp folder)")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--steps", type=int, default=10, help="sampling steps (fixed on both sides)")
    parser.add_argument("--batch", type=int, default=1, help="images per run")
    parser.add_argument("--repeat", type=int, default=2, help="timed runs after the first")
    parser.add_argument("--ms_mode", type=int, default=0, help="0 graph, 1 PyNative (ours)")
    parser.add_argument("--which", choices=["both", "ours", "diffusers"], default="both")
    args = parser.parse_args()
    if args.which != "both":
        return child(args)
    if args.weights is None:
        from gm.checkpoints.random_weights import write_random_checkpoint

        name = os.path.splitext(os.path.basename(args.config))[0]
        dtype = "fp32" if "tiny" in name else "fp16"
        args.weights = os.path.join(tempfile.gettempdir(), f"gm_bench_{name}_random_{dtype}.safetensors")
        if not os.path.isfile(args.weights):
            print(f"writing random weights to {args.weights}", flush=True)
            write_random_checkpoint(args.config, args.weights, seed=0, dtype=dtype)
    results = run_sides(__file__, args)
    ours, ref = results["ours"], results["diffusers"]
    print(machine())
    print(f"sampling at {os.path.basename(args.config)}, {args.size}x{args.size} px, {args.steps} Euler steps, "
          f"guidance 5, batch {args.batch}, {os.cpu_count()} threads, MindSpore mode {args.ms_mode}")
    print(f"{'':30}{'ours':>10}{'diffusers':>11}{'ours/diffusers':>16}")
    for key, label in (("steady", "seconds per image"), ("first", "first run, per image (compile)"),
                       ("peak_rss_gb", "peak RSS GB")):
        print(f"{label:30}{ours[key]:10.3f}{ref[key]:11.3f}{ours[key] / ref[key]:16.2f}")


if __name__ == "__main__":
    main()
