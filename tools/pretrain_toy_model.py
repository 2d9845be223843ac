"""Pretrain the toy SDXL on the toy world, from scratch, with the toolkit's own model code.

    python tools/pretrain_toy_model.py --work_dir runs/toy_pretrain --out checkpoints/sd_xl_toy.safetensors

Stages, each resumable from its last state in --work_dir (run the same command again to continue):
  vae      the VAE on crops of world pictures, then on whole pictures, then its latent space rescaled so that latents times
           the config's scale_factor have unit std;
  latents  world pictures encoded once;
  unet     the UNet with SDXL's loss and discretisation, caption dropout, EMA of the weights;
  export   the EMA weights, the VAE and the seeded, frozen text encoders written to --out in the
           official single-file layout (fp16 safetensors).
With --init FILE (an exported toy model) the run starts from that file instead of from the seed: its
VAE is taken as the vae stage's result and its UNet as the UNet's starting weights, so a model can be
trained further after its states are gone. Settings come from the config's ``pretrain:`` section. Nothing of the toy world is held in git but
its seed: every picture and caption is drawn again from it.
"""
import json
import os
import time


import numpy as np
from tqdm import tqdm

from gm.cli import ArgumentParser, add_device_args, run
from gm.config import load_config
from gm.errors import UsageError

STAGES = ("vae", "latents", "unet", "export")


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/training/sd_xl_toy_pretrain.yaml",
                   help="model config with a pretrain: section")
    p.add_argument("--work_dir", default="runs/toy_pretrain", help="states, logs and cached latents (resumable)")
    p.add_argument("--out", default="checkpoints/sd_xl_toy.safetensors", help="the trained model (.safetensors)")
    p.add_argument("--init", default=None,
                   help="start from this exported model (.safetensors): its VAE, text encoders and UNet")
    p.add_argument("--stop_after", choices=STAGES, default="export", help="stop once this stage is done")
    add_device_args(p)
    return p.parse_args(argv)


class Pretraining:
    """The stages, their state files and timings under ``work_dir``."""

    def __init__(self, config, work_dir):
        import mindspore as ms
        from gm.checkpoints.random_weights import randomize_cell
        from gm.config import instantiate_from_config
        from gm.toyworld.pretrain import zero_residual_outputs

        self.ms = ms
        self.config = config
        self.p = config.pretrain
        self.seed = int(self.p.seed)
        self.size = int(self.p.resolution)
        self.work_dir = work_dir
        self.engine = instantiate_from_config(config.model)
        randomize_cell(self.engine, self.seed)  # the toy model before training = random_checkpoint(seed)
        zero_residual_outputs(self.engine.model.diffusion_model)
        for param in self.engine.get_parameters():
            param.requires_grad = False
        self.timings_path = os.path.join(work_dir, "timings.json")
        self.timings = json.load(open(self.timings_path)) if os.path.isfile(self.timings_path) else {}

    def start_from(self, path):
        """Take every weight from an exported model; its VAE becomes the vae stage's result."""
        from gm.build import load_weights
        from gm.checkpoints.weight_files import write_ckpt

        load_weights(self.engine, path)
        if not os.path.isfile(self.path("vae.ckpt")):
            write_ckpt(self.path("vae.ckpt"),
                       [(p.name, p.asnumpy()) for p in self.engine.first_stage_model.get_parameters()])

    def path(self, name):
        return os.path.join(self.work_dir, name)

    def add_time(self, stage, seconds):
        from gm.files import atomic_output

        self.timings[stage] = self.timings.get(stage, 0.0) + seconds
        with atomic_output(self.timings_path) as tmp, open(tmp, "w") as f:
            json.dump(self.timings, f, indent=1)

    # -- state files -----------------------------------------------------------------------------
    def save_state(self, name, state, step, losses):
        """Write ``state`` {key: Parameter} and the step (atomically), and the loss log beside it."""
        from gm.checkpoints.weight_files import write_ckpt
        from gm.files import atomic_output

        write_ckpt(self.path(name), [(k, p.asnumpy()) for k, p in state.items()] + [("step", np.asarray(step))])
        with atomic_output(self.path(name.replace("_state.ckpt", "_loss.csv"))) as tmp, open(tmp, "w") as f:
            f.write("step,loss\n" + "".join(f"{s},{l:.6f}\n" for s, l in losses))

    def load_state(self, name, state):
        """Load a saved state into ``state`` {key: Parameter}; returns (step, logged losses), (0, []) if none."""
        from mindspore import Tensor
        from gm.checkpoints.weight_files import open_weights

        if not os.path.isfile(self.path(name)):
            return 0, []
        with open_weights(self.path(name)) as reader:
            for key, param in state.items():
                param.set_data(Tensor(np.array(reader.get(key)), param.dtype))
            step = int(np.asarray(reader.get("step")).reshape(-1)[0])
        with open(self.path(name.replace("_state.ckpt", "_loss.csv"))) as f:
            rows = [line.strip().split(",") for line in f.readlines()[1:]]
        return step, [(int(a), float(b)) for a, b in rows if int(a) <= step]

    # -- stages ----------------------------------------------------------------------------------
    def train(self, stage, step_cell, state, settings, batch_of, after_step=None):
        """The shared loop: cosine lr, resumable state every ``save_interval`` steps, a progress bar."""
        from gm.toyworld.pretrain import cosine_lr

        name = f"{stage}_state.ckpt"
        start, losses = self.load_state(name, state)
        total, interval = int(settings.steps), int(self.p.save_interval)
        bar = tqdm(total=total, initial=start, desc=stage, unit="step", dynamic_ncols=True)
        clock = time.perf_counter()
        for step in range(start, total):
            lr = cosine_lr(step, float(settings.learning_rate), total, int(settings.warmup))
            step_cell.set_lr(lr)
            loss = float(step_cell(*batch_of(step)).asnumpy())
            if not np.isfinite(loss):
                raise RuntimeError(f"{stage}: loss became {loss} at step {step + 1}")
            if after_step is not None:
                after_step(step)
            losses.append((step + 1, loss))
            bar.set_postfix(loss=f"{np.mean([l for _, l in losses[-50:]]):.4f}", lr=f"{lr:.2e}")
            bar.update(1)
            if (step + 1) % interval == 0 or step + 1 == total:
                self.save_state(name, state, step + 1, losses)
                now = time.perf_counter()
                self.add_time(stage, now - clock)
                clock = now
        bar.close()
        return losses

    def vae(self):
        """Train the VAE on crops, then normalise its latent scale; writes vae.ckpt."""
        from mindspore import Tensor
        from gm.checkpoints.weight_files import write_ckpt
        from gm.toyworld.pretrain import TrainStep, VAELoss, crops, normalise_latent_scale
        from gm.toyworld.world import random_scene, render

        vae = self.engine.first_stage_model
        params = list(vae.get_parameters())
        for param in params:
            param.requires_grad = True
        s = self.p.vae
        batch, crop = int(s.batch_size), int(s.crop)
        factor = vae.downsampling_factor
        step_cell = TrainStep(VAELoss(vae), params, max_grad_norm=1.0)

        def batches(batch, crop, stream):
            def batch_of(step):
                rng = np.random.default_rng([self.seed, stream, step])
                pictures = np.stack([render(random_scene(rng, self.size)) for _ in range(batch)])
                noise = rng.standard_normal((batch, vae.embed_dim, crop // factor, crop // factor)).astype(np.float32)
                return Tensor(crops(pictures, crop, rng)), Tensor(noise)
            return batch_of

        clock = time.perf_counter()
        state = {**{p.name: p for p in params}, **step_cell.state()}
        self.train("vae", step_cell, state, s, batches(batch, crop, stream=1))
        # Crops leave the decoder's normalisation statistics those of crops: a short phase on whole
        # pictures fits them to the pictures the model draws (reconstruction L1 34 -> see model card).
        self.train("vae_whole", step_cell, state, s.whole, batches(int(s.whole.batch_size), self.size, stream=5))
        for param in params:
            param.requires_grad = False
        means = self.encode(range(512), stream=3)[0]
        k = normalise_latent_scale(vae, float(means.std()), float(self.engine.scale_factor))
        write_ckpt(self.path("vae.ckpt"), [(p.name, p.asnumpy()) for p in vae.get_parameters()])
        self.add_time("vae", time.perf_counter() - clock)
        print(f"vae: latent std {means.std():.4f} before normalisation; scaled by {k:.4f}", flush=True)

    def scenes(self, indices, stream=2):
        from gm.toyworld.world import random_scene

        return [random_scene(np.random.default_rng([self.seed, stream, int(i)]), self.size) for i in indices]

    def encode(self, indices, stream=2, chunk=64):
        """Posterior moments of the world pictures ``indices`` of a stream: (mean, logvar) float32."""
        from mindspore import Tensor
        from gm.models.autoencoder import PosteriorMoments
        from gm.toyworld.world import render

        encode = self._moments = getattr(self, "_moments", None) or PosteriorMoments(self.engine.first_stage_model)
        indices = list(indices)
        means, logvars = [], []
        for start in tqdm(range(0, len(indices), chunk), desc="encoding", leave=False):
            part = indices[start:start + chunk]
            pictures = [render(s) for s in self.scenes(part, stream)]
            pictures += [pictures[-1]] * (chunk - len(part))
            pixels = np.stack(pictures).transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0
            mean, logvar = encode(Tensor(pixels))
            means.append(mean.asnumpy()[:len(part)])
            logvars.append(logvar.asnumpy()[:len(part)])
        return np.concatenate(means), np.concatenate(logvars)

    def load_vae(self):
        from mindspore import Tensor
        from gm.checkpoints.weight_files import open_weights

        with open_weights(self.path("vae.ckpt")) as reader:
            for p in self.engine.first_stage_model.get_parameters():
                p.set_data(Tensor(np.array(reader.get(p.name)), p.dtype))

    def latents(self):
        from gm.files import atomic_output

        clock = time.perf_counter()
        self.load_vae()
        mean, logvar = self.encode(range(int(self.p.latents.pictures)))
        with atomic_output(self.path("latents.npz")) as tmp, open(tmp, "wb") as f:
            np.savez(f, mean=mean, logvar=logvar)
        self.add_time("latents", time.perf_counter() - clock)

    def unet(self):
        """Train the UNet on the cached latents with caption dropout; EMA weights kept beside."""
        from mindspore import Tensor
        from gm.inference import condition_batch
        from gm.toyworld.pretrain import EMA, TrainStep, UNetLoss, ema_decay
        from gm.toyworld.world import caption

        self.load_vae()
        cached = np.load(self.path("latents.npz"))
        means, logvars = cached["mean"], cached["logvar"]
        scenes = self.scenes(range(len(means)))
        unet = self.engine.model.diffusion_model
        params = list(unet.get_parameters())
        for param in params:
            param.requires_grad = True
        s = self.p.unet
        batch, dropout = int(s.batch_size), float(s.caption_dropout)
        step_cell = TrainStep(UNetLoss(self.engine), params, max_grad_norm=1.0)
        ema = EMA(params)
        sigma_sampler = self.engine.loss_fn.sigma_sampler
        conditioner = self.engine.conditioner

        def batch_of(step):
            rng = np.random.default_rng([self.seed, 4, step])
            ids = rng.integers(0, len(means), batch)
            captions = [caption(scenes[i], rng) for i in ids]
            sigmas = sigma_sampler(batch, rng)[1]
            latent_noise = rng.standard_normal(means[ids].shape).astype(np.float32)
            noise = rng.standard_normal(means[ids].shape).astype(np.float32)
            keep = (rng.random(batch) >= dropout).astype(np.float32)
            cond = conditioner.prepare(condition_batch(captions, self.size, self.size))
            return (Tensor(means[ids]), Tensor(logvars[ids]), Tensor(latent_noise), Tensor(noise),
                    Tensor(sigmas.astype(np.float32)), Tensor(keep), *cond)

        def after_step(step):
            ema(Tensor(np.float32(ema_decay(step, float(s.ema_decay)))))

        state = {**{p.name: p for p in params}, **step_cell.state(), **ema.state()}
        self.train("unet", step_cell, state, s, batch_of, after_step=after_step)

    def export(self, out):
        """The EMA UNet, the VAE and the seeded text encoders in the official layout, fp16."""
        from gm.checkpoints.layout import write_official
        from gm.checkpoints.weight_files import open_weights

        self.load_vae()
        values = {p.name: p for p in self.engine.get_parameters()}
        with open_weights(self.path("unet_state.ckpt")) as reader:
            shadows = {k[len("ema."):]: np.array(reader.get(k)) for k in reader.keys() if k.startswith("ema.")}

        def weight_of(name, shape):
            return shadows[name] if name in shadows else values[name].asnumpy()

        metadata = {"format": "pt", "source": "tools/pretrain_toy_model.py", "seed": self.seed,
                    "timings_s": json.dumps({k: round(v) for k, v in self.timings.items()})}
        n = write_official(self.config, out, weight_of, np.float16, metadata)
        print(f"wrote {n} tensors to {out} ({os.path.getsize(out) / 1e6:.1f} MB)", flush=True)


def main(argv=None):
    args = parse_args(argv)
    config = load_config(args.config)
    if "pretrain" not in config:
        raise UsageError(f"--config {args.config}: has no pretrain: section")
    if not args.out.endswith(".safetensors"):
        raise UsageError(f"--out {args.out}: expected a .safetensors file")
    try:
        os.makedirs(args.work_dir, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--work_dir {args.work_dir}: cannot create it ({e.strerror})") from None
    from gm.runtime import init_mindspore

    init_mindspore(args.device_target, args.ms_mode)
    run_ = Pretraining(config, args.work_dir)
    if args.init:
        run_.start_from(args.init)
    done = {"vae": os.path.isfile(run_.path("vae.ckpt")), "latents": os.path.isfile(run_.path("latents.npz"))}
    for stage in STAGES:
        if stage == "export":
            run_.export(args.out)
        elif not done.get(stage):
            getattr(run_, stage)()
        if stage == args.stop_after:
            break
    print(f"timings (s): {json.dumps({k: round(v) for k, v in run_.timings.items()})}", flush=True)


if __name__ == "__main__":
    run(main)
