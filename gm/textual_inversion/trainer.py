"""The textual-inversion training run: model, concepts, cached latents, loop, outputs, resume.

Every random draw (sample order, noise level, noise, posterior sample) is a function of the seed
and the global index of the sample, so a run stopped and resumed from ``train_state.ckpt`` ends
with the same vectors as one that never stopped, and N data-parallel ranks with batch B see
exactly what one process with batch N*B sees.
"""
import math
import os
import signal
import time
from dataclasses import dataclass, field

import numpy as np
import mindspore as ms
from mindspore import Tensor, nn
from tqdm import tqdm

from gm.build import build_model, size_multiple
from gm.checkpoints.weight_files import open_weights, write_ckpt
from gm.checks import check_outputs, check_value
from gm.errors import UsageError
from gm.inference import SamplingPipeline
from gm.modules.diffusionmodules.sampling import make_sampler
from gm.parallel import SingleProcess
from gm.textual_inversion.dataset import TIDataset, check_concept
from gm.textual_inversion.embeddings import add_concept, concept_rows, load_ti, save_ti
from gm.textual_inversion.outputs import RunOutputs, check_save_path, clear_run, run_files
from gm.textual_inversion.templates import load_templates
from gm.textual_inversion.train_step import ClippedAdamW, LossAndGrads, as_lr, learning_rate
from gm.textual_inversion.words import check_initializer, check_vectors, placeholder_tokens, slug

INFER_PROMPTS = {"object": "a photo of a {}", "style": "a painting in the style of {}", "face": "a photo of {}"}


@dataclass
class Concept:
    """One new word: its token, vector count, images and how it is initialised."""

    placeholder_token: str
    data_path: str
    num_vectors: int = 1
    learnable_property: str = "object"
    initializer_token: str = None
    initializer_file: str = None
    template_file: str = None
    source: str = None  # "--concepts FILE: concept N" for a concept read from a --concepts file

    @property
    def name(self):
        """File-name form of the token (``<cat-toy>`` -> ``cat-toy``)."""
        return slug(self.placeholder_token)

    def label(self, key):
        """How an error names this concept's ``key``: its flag, or its --concepts file, entry and key."""
        return f"{self.source}: {key}" if self.source else f"--{key}"


@dataclass
class Settings:
    """Everything a run depends on (flags merged over the training config)."""

    config: object
    config_path: str
    weight: str
    save_path: str
    concepts: list = field(default_factory=list)
    concepts_path: str = None  # the --concepts file they came from, if any
    batch_size: int = 1
    gradient_accumulation_steps: int = 1
    total_step: int = 2000
    learning_rate: float = 5e-3
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    weight_decay: float = 0.0
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8
    clip_grad: bool = True
    max_grad_norm: float = 1.0
    resolution: int = 1024
    center_crop: bool = True
    flip_p: float = 0.5
    repeats: int = 100
    save_ckpt_interval: int = 500
    max_num_ckpt: int = None
    infer_during_train: bool = False
    infer_interval: int = 500
    infer_prompt: str = None
    infer_images: int = 2
    infer_steps: int = 40
    guidance_scale: float = 5.0
    measure_concept: str = None  # a toy-world concept (gm.toyworld.concepts.CONCEPTS) scored by the meter
    measure_samples: int = 16
    seed: int = 42
    resume: bool = False
    overwrite: bool = False  # replace an earlier run in save_path (removed when this run starts writing)
    amp_level: str = "O0"
    amp_dtype: str = "float16"
    from_config: set = field(default_factory=set)  # names of the settings read from the training config


# Settings read from a flag or, when it is not given, the training config: {name: (flag, config key,
# what a valid value is: a key of gm.checks.RULES)}. A config without max_num_ckpt keeps every _ti.ckpt.
OPTIONS = {
    "total_step": ("--total_step", "train.total_step", "count"),
    "batch_size": ("--train_batch_size", "train.batch_size", "count"),
    "gradient_accumulation_steps": ("--gradient_accumulation_steps", None, "count"),
    "learning_rate": ("--learning_rate", "optim.learning_rate", "positive"),
    "lr_scheduler": ("--lr_scheduler", "optim.lr_scheduler", None),
    "lr_warmup_steps": ("--lr_warmup_steps", "optim.lr_warmup_steps", "natural"),
    "weight_decay": (None, "optim.weight_decay", "non_negative"),
    "betas": (None, "optim.betas", "adam_betas"),
    "eps": (None, "optim.eps", "positive"),
    "clip_grad": ("--clip_grad", None, "boolean"),
    "max_grad_norm": ("--max_grad_norm", None, "positive"),
    "resolution": ("--resolution", "train.resolution", "multiple_of_8"),
    "center_crop": ("--center_crop", "train.center_crop", "boolean"),
    "flip_p": ("--flip_p", "train.flip_p", "probability"),
    "repeats": ("--repeats", "train.repeats", "count"),
    "save_ckpt_interval": ("--save_ckpt_interval", "train.save_ckpt_interval", "count"),
    "max_num_ckpt": ("--max_num_ckpt", "train.max_num_ckpt", "count"),
    "infer_interval": ("--infer_interval", "infer.interval", "count"),
    "infer_images": (None, "infer.num_images", "count"),
    "infer_steps": (None, "infer.sample_steps", "count"),
    "guidance_scale": (None, "infer.guidance_scale", "finite"),
    "measure_concept": ("--measure_concept", None, None),
    "measure_samples": (None, "infer.measure_samples", "count"),
    "seed": ("--seed", None, "natural"),
}


class VAEEncode(nn.Cell):
    """Posterior moments of images (compiled once for the latent cache)."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def construct(self, x):
        return self.vae.encode(x)


def setting_name(s, key):
    """How an error names setting ``key``: its flag, or the training config and key it was read from."""
    flag, config_key, _ = OPTIONS[key]
    return f"{s.config_path}: {config_key}" if key in s.from_config or flag is None else flag


def check_settings(s):
    """Every value of the run, before anything is read, written or built: UsageError naming the flag,
    config key or --concepts entry of the first bad one."""
    for key, (_, _, rule) in OPTIONS.items():
        value = getattr(s, key)
        if rule and not (key == "max_num_ckpt" and value is None):
            check_value(setting_name(s, key), value, rule)
    multiple = size_multiple(s.config)
    if s.resolution % multiple:
        raise UsageError(f"{setting_name(s, 'resolution')} {s.resolution}: this model needs a multiple of {multiple} "
                         "(the VAE's 8 times 2 per UNet downsampling)")
    if s.measure_concept is not None:
        from gm.toyworld.concepts import CONCEPTS

        if s.measure_concept not in CONCEPTS:
            raise UsageError(f"--measure_concept {s.measure_concept!r}: expected one of {', '.join(CONCEPTS)} "
                             "(concepts of the toy world, for the toy model)")
        if len(s.concepts) != 1:
            raise UsageError("--measure_concept: needs exactly one concept to train")
    if s.lr_scheduler not in ("constant", "cosine"):
        raise UsageError(f"{setting_name(s, 'lr_scheduler')} {s.lr_scheduler!r}: expected constant or cosine")
    if s.infer_prompt is not None:
        try:
            s.infer_prompt.format("")
            usable = "{}" in s.infer_prompt
        except (IndexError, KeyError, ValueError):
            usable = False
        if not usable:
            raise UsageError(f"--infer_prompt {s.infer_prompt!r}: expected a prompt with {{}} for the word "
                             "and no other braces")
    if not s.concepts:
        raise UsageError("--data_path: required (a folder of images), or use --demo True")
    for c in s.concepts:
        check_concept(c.placeholder_token, c.num_vectors, c.learnable_property, c.label)
        if c.initializer_token is not None:
            check_initializer(c.label("initializer_token"), c.initializer_token)
        source = f" of {c.label('template_file')} {c.template_file}" if c.template_file else ""
        templates = load_templates(c.learnable_property, c.template_file, c.label)
        prompts = [(t, f"the template {t!r}{source}") for t in templates]
        if s.infer_during_train:
            prompt = s.infer_prompt or INFER_PROMPTS[c.learnable_property]
            prompts.append((prompt, f"--infer_prompt {prompt!r}" if s.infer_prompt else
                            f"the in-training sample prompt {prompt!r}"))
        check_vectors(c.label("num_vectors"), c.num_vectors, prompts)  # captions: checked as they are read
    owner = {}
    for c in s.concepts:
        for token in placeholder_tokens(c.placeholder_token, c.num_vectors):
            if token in owner:
                other = owner[token]
                raise UsageError(f"{c.label('placeholder_token')} {c.placeholder_token!r}: its token {token!r} is "
                                 f"also a token of {other.placeholder_token!r} (with {other.num_vectors} vectors: "
                                 f"{' '.join(placeholder_tokens(other.placeholder_token, other.num_vectors))}); "
                                 "each concept needs its own word")
            owner[token] = c


def diverged(step, what):
    """The error that stops a run whose numbers are no longer finite."""
    return UsageError(f"step {step}: {what}: training diverged (try a lower --learning_rate); stopped, the "
                      "files saved before this step are kept")


class Trainer:
    """Builds everything from :class:`Settings` and runs the loop."""

    def __init__(self, s, parallel=None):
        """Check everything (settings, --save_path, the resume state, the images) before writing
        or building anything; then build the model and the new words' parameters."""
        check_settings(s)
        inputs = [("--weight", s.weight), ("--config", s.config_path), ("--concepts", s.concepts_path)]
        inputs += [(c.label(k), getattr(c, k)) for c in s.concepts for k in ("data_path", "initializer_file",
                                                                               "template_file")]
        check_outputs([("--save_path", s.save_path)], inputs, kind="folder")
        self.s = s
        self.parallel = parallel or SingleProcess()
        if self.parallel.is_main:
            check_save_path(s.save_path, s.resume, s.overwrite)
        version = s.config.get("version", "SD-XL")
        multi = len(s.concepts) > 1
        self.outputs = [RunOutputs(s.save_path, version, c.name if multi else None) for c in s.concepts]
        self.out = self.outputs[0]
        state = self._read_state() if s.resume else {"step": 0}
        self.start_step = state["step"]
        if not os.path.isfile(s.weight):
            raise UsageError(f"--weight {s.weight}: no such file (convert the official weights with "
                             "tools/convert_weight.py, or try --demo True without --weight)")
        self.datasets = [TIDataset(c.data_path, c.placeholder_token, c.num_vectors, c.learnable_property,
                                   s.resolution, center_crop=s.center_crop, flip_p=s.flip_p, repeats=s.repeats,
                                   template_file=c.template_file, seed=s.seed, name=c.label) for c in s.concepts]
        self.model = build_model(s.config, s.weight, s.amp_level, s.amp_dtype)
        widths = [e.embedding.weight.shape[1] for e in self.model.conditioner.text_embedders]
        for c in s.concepts:
            rows = self._initial_rows(c, widths)
            self.params = add_concept(self.model.conditioner, c.placeholder_token, c.num_vectors, rows=rows,
                                      initializer_token=c.initializer_token, seed=s.seed)
        self.loss_and_grads = LossAndGrads(self.model, self.params)
        self.optimizer = ClippedAdamW(self.params, s.betas, s.eps, s.weight_decay,
                                      s.max_grad_norm if s.clip_grad else None)
        if s.resume:
            shapes = [tuple(p.shape) for p in self.params]
            expected = {f"rows_{i}": shape for i, shape in enumerate(shapes)}
            expected.update({f"moment_{i}": shapes[i % len(shapes)] for i in range(2 * len(shapes))})
            for key, shape in expected.items():
                if key not in state or state[key].shape != shape:
                    found = f"shape {list(state[key].shape)}" if key in state else "missing"
                    raise UsageError(f"--resume: {self.out.state_path} is not the state of this run ({key}: {found}, "
                                     f"expected {list(shape)}); start a new run with --overwrite True")
            for i, param in enumerate(self.params):
                param.set_data(Tensor(state[f"rows_{i}"]))
            self.optimizer.load_state([state[f"moment_{i}"] for i in range(2 * len(self.params))])
        self.sigma_sampler = self.model.loss_fn.sigma_sampler
        self.latents = []
        wanted = s.infer_during_train or s.measure_concept
        self.sampler = SamplingPipeline(self.model) if wanted and self.parallel.is_main else None
        self.scores = {}  # {step: {measure: score}} of --measure_concept
        self.stop_requested = False

    @staticmethod
    def _initial_rows(concept, widths):
        """Rows from ``initializer_file`` (an embedding of this word to keep training), else None."""
        if not concept.initializer_file:
            return None
        token, rows = load_ti(concept.initializer_file, widths, need_word=False)  # its vectors, under our word
        if rows[0].shape[0] != concept.num_vectors:
            raise UsageError(f"{concept.label('initializer_file')} {concept.initializer_file}: has "
                             f"{rows[0].shape[0]} vectors ({token}), but {concept.label('num_vectors')} is "
                             f"{concept.num_vectors}")
        return rows

    # -- state -----------------------------------------------------------------------------------
    def rows(self, concept):
        return concept_rows(self.model.conditioner, concept.placeholder_token, concept.num_vectors)

    def save(self, step):
        """Each concept's ``_ti.ckpt`` and the resume state, all atomic; old files pruned (main rank).
        Vectors that are not finite stop the run instead (every rank, so all stop alike)."""
        rows = [p.asnumpy() for p in self.params]
        if not all(np.isfinite(r).all() for r in rows):
            raise diverged(step, "the learned vectors are not finite")
        if not self.parallel.is_main:
            return
        for concept, out in zip(self.s.concepts, self.outputs):
            save_ti(out.ti_path(step), concept.placeholder_token, self.rows(concept))
            out.prune(self.s.max_num_ckpt)
        items = [(f"rows_{i}", r) for i, r in enumerate(rows)]
        items += [(f"moment_{i}", m) for i, m in enumerate(self.optimizer.state())]
        items += [("step", np.asarray(step, np.int64)), ("seed", np.asarray(self.s.seed, np.int64)),
                  ("placeholder_token", self._identity())]
        write_ckpt(self.out.state_path, items)

    def _identity(self):
        return "\n".join(f"{c.placeholder_token} {c.num_vectors}" for c in self.s.concepts)

    def _read_state(self):
        """``train_state.ckpt`` for --resume as {"step", "rows_i", "moment_i"}, checked against this run."""
        path = self.out.state_path
        if not os.path.isfile(path):
            raise UsageError(f"--resume: no saved state at {path} (nothing to resume in --save_path)")
        with open_weights(path) as reader:
            saved = reader.get("placeholder_token") if "placeholder_token" in reader.keys() else None
            if not isinstance(saved, str):
                raise UsageError(f"--resume: {path} names no concepts; it is not a training state of this toolkit "
                                 "(start a new run with --overwrite True)")
            if saved != self._identity():
                raise UsageError(f"--resume: {path} was saved for other concepts ({saved!r}, not "
                                 f"{self._identity()!r})")
            state = {k: np.array(reader.get(k), np.float32) for k in reader.keys()
                     if k.startswith(("rows_", "moment_")) and not isinstance(reader.get(k), str)}
            step = np.asarray(reader.get("step")) if "step" in reader.keys() else np.zeros(0)
            if step.size != 1 or not np.issubdtype(step.dtype, np.integer) or int(step.reshape(())) < 0:
                raise UsageError(f"--resume: {path} holds no valid step; it is not a training state of this "
                                 "toolkit (start a new run with --overwrite True)")
            state["step"] = int(step.reshape(()))
        if state["step"] >= self.s.total_step:
            raise UsageError(f"--resume: the run in {self.s.save_path} is already at step {state['step']} "
                             f"({setting_name(self.s, 'total_step')} {self.s.total_step}); nothing to train (give a "
                             "higher --total_step to continue it)")
        return state

    # -- data ------------------------------------------------------------------------------------
    def cache_latents(self, chunk=4):
        """Posterior moments of every training view of every concept, through the VAE once."""
        encode = VAEEncode(self.model.first_stage_model)
        for dataset in self.datasets:
            means, logvars = [], []
            views = dataset.views
            for start in tqdm(range(0, len(views), chunk), desc="caching latents", leave=False,
                              disable=not self.parallel.is_main):
                group = views[start:start + chunk]
                pixels = np.stack([v.pixels for v in group] + [group[-1].pixels] * (chunk - len(group)))
                mean, logvar = encode(Tensor(pixels))
                means.append(mean.asnumpy()[:len(group)])
                logvars.append(logvar.asnumpy()[:len(group)])
            self.latents.append((np.concatenate(means), np.concatenate(logvars)))

    def micro_batch(self, concept_index, index):
        """This rank's inputs of micro-batch ``index`` of a concept.

        The noise of each sample comes from (seed, concept, global sample number), so how the
        global batch is split over ranks does not change what is drawn.
        """
        dataset, (means, logvars) = self.datasets[concept_index], self.latents[concept_index]
        rank, world, batch = self.parallel.rank, self.parallel.world_size, self.s.batch_size
        samples = dataset.sample(index, batch, rank, world)
        view_ids = [v for v, _ in samples]
        first = (index * world + rank) * batch
        sigmas, latent_noise, noise = [], [], []
        for g in range(first, first + batch):
            rng = np.random.default_rng([self.s.seed, concept_index, g])
            sigmas.append(self.sigma_sampler(1, rng)[1][0])
            latent_noise.append(rng.standard_normal(means.shape[1:]).astype(np.float32))
            noise.append(rng.standard_normal(means.shape[1:]).astype(np.float32))
        batch_dict = {"txt": [p for _, p in samples], **dataset.size_conditioning(view_ids)}
        cond = self.model.conditioner.prepare(batch_dict)
        return (Tensor(means[view_ids]), Tensor(logvars[view_ids]), Tensor(np.stack(latent_noise)),
                Tensor(np.stack(noise)), Tensor(np.asarray(sigmas, np.float32)), *cond)

    # -- loop ------------------------------------------------------------------------------------
    def train_step(self, step):
        """One optimiser step: every concept, ``gradient_accumulation_steps`` micro-batches each,
        gradients averaged over them and over ranks. Returns (mean loss, lr); a loss or gradient that is
        not finite stops the run before the update."""
        accum = self.s.gradient_accumulation_steps
        losses, grads = [], None
        for micro in range(accum):
            for c in range(len(self.s.concepts)):
                loss, g = self.loss_and_grads(*self.micro_batch(c, step * accum + micro))
                losses.append(loss)
                grads = g if grads is None else tuple(a + b for a, b in zip(grads, g))
        n = len(losses)
        grads = tuple(g / n for g in grads)
        loss = sum(losses[1:], losses[0]) / n
        *grads, loss = self.parallel.mean((*grads, loss))
        loss = float(loss.asnumpy())
        if not math.isfinite(loss):
            raise diverged(step + 1, f"the loss is {loss}")
        if not all(np.isfinite(g.asnumpy()).all() for g in grads):
            raise diverged(step + 1, "the gradient is not finite")
        lr = learning_rate(step, self.s.learning_rate, self.s.total_step, self.s.lr_warmup_steps,
                           self.s.lr_scheduler)
        self.optimizer(ms.mutable(tuple(grads)), as_lr(lr), as_lr(step + 1))
        return loss, lr

    def infer(self, step):
        """Images for each concept's fixed prompt and seed (one progression row per call), and the
        --measure_concept score."""
        if self.s.measure_concept:
            self.measure(step)
        if not self.s.infer_during_train:
            return
        sampler = make_sampler("euler", self.s.infer_steps, self.s.guidance_scale)
        for concept, dataset, out in zip(self.s.concepts, self.datasets, self.outputs):
            prompt = self.s.infer_prompt or INFER_PROMPTS[concept.learnable_property]
            prompt = prompt.format(dataset.expanded_placeholder)
            images = self.sampler.sample([prompt] * self.s.infer_images, self.s.resolution, self.s.resolution,
                                         seed=self.s.seed, sampler=sampler)
            out.save_samples(step, images)

    def measure(self, step):
        """The concept meter's reading of samples of the word's test prompts (fresh seeds), printed."""
        from gm.toyworld.concepts import CONCEPTS, measure

        s = self.s
        scores, _ = measure(self.sampler, CONCEPTS[s.measure_concept], self.datasets[0].expanded_placeholder,
                            samples=s.measure_samples, size=s.resolution, steps=s.infer_steps,
                            guidance=s.guidance_scale, seed=s.seed + 1)
        self.scores[step] = scores
        concept = CONCEPTS[s.measure_concept]
        for name, v in scores.items():
            parts = ", ".join(f"{a} {100 * v[a]:.0f} %" for a in concept.attributes)
            tqdm.write(f"step {step}: {s.measure_concept} {name}: concept {100 * v['concept']:.0f} %, with the rest of "
                       f"the prompt {100 * v['prompt']:.0f} % ({parts}) of {s.measure_samples} samples")

    def summary(self):
        s = self.s
        note = (f" (resuming at step {self.start_step})" if self.start_step
                else " (replacing the earlier run)" if s.overwrite and run_files(s.save_path) else "")
        lines = [f"model config        {s.config_path}", f"weights             {s.weight}"]
        for c, d in zip(s.concepts, self.datasets):
            init = c.initializer_file or c.initializer_token or "random"
            lines.append(f"concept             {c.placeholder_token} x {c.num_vectors} vectors (init: {init}), "
                         f"{c.learnable_property}, {c.data_path} ({d.num_images} images, {len(d.views)} views)")
        lines += [
            f"steps               {s.total_step} x batch {s.batch_size} x accumulation {s.gradient_accumulation_steps}"
            f" x {self.parallel.world_size} process(es)",
            f"learning rate       {s.learning_rate} ({s.lr_scheduler}, warm-up {s.lr_warmup_steps})",
            f"gradient clipping   {s.max_grad_norm if s.clip_grad else 'off'}",
            f"resolution          {s.resolution}",
            f"MindSpore           {ms.__version__}, {ms.get_context('device_target')}, "
            f"{'graph' if ms.get_context('mode') == 0 else 'PyNative'} mode, "
            + ("fp32" if s.amp_level == "O0" else f"mixed precision {s.amp_level} {s.amp_dtype} (VAE fp32)"),
            f"output              {s.save_path}{note}",
        ]
        print("Key settings\n" + "\n".join("  " + line for line in lines), flush=True)

    def run(self):
        """Train to ``total_step``; on SIGINT/SIGTERM save the state and stop after the current step."""
        main = self.parallel.is_main
        if main:
            self.summary()
        self.cache_latents()
        if main:
            if self.s.overwrite:
                clear_run(self.s.save_path)
            self.out.start_loss_log(self.start_step)
        previous = {sig: signal.signal(sig, self._request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        bar = tqdm(total=self.s.total_step, initial=self.start_step, desc="training", unit="step",
                   dynamic_ncols=True, disable=not main)
        step = self.start_step
        if self.sampler and step == 0:
            self.infer(0)  # the word's initial vectors: the first progression row, the score before training
        try:
            while step < self.s.total_step and not self.parallel.any(self.stop_requested):
                start = time.perf_counter()
                loss, lr = self.train_step(step)
                seconds = time.perf_counter() - start
                step += 1
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.3g}", step_s=f"{seconds:.2f}")
                bar.update(1)
                if main:
                    self.out.log_loss(step, loss, lr, seconds)
                if step % self.s.save_ckpt_interval == 0 or step == self.s.total_step:
                    self.save(step)
                    if main:
                        self.out.save_loss_curve()
                if self.sampler and (step % self.s.infer_interval == 0 or step == self.s.total_step):
                    self.infer(step)
        finally:
            bar.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if step < self.s.total_step:
            self.save(step)
            if main:
                self.out.save_loss_curve()
                print(f"stopped at step {step}; continue with --resume True", flush=True)
        return step

    def _request_stop(self, signum, frame):
        self.stop_requested = True
