"""The textual-inversion training run: model, concept, cached latents, loop, outputs, resume.

Every random draw of a step (sample order, noise level, noise, posterior sample) is derived from
(seed, step), so a run stopped and resumed from ``train_state.ckpt`` ends with the same vectors
as one that never stopped.
"""
import os
import signal
import time
from dataclasses import dataclass

import numpy as np
import mindspore as ms
from mindspore import Tensor, nn
from tqdm import tqdm

from gm.build import build_model
from gm.cli import UsageError
from gm.inference import Sampler
from gm.modules.diffusionmodules.sampling import make_sampler
from gm.textual_inversion.dataset import TIDataset
from gm.textual_inversion.embeddings import add_concept, concept_rows, save_ti
from gm.textual_inversion.outputs import RunOutputs
from gm.textual_inversion.train_step import ClippedAdamW, LossAndGrads, as_lr, learning_rate
from gm.weight_files import open_weights, write_ckpt

INFER_PROMPTS = {"object": "a photo of a {}", "style": "a painting in the style of {}", "face": "a photo of {}"}


@dataclass
class Settings:
    """Everything a run depends on (flags merged over the training config)."""

    config: object
    config_path: str
    weight: str
    data_path: str
    save_path: str
    placeholder_token: str
    num_vectors: int
    learnable_property: str
    initializer_token: str
    template_file: str
    batch_size: int
    gradient_accumulation_steps: int
    total_step: int
    learning_rate: float
    lr_scheduler: str
    lr_warmup_steps: int
    weight_decay: float
    betas: tuple
    eps: float
    clip_grad: bool
    max_grad_norm: float
    resolution: int
    center_crop: bool
    flip_p: float
    repeats: int
    save_ckpt_interval: int
    max_num_ckpt: int
    infer_during_train: bool
    infer_interval: int
    infer_prompt: str
    infer_images: int
    infer_steps: int
    guidance_scale: float
    seed: int
    resume: bool


class VAEEncode(nn.Cell):
    """Posterior moments of images (compiled once for the latent cache)."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def construct(self, x):
        return self.vae.encode(x)


class Trainer:
    """Builds everything from :class:`Settings` and runs the loop."""

    def __init__(self, s):
        if s.total_step < 1:
            raise UsageError(f"--total_step {s.total_step}: must be at least 1")
        if s.gradient_accumulation_steps < 1:
            raise UsageError(f"--gradient_accumulation_steps {s.gradient_accumulation_steps}: must be at least 1")
        if s.batch_size < 1:
            raise UsageError(f"--train_batch_size {s.batch_size}: must be at least 1")
        if s.lr_scheduler not in ("constant", "cosine"):
            raise UsageError(f"--lr_scheduler {s.lr_scheduler!r}: expected constant or cosine")
        self.s = s
        self.out = RunOutputs(s.save_path, s.config.get("version", "SD-XL"))
        self.dataset = TIDataset(s.data_path, s.placeholder_token, s.num_vectors, s.learnable_property,
                                 s.resolution, center_crop=s.center_crop, flip_p=s.flip_p, repeats=s.repeats,
                                 template_file=s.template_file, seed=s.seed)
        self.out.check_writable()
        if not os.path.isfile(s.weight):
            raise UsageError(f"--weight {s.weight}: no such file (convert the official weights with "
                             "tools/convert_weight.py, or try --demo True)")
        self.model = build_model(s.config, s.weight)
        self.params = add_concept(self.model.conditioner, s.placeholder_token, s.num_vectors,
                                  initializer_token=s.initializer_token, seed=s.seed)
        self.loss_and_grads = LossAndGrads(self.model, self.params)
        self.optimizer = ClippedAdamW(self.params, s.betas, s.eps, s.weight_decay,
                                      s.max_grad_norm if s.clip_grad else None)
        self.sigma_sampler = self.model.loss_fn.sigma_sampler
        self.start_step = self._resume() if s.resume else 0
        self.latents = None
        self.sampler = Sampler(self.model) if s.infer_during_train else None
        self.stop_requested = False

    # -- state -----------------------------------------------------------------------------------
    def rows(self):
        return concept_rows(self.model.conditioner, self.s.placeholder_token, self.s.num_vectors)

    def save(self, step):
        """The ``_ti.ckpt`` of this step and the resume state, both atomic; old files pruned."""
        rows = self.rows()
        save_ti(self.out.ti_path(step), self.s.placeholder_token, rows)
        items = [(f"rows_{i}", r) for i, r in enumerate(rows)]
        items += [(f"moment_{i}", m) for i, m in enumerate(self.optimizer.state())]
        items += [("step", np.asarray(step, np.int64)), ("placeholder_token", self.s.placeholder_token),
                  ("num_vectors", np.asarray(self.s.num_vectors, np.int64)), ("seed", np.asarray(self.s.seed))]
        write_ckpt(self.out.state_path, items)
        self.out.prune(self.s.max_num_ckpt)

    def _resume(self):
        path = self.out.state_path
        if not os.path.isfile(path):
            raise UsageError(f"--resume: no saved state at {path} (nothing to resume in --save_path)")
        with open_weights(path) as reader:
            token, n = reader.get("placeholder_token"), int(np.asarray(reader.get("num_vectors")).reshape(-1)[0])
            if token != self.s.placeholder_token or n != self.s.num_vectors:
                raise UsageError(f"--resume: {path} is for {token!r} with {n} vectors, not "
                                 f"{self.s.placeholder_token!r} with {self.s.num_vectors}")
            for i, param in enumerate(self.params):
                param.set_data(Tensor(np.array(reader.get(f"rows_{i}"), np.float32)))
            moments = [np.array(reader.get(f"moment_{i}")) for i in range(2 * len(self.params))]
            step = int(np.asarray(reader.get("step")).reshape(-1)[0])
        self.optimizer.load_state(moments)
        return step

    # -- data ------------------------------------------------------------------------------------
    def cache_latents(self, chunk=4):
        """Posterior moments of every training view, through the VAE once."""
        encode = VAEEncode(self.model.first_stage_model)
        means, logvars = [], []
        views = self.dataset.views
        for start in tqdm(range(0, len(views), chunk), desc="caching latents", leave=False):
            group = views[start:start + chunk]
            pixels = np.stack([v.pixels for v in group] + [group[-1].pixels] * (chunk - len(group)))
            mean, logvar = encode(Tensor(pixels))
            means.append(mean.asnumpy()[:len(group)])
            logvars.append(logvar.asnumpy()[:len(group)])
        self.latents = (np.concatenate(means), np.concatenate(logvars))

    def micro_batch(self, index):
        """Inputs of micro-batch ``index`` (global count of micro-batches), from (seed, index)."""
        samples = self.dataset.sample(index, self.s.batch_size)
        view_ids = [v for v, _ in samples]
        rng = np.random.default_rng([self.s.seed, index])
        mean, logvar = self.latents[0][view_ids], self.latents[1][view_ids]
        _, sigma = self.sigma_sampler(len(samples), rng)
        latent_noise = rng.standard_normal(mean.shape).astype(np.float32)
        noise = rng.standard_normal(mean.shape).astype(np.float32)
        batch = {"txt": [p for _, p in samples], **self.dataset.size_conditioning(view_ids)}
        cond = self.model.conditioner.prepare(batch)
        return (Tensor(mean), Tensor(logvar), Tensor(latent_noise), Tensor(noise), Tensor(sigma), *cond)

    # -- loop ------------------------------------------------------------------------------------
    def train_step(self, step):
        """One optimiser step (``gradient_accumulation_steps`` micro-batches); returns (loss, lr)."""
        accum = self.s.gradient_accumulation_steps
        total_loss, grads = 0.0, None
        for micro in range(accum):
            loss, g = self.loss_and_grads(*self.micro_batch(step * accum + micro))
            total_loss += float(loss.asnumpy())
            grads = g if grads is None else tuple(a + b for a, b in zip(grads, g))
        if accum > 1:
            grads = tuple(g / accum for g in grads)
        lr = learning_rate(step, self.s.learning_rate, self.s.total_step, self.s.lr_warmup_steps,
                           self.s.lr_scheduler)
        self.optimizer(ms.mutable(grads), as_lr(lr), as_lr(step + 1))
        return total_loss / accum, lr

    def infer(self, step):
        prompt = self.s.infer_prompt or INFER_PROMPTS[self.s.learnable_property]
        prompt = prompt.format(self.dataset.expanded_placeholder)
        sampler = make_sampler("euler", self.s.infer_steps, self.s.guidance_scale)
        images = self.sampler.sample([prompt] * self.s.infer_images, self.s.resolution, self.s.resolution,
                                     seed=self.s.seed, sampler=sampler)
        self.out.save_samples(step, images)

    def summary(self):
        s = self.s
        lines = [
            f"model config        {s.config_path}",
            f"weights             {s.weight}",
            f"data                {s.data_path} ({self.dataset.num_images} images, {len(self.dataset.views)} views,"
            f" {s.learnable_property})",
            f"concept             {s.placeholder_token} x {s.num_vectors} vectors"
            f" (init: {s.initializer_token or 'random'})",
            f"steps               {s.total_step} x batch {s.batch_size} x accumulation {s.gradient_accumulation_steps}",
            f"learning rate       {s.learning_rate} ({s.lr_scheduler}, warm-up {s.lr_warmup_steps})",
            f"gradient clipping   {s.max_grad_norm if s.clip_grad else 'off'}",
            f"resolution          {s.resolution}",
            f"MindSpore           {ms.__version__}, {ms.get_context('device_target')}, "
            f"{'graph' if ms.get_context('mode') == 0 else 'PyNative'} mode",
            f"output              {s.save_path}" + (f" (resuming at step {self.start_step})" if self.start_step else ""),
        ]
        print("Key settings\n" + "\n".join("  " + line for line in lines), flush=True)

    def run(self):
        """Train to ``total_step``; on SIGINT/SIGTERM save the state and stop at the next step."""
        self.summary()
        self.cache_latents()
        self.out.start_loss_log(self.start_step)
        previous = {sig: signal.signal(sig, self._request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        bar = tqdm(total=self.s.total_step, initial=self.start_step, desc="training", unit="step", dynamic_ncols=True)
        step = self.start_step
        try:
            while step < self.s.total_step and not self.stop_requested:
                start = time.perf_counter()
                loss, lr = self.train_step(step)
                seconds = time.perf_counter() - start
                step += 1
                self.out.log_loss(step, loss, lr, seconds)
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.3g}", step_s=f"{seconds:.2f}")
                bar.update(1)
                if step % self.s.save_ckpt_interval == 0 or step == self.s.total_step:
                    self.save(step)
                    self.out.save_loss_curve()
                if self.s.infer_during_train and (step % self.s.infer_interval == 0 or step == self.s.total_step):
                    self.infer(step)
        finally:
            bar.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if self.stop_requested and step < self.s.total_step:
            self.save(step)
            self.out.save_loss_curve()
            print(f"stopped at step {step}; continue with --resume True", flush=True)
        return step

    def _request_stop(self, signum, frame):
        self.stop_requested = True

