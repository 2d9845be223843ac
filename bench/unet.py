"""UNet forward, and forward + backward to the text embeddings: ours against diffusers'.

    python bench/unet.py                      # SDXL-base shapes, 256x256 pixels (32x32 latents)
    python bench/unet.py --config configs/inference/sd_xl_tiny.yaml --size 64

Each side runs in its own process (the two SDXL UNets do not fit in memory together), one after
the other in this one run, with the same shapes and thread count; the ratio ours/diffusers and
each side's peak resident memory are printed. Weights are random: speed does not depend on them.
"""
import argparse
import json
import os
import sys
import time

from side_by_side import machine, peak_rss_gb, run_sides

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def inputs(params, size, batch, seed=0):
    import numpy as np
    rng = np.random.default_rng(seed)
    h = size // 8
    return (rng.standard_normal((batch, params["in_channels"], h, h)).astype(np.float32),
            np.full((batch,), 500.0, np.float32),
            rng.standard_normal((batch, 77, params["context_dim"])).astype(np.float32),
            rng.standard_normal((batch, params["adm_in_channels"])).astype(np.float32))


def time_calls(fn, repeat):
    """First call (includes compilation) and the best of ``repeat`` further calls, in seconds."""
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return first, min(times)


def run_ours(config, size, batch, repeat, mode):
    import mindspore as ms
    from mindspore import Tensor, nn
    from mindspore.nn.utils import no_init_parameters
    from gm.config import instantiate_from_config, load_config

    ms.set_context(mode=mode)
    ms.set_device("CPU")
    net_config = load_config(config).model.params.network_config
    with no_init_parameters():
        unet = instantiate_from_config(net_config)
    unet.init_parameters_data()
    for p in unet.get_parameters():
        p.requires_grad = False
    unet.set_train(False)
    x, t, ctx, y = (Tensor(a) for a in inputs(dict(net_config.params), size, batch))

    class Loss(nn.Cell):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def construct(self, x, t, ctx, y):
            return self.net(x, t, ctx, y).mean()

    grad = ms.grad(Loss(unet), grad_position=2)
    forward = time_calls(lambda: unet(x, t, ctx, y).asnumpy(), repeat)
    backward = time_calls(lambda: grad(x, t, ctx, y).asnumpy(), repeat)
    return forward, backward


def run_diffusers(config, size, batch, repeat, mode):
    import torch
    from diffusers import UNet2DConditionModel
    from omegaconf import OmegaConf

    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from reference import diffusers_unet_config
    from gm.checkpoints.layout import official_layout

    torch.set_num_threads(os.cpu_count())
    cfg = OmegaConf.to_container(OmegaConf.load(config))
    shapes = {k: torch.empty(s, device="meta") for k, (s, _) in official_layout(config).items()}
    unet = UNet2DConditionModel(**diffusers_unet_config(cfg, shapes)).eval().requires_grad_(False)
    params = cfg["model"]["params"]["network_config"]["params"]
    x, t, ctx, y = (torch.from_numpy(a) for a in inputs(params, size, batch))
    pooled = y.shape[1] - 6 * 256
    text_embeds, time_ids = y[:, :pooled], torch.tensor([[size, size, 0, 0, size, size]] * batch, dtype=torch.float32)
    cond = {"text_embeds": text_embeds, "time_ids": time_ids}

    def forward():
        with torch.no_grad():
            unet(x, t, ctx, added_cond_kwargs=cond).sample.numpy()

    def backward():
        c = ctx.clone().requires_grad_(True)
        unet(x, t, c, added_cond_kwargs=cond).sample.mean().backward()
        c.grad.numpy()

    return time_calls(forward, repeat), time_calls(backward, repeat)


def child(args):
    run = run_ours if args.which == "ours" else run_diffusers
    (f_first, f_best), (b_first, b_best) = run(args.config, args.size, args.batch, args.repeat, args.ms_mode)
    print(json.dumps({"forward": f_best, "forward_first": f_first, "backward": b_best,
                      "backward_first": b_first, "peak_rss_gb": peak_rss_gb()}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=os.path.join(ROOT, "configs/inference/sd_xl_base.yaml"))
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (latents are size/8)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=2, help="timed calls after the first")
    parser.add_argument("--ms_mode", type=int, default=0, help="0 graph, 1 PyNative")
    parser.add_argument("--which", choices=["both", "ours", "diffusers"], default="both")
    args = parser.parse_args()
    if args.which != "both":
        return child(args)
    results = run_sides(__file__, args)
    ours, ref = results["ours"], results["diffusers"]
    print(machine())
    print(f"UNet at {os.path.basename(args.config)}, {args.size}x{args.size} px, batch {args.batch}, "
          f"{os.cpu_count()} threads, MindSpore mode {args.ms_mode}")
    print(f"{'':28}{'ours':>10}{'diffusers':>11}{'ours/diffusers':>16}")
    for key, label in (("forward", "forward s"), ("backward", "fwd+bwd to context s"),
                       ("forward_first", "first forward s (compile)"), ("peak_rss_gb", "peak RSS GB")):
        print(f"{label:28}{ours[key]:10.3f}{ref[key]:11.3f}{ours[key] / ref[key]:16.2f}")


if __name__ == "__main__":
    main()
