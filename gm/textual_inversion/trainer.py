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

import numpy as np
import mindspore as ms
from mindspore import Tensor

from gm.build import build_model
from gm.checks import check_outputs
from gm.errors import UsageError
from gm.inference import SamplingPipeline
from gm.models.autoencoder import PosteriorMoments
from gm.modules.diffusionmodules.loss import min_snr_weights
from gm.modules.diffusionmodules.sampling import make_sampler
from gm.parallel import SingleProcess
from gm.textual_inversion.dataset import TIDataset, size_conditioning
from gm.textual_inversion.embeddings import (ENCODER_KEYS, ENCODERS, add_concept, concept_rows, starting_rows,
                                             trained_encoders)
from gm.textual_inversion.outputs import RunOutputs, run_files
from gm.textual_inversion.settings import INFER_PROMPTS, best_criterion, check_settings, setting_name
from gm.textual_inversion.state import check_shapes, read_state
from gm.textual_inversion.train_step import ClippedAdamW, LossAndGrads, PreserveNorm, as_lr, learning_rate
from gm.textual_inversion.validation import ValidationSet, held_out_views
from gm.textual_inversion.writer import run_writer


def diverged(step, what):
    """The error that stops a run whose numbers are no longer finite."""
    return UsageError(f"step {step}: {what}: training diverged (try a lower --learning_rate); stopped, the "
                      "files saved before this step are kept")


def same_size(views, ids):
    """``ids`` (indices of ``views``) grouped by the views' size, in order of first appearance."""
    groups = {}
    for i in ids:
        groups.setdefault(views[i].target_size, []).append(i)
    return list(groups.values())


def stack(arrays, ids):
    """The ``arrays`` at ``ids`` (all of one shape) as one Tensor."""
    return Tensor(np.stack([arrays[i] for i in ids]))


class Trainer:
    """Builds everything from :class:`Settings` and runs the loop."""

    def __init__(self, s, parallel=None):
        """Check everything (settings, --save_path, the resume state, the images) before writing
        or building anything; then build the model and the new words' parameters."""
        check_settings(s)
        inputs = [("--weight", s.weight), ("--config", s.config_path), ("--concepts", s.concepts_path)]
        inputs += [(c.label(k), getattr(c, k)) for c in s.concepts for k in ("data_path", "initializer_file",
                                                                               "initializer_file_l", "template_file")]
        check_outputs([("--save_path", s.save_path)], inputs, kind="folder")
        self.s = s
        self.parallel = parallel or SingleProcess()
        version = s.config.get("version", "SD-XL")
        multi = len(s.concepts) > 1
        self.outputs = [RunOutputs(s.save_path, version, c.name if multi else None) for c in s.concepts]
        self.out = self.outputs[0]
        self.writer = run_writer(self.parallel, s, self.outputs)  # rank 0 writes, the others write nothing
        self.writer.check()
        state = read_state(self.out.state_path, s.concepts) if s.resume else {"step": 0}
        if state["step"] >= s.total_step:
            raise UsageError(f"--resume: the run in {s.save_path} is already at step {state['step']} "
                             f"({setting_name(s, 'total_step')} {s.total_step}); nothing to train (give a "
                             "higher --total_step to continue it)")
        self.start_step = state["step"]
        if not os.path.isfile(s.weight):
            raise UsageError(f"--weight {s.weight}: no such file (convert the official weights with "
                             "tools/convert_weight.py, or try --demo True without --weight)")
        self.datasets = [TIDataset(c.data_path, c.placeholder_token, c.num_vectors, c.learnable_property,
                                   s.resolution, center_crop=s.center_crop, flip_p=s.flip_p, repeats=s.repeats,
                                   template_file=c.template_file, seed=s.seed, name=c.label,
                                   aspect_buckets=s.aspect_buckets) for c in s.concepts]
        self.model = build_model(s.config, s.weight, s.amp_level, s.amp_dtype)
        widths = [e.width for e in self.model.conditioner.text_embedders]
        for c in s.concepts:
            params = add_concept(self.model.conditioner, c.placeholder_token, c.num_vectors,
                                 rows=starting_rows(c, widths), initializer_token=c.initializer_token, seed=s.seed)
        self.encoders = trained_encoders(setting_name(s, "train_encoders"), s.train_encoders, s.concepts)
        for index, param in enumerate(params):  # the other encoders' rows keep their starting values
            param.requires_grad = index in self.encoders
        self.params = [params[i] for i in self.encoders]
        self.loss_and_grads = LossAndGrads(self.model, self.params)
        self.optimizer = ClippedAdamW(self.params, s.betas, s.eps, s.weight_decay,
                                      s.max_grad_norm if s.clip_grad else None)
        self.embedders = self.model.conditioner.text_embedders
        # the mean norm of each encoder's ordinary word rows: beside the learned ones in loss.csv, and the
        # norm --preserve_norm holds them to
        self.word_norms = [float(np.linalg.norm(e.embedding.weight.asnumpy(), axis=1).mean()) for e in self.embedders]
        norm_of = {e.embedding.extra.name: n for e, n in zip(self.embedders, self.word_norms)}
        self.preserve_norm = PreserveNorm(self.params, [norm_of[p.name] for p in self.params]) \
            if s.preserve_norm else None
        self.criterion = best_criterion(s)
        self.best = state.get("best")  # (step, value) of the best evaluation so far
        for out in self.outputs:
            out.columns = tuple(self.log_columns())
        if s.resume:
            check_shapes(state, [tuple(p.shape) for p in self.params], self.out.state_path)
            for i, param in enumerate(self.params):
                param.set_data(Tensor(state[f"rows_{i}"]))
            self.optimizer.load_state([state[f"moment_{i}"] for i in range(2 * len(self.params))])
        self.sigma_sampler = self.model.loss_fn.sigma_sampler
        self.latents = []  # per concept: (means, logvars), one array per view
        self.validation = []  # per concept: [(inputs of one micro-batch, samples in it)]
        wanted = s.infer_during_train or s.measure_concept
        # samples and the concept meter only feed rank 0's outputs: the other ranks skip that work
        self.sampler = SamplingPipeline(self.model) if wanted and self.parallel.is_main else None
        self.scores = {}  # {step: {measure: score}} of --measure_concept
        self.stop_requested = False

    # -- state -----------------------------------------------------------------------------------
    def rows(self, concept):
        return concept_rows(self.model.conditioner, concept.placeholder_token, concept.num_vectors)

    def save(self, step):
        """Each concept's ``_ti.ckpt``, the resume state and the loss plot (:meth:`RunWriter.save`). Vectors
        that are not finite stop the run instead (every rank, so all stop alike)."""
        rows = [p.asnumpy() for p in self.params]
        if not all(np.isfinite(r).all() for r in rows):
            raise diverged(step, "the learned vectors are not finite")
        self.writer.save(step, [self.rows(c) for c in self.s.concepts], rows, self.optimizer.state(), self.best)

    def norms(self):
        """loss.csv's norm columns: each learned row's norm per encoder (rows of every concept, in concept
        order) and the mean norm of the encoder's ordinary word rows."""
        values = {}
        for key, embedder, word_norm in zip(ENCODER_KEYS, self.embedders, self.word_norms):
            for i, norm in enumerate(np.linalg.norm(embedder.embedding.extra.asnumpy(), axis=1)):
                values[f"norm_{key}_{i}"] = float(norm)
            values[f"word_norm_{key}"] = word_norm
        return values

    def log_columns(self):
        """loss.csv's columns after step, loss, lr and step_seconds."""
        columns = list(self.norms())
        columns += ["validation_loss"] if self.s.validation_samples else []
        if self.s.measure_concept:
            from gm.toyworld.concepts import CONCEPTS

            measures = CONCEPTS[self.s.measure_concept].test_prompts("")
            columns += ["concept_score"] + [f"{name}_concept" for name in measures]
        return columns

    # -- data ------------------------------------------------------------------------------------
    def cache_latents(self):
        """Posterior moments of every training view of every concept, through the VAE once; and the
        validation samples (:mod:`gm.textual_inversion.validation`) of each concept."""
        encode = PosteriorMoments(self.model.first_stage_model)
        for c, dataset in enumerate(self.datasets):
            self.latents.append(self._moments(encode, dataset.views))
            if self.s.validation_samples:
                views = held_out_views(dataset, self.s.seed)
                means, logvars = self._moments(encode, views)
                samples = ValidationSet(dataset, views, self.sigma_sampler.sigmas, self.s.validation_samples,
                                        [m.shape for m in means], self.s.seed, c)
                self.validation.append(self._validation_batches(samples, means, logvars))

    def _moments(self, encode, views, chunk=4):
        """(means, logvars) of ``views`` through the VAE, one array per view; views of one size go
        ``chunk`` at a time."""
        chunks = [ids[start:start + chunk] for ids in same_size(views, range(len(views)))
                  for start in range(0, len(ids), chunk)]
        means, logvars = [None] * len(views), [None] * len(views)
        for ids in self.writer.progress(chunks, desc="caching latents", leave=False):
            pixels = np.stack([views[i].pixels for i in ids] + [views[ids[-1]].pixels] * (chunk - len(ids)))
            mean, logvar = (m.asnumpy() for m in encode(Tensor(pixels)))
            for k, i in enumerate(ids):
                means[i], logvars[i] = mean[k], logvar[k]
        return means, logvars

    def _validation_batches(self, samples, means, logvars):
        """The validation samples as micro-batches of the training batch size (so the training graph
        serves them), of one view size each; a bucket's last, short batch is filled with copies of weight 0."""
        batch, batches = self.s.batch_size, []
        groups = same_size([samples.views[v] for v in samples.view_ids], range(len(samples)))
        for real in (group[start:start + batch] for group in groups for start in range(0, len(group), batch)):
            picked = real + [real[-1]] * (batch - len(real))
            view_ids = [samples.view_ids[j] for j in picked]
            sizes = size_conditioning([samples.views[v] for v in view_ids])
            cond = self.model.conditioner.prepare({"txt": [samples.prompts[j] for j in picked], **sizes})
            weight = np.asarray([1.0] * len(real) + [0.0] * (batch - len(real)), np.float32)
            inputs = (stack(means, view_ids), stack(logvars, view_ids),
                      Tensor(np.stack([samples.latent_noise[j] for j in picked])),
                      Tensor(np.stack([samples.noise[j] for j in picked])), Tensor(samples.sigmas[picked]),
                      Tensor(weight), *cond)
            batches.append((inputs, len(real)))
        return batches

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
            latent_noise.append(rng.standard_normal(means[view_ids[0]].shape).astype(np.float32))
            noise.append(rng.standard_normal(means[view_ids[0]].shape).astype(np.float32))
        batch_dict = {"txt": [p for _, p in samples], **dataset.size_conditioning(view_ids)}
        cond = self.model.conditioner.prepare(batch_dict)
        return (stack(means, view_ids), stack(logvars, view_ids), Tensor(np.stack(latent_noise)),
                Tensor(np.stack(noise)), Tensor(np.asarray(sigmas, np.float32)),
                Tensor(min_snr_weights(sigmas, self.s.snr_gamma)), *cond)

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
        if self.preserve_norm:
            self.preserve_norm()
        return loss, lr

    def validate(self):
        """The validation loss: mean over the concepts of the mean loss of their validation samples."""
        losses = []
        for batches in self.validation:
            total = sum(float(self.loss_and_grads(*inputs)[0].asnumpy()) * self.s.batch_size
                        for inputs, _ in batches)
            losses.append(total / sum(n for _, n in batches))
        return float(np.mean(losses))

    def evaluate(self, step):
        """The validation loss and the --measure_concept scores after ``step`` steps (printed), as loss.csv
        columns; a trained step better than every earlier one by the --best_by criterion writes each
        concept's ``best_ti.ckpt``."""
        values = {}
        if self.validation:
            values["validation_loss"] = self.validate()
            self.writer.message(f"step {step}: validation loss {values['validation_loss']:.6f}")
        if self.s.measure_concept and self.sampler:
            values.update(self.measure(step))
        lower = self.criterion == "validation_loss"  # lower is better; the concept score: higher
        value = values.get("validation_loss" if lower else "concept_score")
        if not step or value is None or not math.isfinite(value):
            return values
        if self.best is None or (value < self.best[1] if lower else value > self.best[1]):
            self.best = (step, value)
            self.writer.save_best([self.rows(c) for c in self.s.concepts])
        return values

    def sample(self, step):
        """Images for each concept's fixed prompt and seed (one progression row per call)."""
        sampler = make_sampler("euler", self.s.infer_steps, self.s.guidance_scale)
        for c, (concept, dataset) in enumerate(zip(self.s.concepts, self.datasets)):
            prompt = self.s.infer_prompt or INFER_PROMPTS[concept.learnable_property]
            prompt = prompt.format(dataset.expanded_placeholder)
            images = self.sampler.sample([prompt] * self.s.infer_images, self.s.resolution, self.s.resolution,
                                         seed=self.s.seed, sampler=sampler)
            self.writer.save_samples(c, step, images)

    def measure(self, step):
        """The concept meter's reading of samples of the word's test prompts (fresh seeds), printed; returned
        as loss.csv columns: ``concept_score`` (:func:`gm.toyworld.concepts.attribute_share`, what
        ``--best_by concept`` compares) and each test prompt's share showing the whole concept."""
        from gm.toyworld.concepts import CONCEPTS, attribute_share, measure

        s = self.s
        concept = CONCEPTS[s.measure_concept]
        scores, _ = measure(self.sampler, concept, self.datasets[0].expanded_placeholder, samples=s.measure_samples,
                            size=s.resolution, steps=s.infer_steps, guidance=s.guidance_scale, seed=s.seed + 1)
        self.scores[step] = scores
        for name, v in scores.items():
            parts = ", ".join(f"{a} {100 * v[a]:.0f} %" for a in concept.attributes)
            self.writer.message(f"step {step}: {s.measure_concept} {name}: concept {100 * v['concept']:.0f} %, "
                                f"with the rest of the prompt {100 * v['prompt']:.0f} % ({parts}) of "
                                f"{s.measure_samples} samples")
        return {"concept_score": attribute_share(concept, scores),
                **{f"{name}_concept": v["concept"] for name, v in scores.items()}}

    def summary(self):
        """The run's key settings, as printed at its start."""
        s = self.s
        note = (f" (resuming at step {self.start_step})" if self.start_step
                else " (replacing the earlier run)" if s.overwrite and run_files(s.save_path) else "")
        used = sorted({b for d in self.datasets for b in d.buckets})
        buckets = ", aspect-ratio buckets " + ", ".join(f"{w}x{h}" for h, w in used) if s.aspect_buckets else ""
        lines = [f"model config        {s.config_path}", f"weights             {s.weight}"]
        for c, d in zip(s.concepts, self.datasets):
            init = c.initializer_file or c.initializer_token or "random"
            if c.initializer_file_l:
                init = f"encoder 1 from {c.initializer_file_l}, encoder 2 from {c.initializer_token or 'random'}"
            lines.append(f"concept             {c.placeholder_token} x {c.num_vectors} vectors (init: {init}), "
                         f"{c.learnable_property}, {c.data_path} ({d.num_images} images, {len(d.views)} views)")
        lines += [
            f"steps               {s.total_step} x batch {s.batch_size} x accumulation {s.gradient_accumulation_steps}"
            f" x {self.parallel.world_size} process(es)",
            "trained encoders    " + ", ".join(f"{name} ({what})" for i, (name, what) in enumerate(ENCODERS.items())
                                               if i in self.encoders),
            f"learning rate       {s.learning_rate} ({s.lr_scheduler}, warm-up {s.lr_warmup_steps})",
            f"gradient clipping   {s.max_grad_norm if s.clip_grad else 'off'}",
            "loss                eps MSE" + (f", min-SNR weights (gamma {s.snr_gamma})" if s.snr_gamma else ""),
            "vector norms        " + ("rescaled to the ordinary words' mean after each step" if s.preserve_norm
                                      else "free"),
            f"validation          {s.validation_samples} held-out samples per concept every {s.infer_interval} steps"
            if s.validation_samples else "validation          off",
            f"best weights        by {self.criterion} (best_ti.ckpt)" if self.criterion else "best weights        -",
            f"resolution          {s.resolution}{buckets}",
            f"MindSpore           {ms.__version__}, {ms.get_context('device_target')}, "
            f"{'graph' if ms.get_context('mode') == 0 else 'PyNative'} mode, "
            + ("fp32" if s.amp_level == "O0" else f"mixed precision {s.amp_level} {s.amp_dtype} (VAE fp32)"),
            f"output              {s.save_path}{note}",
        ]
        return "Key settings\n" + "\n".join("  " + line for line in lines)

    def run(self):
        """Train to ``total_step``; on SIGINT/SIGTERM save the state and stop after the current step."""
        self.writer.message(self.summary())
        self.cache_latents()
        self.writer.start(self.start_step)
        previous = {sig: signal.signal(sig, self._request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        bar = self.writer.progress(total=self.s.total_step, initial=self.start_step, desc="training", unit="step",
                                   dynamic_ncols=True)
        step = self.start_step
        if step == 0:  # the word's initial vectors: the scores before training, the first progression row
            self.evaluate(0)
            if self.sampler and self.s.infer_during_train:
                self.sample(0)
        try:
            while step < self.s.total_step and not self.parallel.any(self.stop_requested):
                start = time.perf_counter()
                loss, lr = self.train_step(step)
                seconds = time.perf_counter() - start
                step += 1
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.3g}", step_s=f"{seconds:.2f}")
                bar.update(1)
                due = step % self.s.infer_interval == 0 or step == self.s.total_step
                values = self.evaluate(step) if due else {}
                self.writer.log({"step": step, "loss": loss, "lr": lr, "step_seconds": seconds, **self.norms(),
                                 **values})
                if step % self.s.save_ckpt_interval == 0 or step == self.s.total_step:
                    self.save(step)
                if due and self.sampler and self.s.infer_during_train:
                    self.sample(step)
        finally:
            bar.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if step < self.s.total_step:
            self.save(step)
            self.writer.message(f"stopped at step {step}; continue with --resume True")
        return step

    def _request_stop(self, signum, frame):
        self.stop_requested = True
