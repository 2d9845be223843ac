"""One textual-inversion training step: ours against diffusers' ``textual_inversion_sdxl.py`` recipe.

    python bench/ti_step.py                          # tiny config at 64 px, then SDXL-base shapes at 256 px
    python bench/ti_step.py --preset tiny            # only the tiny config
    python bench/ti_step.py --preset base --steps 3  # only SDXL base

For each preset, each side runs in its own process (two SDXL-sized models do not fit in memory
together), one after the other, with the same batch, resolution, thread count and random weights.

Ours: ``LossAndGrads`` + ``ClippedAdamW`` as the trainer runs them (latents cached, so no VAE; the
new rows of both encoders are the only parameters). Diffusers: the recipe's loop body in fp32
(VAE encode, DDPM ``add_noise``, encoder 1's whole embedding table trained and its old rows put back
after AdamW, encoder 2 frozen, eps MSE).

Printed per preset: median steady step time, first-step time and compile time (first minus
steady), peak resident memory, the ratio ours/diffusers, the FLOPs of each step (counted with
``torch.utils.flop_counter`` on the equivalent torch computation, on the meta device), and the
GFLOP/s our step reaches as a fraction of a 2048^3 fp32 matmul measured in the same run.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from side_by_side import machine, peak_rss_gb


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRESETS = {"tiny": ("configs/inference/sd_xl_tiny.yaml", 64), "base": ("configs/inference/sd_xl_base.yaml", 256)}
PROMPT = "a photo of a {}"
TOKEN = "<bench-token>"
BOS, EOS = 49406, 49407
PROMPT_IDS = (320, 1125, 539, 320)  # "a photo of a" in the CLIP vocabulary
DDPM = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)
MATMUL_N = 2048


def status_gb(field):
    """A memory line of /proc/self/status (VmRSS: now, VmHWM: peak since the last reset) in GB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024 ** 2
    return float("nan")


def reset_peak():
    """Restart VmHWM from the current resident size (Linux)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def timed_steps(step, steps, build_seconds):
    """Seconds of the first call of ``step`` and median of ``steps`` further calls; memory: resident
    after the build, peak during the steps, peak of the whole process (GB)."""
    rss_built = status_gb("VmRSS")
    reset_peak()
    start = time.perf_counter()
    step(0)
    first = time.perf_counter() - start
    times = []
    for i in range(1, steps + 1):
        start = time.perf_counter()
        step(i)
        times.append(time.perf_counter() - start)
    steady = statistics.median(times)
    return {"build": build_seconds, "first": first, "step": steady, "rss_built_gb": rss_built,
            "peak_steps_gb": status_gb("VmHWM"), "peak_rss_gb": peak_rss_gb()}


# -- the spec both sides build from ----------------------------------------------------------------
def make_spec(config_path, size, batch):
    """Shapes of every model of a config, as diffusers/transformers constructor arguments."""
    import torch
    from diffusers.loaders import single_file_utils as sfu
    from omegaconf import OmegaConf

    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from reference import diffusers_unet_config
    from gm.checkpoints.layout import official_layout

    cfg = OmegaConf.to_container(OmegaConf.load(config_path))
    shapes = {k: torch.empty(s, device="meta") for k, (s, _) in official_layout(config_path).items()}
    emb = [m["params"] for m in cfg["model"]["params"]["conditioner_config"]["params"]["emb_models"][:2]]
    clip_l = dict(vocab_size=emb[0]["vocab_size"], hidden_size=emb[0]["hidden_size"],
                  intermediate_size=emb[0]["intermediate_size"], num_hidden_layers=emb[0]["num_layers"],
                  num_attention_heads=emb[0]["num_heads"], max_position_embeddings=emb[0]["max_length"],
                  hidden_act=emb[0]["hidden_act"], layer_norm_eps=1e-5, bos_token_id=BOS, eos_token_id=EOS,
                  pad_token_id=EOS)
    clip_g = dict(vocab_size=emb[1]["vocab_size"], hidden_size=emb[1]["width"],
                  intermediate_size=int(emb[1]["width"] * emb[1]["mlp_ratio"]),
                  num_hidden_layers=emb[1]["layers"], num_attention_heads=emb[1]["heads"],
                  max_position_embeddings=emb[1]["max_length"], hidden_act="gelu",
                  projection_dim=emb[1]["embed_dim"], layer_norm_eps=1e-5, bos_token_id=BOS,
                  eos_token_id=EOS, pad_token_id=0)
    return {"config": config_path, "size": size, "batch": batch, "max_length": emb[0]["max_length"],
            "unet": diffusers_unet_config(cfg, shapes), "vae": sfu.create_vae_diffusers_config_from_ldm(cfg, shapes),
            "clip_l": clip_l, "clip_g": clip_g}


def token_ids(spec, pad, new_token=None):
    """[batch, L] ids of the prompt (with the new token's id appended if given), BOS/EOS/padding."""
    ids = [BOS, *PROMPT_IDS] + ([new_token] if new_token is not None else [320]) + [EOS]
    ids += [pad] * (spec["max_length"] - len(ids))
    return [ids] * spec["batch"]


# -- diffusers' recipe ---------------------------------------------------------------------------
def build_torch_models(spec):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    return (UNet2DConditionModel(**spec["unet"]), AutoencoderKL(**spec["vae"]),
            CLIPTextModel(CLIPTextConfig(**spec["clip_l"])),
            CLIPTextModelWithProjection(CLIPTextConfig(**spec["clip_g"])))


class RecipeStep:
    """The loop body of diffusers' textual_inversion_sdxl.py (fp32, one placeholder vector).

    ``ours_equivalent`` instead computes what our step computes (for the FLOP count): no VAE,
    both encoders' embeddings trainable, no optimiser.
    """

    def __init__(self, spec, models, ours_equivalent=False):
        import torch
        from diffusers import DDPMScheduler

        self.torch = torch
        self.unet, self.vae, self.te1, self.te2 = models
        self.ours_equivalent = ours_equivalent
        device = next(self.unet.parameters()).device
        vocab = spec["clip_l"]["vocab_size"]
        self.te1.resize_token_embeddings(vocab + 1, mean_resizing=False)
        with torch.no_grad():
            table = self.te1.get_input_embeddings().weight
            table[vocab] = table[PROMPT_IDS[-1]].clone()
        self.vae.requires_grad_(False)
        self.unet.requires_grad_(False)
        self.te2.requires_grad_(False)
        self.te1.text_model.encoder.requires_grad_(False)
        self.te1.text_model.final_layer_norm.requires_grad_(False)
        self.te1.text_model.embeddings.position_embedding.requires_grad_(False)
        if ours_equivalent:
            self.te2.get_input_embeddings().weight.requires_grad_(True)
        self.te1.train()
        self.optimizer = torch.optim.AdamW(self.te1.get_input_embeddings().parameters(), lr=1e-4,
                                           betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
        self.scheduler = DDPMScheduler(**DDPM)
        self.orig_embeds = self.te1.get_input_embeddings().weight.data.clone()
        self.keep = torch.ones((vocab + 1,), dtype=torch.bool, device=device)
        self.keep[vocab] = False
        b, size, ch = spec["batch"], spec["size"], spec["unet"]["in_channels"]
        gen = torch.Generator().manual_seed(0)
        self.pixels = (torch.rand(b, 3, size, size, generator=gen) * 2 - 1).to(device)
        self.latent_shape = (b, ch, size // 8, size // 8)
        self.ids1 = torch.tensor(token_ids(spec, EOS, vocab), device=device)
        self.ids2 = torch.tensor(token_ids(spec, 0), device=device)
        self.time_ids = torch.tensor([[size, size, 0, 0, size, size]] * b, dtype=torch.float32, device=device)

    def forward_backward(self):
        """Loss and its gradients (the VAE encode included, unless ``ours_equivalent``)."""
        torch = self.torch
        if self.ours_equivalent:
            latents = torch.zeros(self.latent_shape, device=self.pixels.device)
        else:
            latents = self.vae.encode(self.pixels).latent_dist.sample().detach() * self.vae.config.scaling_factor
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, self.scheduler.config.num_train_timesteps, (latents.shape[0],),
                                  device=latents.device).long()
        noisy = self.scheduler.add_noise(latents, noise, timesteps)
        hidden_1 = self.te1(self.ids1, output_hidden_states=True).hidden_states[-2]
        out_2 = self.te2(self.ids2, output_hidden_states=True)
        context = torch.cat([hidden_1, out_2.hidden_states[-2]], dim=-1)
        cond = {"text_embeds": out_2[0], "time_ids": self.time_ids}
        pred = self.unet(noisy, timesteps, context, added_cond_kwargs=cond).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise.float(), reduction="mean")
        loss.backward()
        return loss

    def __call__(self, _=None):
        """One full step: forward, backward, AdamW, old rows put back."""
        loss = self.forward_backward()
        self.optimizer.step()
        self.optimizer.zero_grad()
        with self.torch.no_grad():
            self.te1.get_input_embeddings().weight[self.keep] = self.orig_embeds[self.keep]
        return float(loss.detach())


def count_flops(spec):
    """FLOPs of one step: (ours' computation, diffusers' recipe), counted on the meta device.

    AdamW and the row restore do no matrix products; the count covers forward and backward.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    out = []
    for ours in (True, False):
        with torch.device("meta"):
            step = RecipeStep(spec, build_torch_models(spec), ours_equivalent=ours)
        counter = FlopCounterMode(display=False)
        with counter:
            step.forward_backward()
        out.append(counter.get_total_flops())
    return out


def torch_matmul_rate(threads):
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(MATMUL_N, MATMUL_N), torch.randn(MATMUL_N, MATMUL_N)
    return _rate(lambda: a @ b)


def _rate(fn, repeat=5):
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 2 * MATMUL_N ** 3 / statistics.median(times) / 1e9


def run_diffusers(spec, steps, threads):
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    start = time.perf_counter()
    step = RecipeStep(spec, build_torch_models(spec))
    result = timed_steps(step, steps, time.perf_counter() - start)
    return {**result, "matmul_gflops": torch_matmul_rate(threads)}


# -- ours ----------------------------------------------------------------------------------------
def fill_random(model, seed=0):
    """Random weights of sane scale in every (uninitialised) parameter, all frozen.

    Slices of one shared random buffer at name-dependent offsets: seconds for SDXL base, where
    MindSpore's initialisers take minutes.
    """
    import zlib

    import numpy as np
    from mindspore import Tensor

    params = list(model.get_parameters())
    largest = max(int(np.prod(p.shape)) for p in params)
    buffer = np.random.default_rng(seed).standard_normal(2 * largest, dtype=np.float32)
    for param in params:
        shape = tuple(param.shape)
        size = int(np.prod(shape))
        offset = zlib.crc32(param.name.encode()) % (largest + 1)
        values = buffer[offset:offset + size].reshape(shape)
        if len(shape) == 1:
            values = 1.0 + 0.1 * values if param.name.endswith("weight") else 0.05 * values
        elif len(shape) > 1:
            values = values / np.sqrt(shape[0] if param.name.endswith("text_projection") else size // shape[0])
        param.set_data(Tensor(values, param.dtype))
        param.requires_grad = False


def run_ours(spec, steps, threads, ms_mode):
    import numpy as np
    import mindspore as ms
    from mindspore import Tensor, nn, ops
    from mindspore.nn.utils import no_init_parameters

    from gm.config import instantiate_from_config, load_config
    from gm.textual_inversion.embeddings import add_concept
    from gm.textual_inversion.train_step import ClippedAdamW, LossAndGrads, as_lr

    ms.set_context(mode=ms_mode)
    ms.set_device("CPU")
    start = time.perf_counter()
    with no_init_parameters():
        model = instantiate_from_config(load_config(spec["config"]).model)
    fill_random(model)
    model.set_train(False)
    params = add_concept(model.conditioner, TOKEN, 1, seed=0)

    loss_and_grads = LossAndGrads(model, params)
    optimizer = ClippedAdamW(params, max_grad_norm=1.0)
    b, size = spec["batch"], spec["size"]
    rng = np.random.default_rng(0)
    latent = (b, spec["unet"]["in_channels"], size // 8, size // 8)
    sizes = np.full((b, 2), size, np.float32)
    cond = model.conditioner.prepare({"txt": [PROMPT.format(TOKEN)] * b, "original_size_as_tuple": sizes,
                                      "crop_coords_top_left": np.zeros((b, 2), np.float32),
                                      "target_size_as_tuple": sizes})
    sigma = model.loss_fn.sigma_sampler(b, rng)[1].astype(np.float32)
    mean, logvar, latent_noise, noise = (rng.standard_normal(latent).astype(np.float32) for _ in range(4))
    weight = np.ones(b, np.float32)  # the plain loss (no min-SNR weights)
    inputs = (*(Tensor(a) for a in (mean, 0.1 * logvar - 2.0, latent_noise, noise, sigma, weight)), *cond)

    def step(i):
        loss, grads = loss_and_grads(*inputs)
        optimizer(ms.mutable(tuple(grads)), as_lr(1e-3), as_lr(i + 1))
        params[-1].asnumpy()
        return float(loss.asnumpy())

    result = timed_steps(step, steps, time.perf_counter() - start)

    class MatMul(nn.Cell):
        def construct(self, x, y):
            return ops.matmul(x, y)

    matmul = MatMul()
    a, c = (Tensor(rng.standard_normal((MATMUL_N, MATMUL_N)).astype(np.float32)) for _ in range(2))
    rate = _rate(lambda: matmul(a, c).asnumpy())
    return {**result, "matmul_gflops": rate}


# -- driver --------------------------------------------------------------------------------------
def child(args):
    with open(args.spec) as f:
        spec = json.load(f)
    if args.which == "ours":
        result = run_ours(spec, args.steps, args.threads, args.ms_mode)
    else:
        result = run_diffusers(spec, args.steps, args.threads)
    print(json.dumps(result))


def run_side(which, spec_path, args):
    cmd = [sys.executable, os.path.abspath(__file__), "--which", which, "--spec", spec_path,
           f"--steps={args.steps}", f"--threads={args.threads}", f"--ms_mode={args.ms_mode}"]
    load = os.getloadavg()[0]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"did not finish in {args.timeout} s"}
    finally:
        load = (load, os.getloadavg()[0])
    if out.returncode:
        killed = out.returncode in (-9, 137)
        reason = "killed (out of memory?)" if killed else f"failed (exit {out.returncode})"
        print(f"{which}: {reason}\n{out.stderr[-2000:]}", file=sys.stderr)
        return {"error": reason}
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "load": load}


def report(name, spec, ours, ref, flops, args):
    print(machine())
    print(f"\nTI step, {name}: {os.path.basename(spec['config'])}, {spec['size']}x{spec['size']} px, "
          f"batch {spec['batch']}, {args.threads} threads, MindSpore {'graph' if args.ms_mode == 0 else 'PyNative'} "
          f"mode, median of {args.steps} steps")
    for label, side in (("ours", ours), ("diffusers", ref)):
        if "error" in side:
            print(f"  {label}: {side['error']}")
    rows = [("step s", "step", "{:.3f}"), ("first step s", "first", "{:.2f}"), ("compile s (first - step)", None, "{:.2f}"),
            ("build s", "build", "{:.2f}"), ("RSS after build GB", "rss_built_gb", "{:.2f}"),
            ("peak RSS in steps GB", "peak_steps_gb", "{:.2f}"), ("peak RSS of run GB", "peak_rss_gb", "{:.2f}")]
    print(f"  {'':26}{'ours':>10}{'diffusers':>11}{'ours/diffusers':>16}")
    for label, key, fmt in rows:
        values = []
        for side in (ours, ref):
            if "error" in side:
                values.append(None)
            elif key is None:
                values.append(side["first"] - side["step"])
            else:
                values.append(side[key])
        cells = [fmt.format(v) if v is not None else "-" for v in values]
        ratio = f"{values[0] / values[1]:.2f}" if None not in values and values[1] else "-"
        print(f"  {label:26}{cells[0]:>10}{cells[1]:>11}{ratio:>16}")
    loads = [f"{label} {side['load'][0]:.1f} -> {side['load'][1]:.1f}" for label, side in
             (("ours", ours), ("diffusers", ref)) if "load" in side]
    print(f"  machine load (1-min average, before -> after): {', '.join(loads)}")
    ours_flops, ref_flops = flops
    print(f"  {'GFLOP per step':26}{ours_flops / 1e9:10.1f}{ref_flops / 1e9:11.1f}")
    if "error" not in ours:
        rate = ours_flops / ours["step"] / 1e9
        ref_rate = ref_flops / ref["step"] / 1e9 if "error" not in ref else None
        print(f"  {'GFLOP/s':26}{rate:10.1f}{ref_rate if ref_rate is not None else float('nan'):11.1f}")
        torch_rate = f", torch {ref['matmul_gflops']:.1f}" if "error" not in ref else ""
        print(f"  fp32 matmul {MATMUL_N}^3: MindSpore {ours['matmul_gflops']:.1f} GFLOP/s{torch_rate}; "
              f"our step reaches {100 * rate / ours['matmul_gflops']:.0f} % of MindSpore's")
    return {"preset": name, "spec": {k: spec[k] for k in ("config", "size", "batch")}, "ours": ours,
            "diffusers": ref, "flops": {"ours": ours_flops, "diffusers": ref_flops}}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", nargs="+", choices=sorted(PRESETS), default=["tiny", "base"])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3, help="timed steps after the first (median)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (MindSpore uses all cores)")
    parser.add_argument("--ms_mode", type=int, default=0, help="0 graph, 1 PyNative")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per side before giving up")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--which", choices=["ours", "diffusers"], help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.which:
        return child(args)
    results = []
    for name in args.preset:
        config, size = PRESETS[name]
        spec = make_spec(os.path.join(ROOT, config), size, args.batch)
        flops = count_flops(spec)
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(spec, f)
        try:
            ours = run_side("ours", f.name, args)
            ref = run_side("diffusers", f.name, args)
        finally:
            os.unlink(f.name)
        results.append(report(name, spec, ours, ref, flops, args))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
