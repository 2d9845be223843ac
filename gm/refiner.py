"""Two-stage sampling with SDXL's refiner: the base denoises the high-noise part of the schedule, the refiner
the rest (an ensemble of experts, as diffusers' ``denoising_end`` / ``denoising_start``)."""
import math

import numpy as np

from gm.errors import UsageError, WeightFileError
from gm.inference import SamplingPipeline
from gm.modules.encoders.modules import FrozenCLIPEmbedder, FrozenOpenCLIPEmbedder2
from gm.textual_inversion.embeddings import ENCODER_KEYS, load_ti

ROWS_OF = {FrozenCLIPEmbedder: ENCODER_KEYS[0], FrozenOpenCLIPEmbedder2: ENCODER_KEYS[1]}


def check_switch(switch: float, flag: str = "--refiner_switch") -> None:
    """UsageError unless ``switch`` is strictly between 0 and 1."""
    if not (isinstance(switch, (int, float)) and 0 < switch < 1):
        raise UsageError(f"{flag} {switch}: expected a number strictly between 0 and 1 (the share of the "
                         "schedule the base model denoises, e.g. 0.8)")


def switch_index(sigmas, train_sigmas, switch: float) -> int:
    """How many steps of the descending schedule ``sigmas`` the base takes: those at or above the noise level of
    training timestep ``round(T - switch T)`` (``train_sigmas``: the T levels, ascending), as diffusers'
    ``denoising_end`` keeps the timesteps at or above it (the refiner's ``denoising_start`` takes the rest)."""
    total = len(train_sigmas)
    cutoff = int(round(total - switch * total))
    if cutoff >= total:
        return 0
    return int((np.asarray(sigmas[:-1]) >= train_sigmas[cutoff]).sum())


def encoder_rows(conditioner, rows: list, source: str) -> list:
    """Of a learned word's rows (``clip_l``, ``clip_g``), those each text encoder of ``conditioner`` takes."""
    out = []
    for embedder in conditioner.text_embedders:
        key = ROWS_OF[type(embedder)]
        values = rows[ENCODER_KEYS.index(key)]
        width = embedder.width
        if values.shape[1] != width:
            raise WeightFileError(f"{source}: {key} vectors are {values.shape[1]} wide but the model's encoder "
                                  f"takes {width}")
        out.append(values)
    return out


class TwoStagePipeline:
    """Text-to-image with a base and a refiner :class:`SamplingPipeline`: one noise schedule, split at
    :func:`switch_index`; the base's latents go to the refiner as they are (no re-noising; a multistep
    sampler starts afresh, as diffusers' refiner pipeline with its own scheduler), the refiner's VAE decodes. Learned words go into both (the refiner's OpenCLIP encoder takes their ``clip_g`` rows)."""

    def __init__(self, base: SamplingPipeline, refiner: SamplingPipeline, switch: float = 0.8):
        check_switch(switch)
        self.base, self.refiner, self.switch = base, refiner, switch

    @property
    def size_multiple(self) -> int:
        """What image sides must be multiples of for both models (64 for SDXL: the refiner's UNet has 3
        downsamplings)."""
        return math.lcm(self.base.size_multiple, self.refiner.size_multiple)

    @property
    def concepts(self) -> dict:
        """{token: number of vectors} of the learned words loaded (the same in both models)."""
        return self.base.concepts

    def check_size(self, height: int, width: int) -> None:
        """ValueError unless both models take ``height`` x ``width``."""
        self.base.check_size(height, width)
        self.refiner.check_size(height, width)

    def prompt_warnings(self, prompt: str) -> list:
        """The base's :meth:`SamplingPipeline.prompt_warnings`."""
        return self.base.prompt_warnings(prompt)

    def load_concept(self, path: str) -> str:
        """Add (or replace) a file's learned word in both models; returns its token."""
        token = self.base.load_concept(path)
        rows = load_ti(path)[1]
        self.refiner.add_concept(token, encoder_rows(self.refiner.engine.conditioner, rows, path), path)
        return token

    def sample_latents(self, prompts: list, height: int, width: int, negative=None, num_steps: int = None,
                       seed: int = 0, sampler=None, callback=None):
        """The final latents [B, 4, H/8, W/8] (before the VAE), from noise drawn with ``seed`` as
        :meth:`SamplingPipeline.sample` draws it; ``callback(i, n)`` counts the steps of both stages."""
        self.check_size(height, width)
        sampler = sampler or self.base.engine.sampler
        num_steps = num_steps or sampler.num_steps
        sigmas = sampler.sigmas(num_steps)
        k = switch_index(sigmas, self.base.engine.denoiser.sigmas.asnumpy(), self.switch)
        rng = np.random.default_rng(seed)
        x = self.base.initial_noise(rng, len(prompts), height, width) * sampler.init_noise_sigma(sigmas)
        stages = ((self.base, sigmas[:k + 1], 0), (self.refiner, sigmas[k:], k))
        for pipeline, part, done in stages:
            if len(part) < 2:
                continue
            cond, uncond = pipeline.encode(prompts, height, width, negative)
            step = None if callback is None else (lambda i, n, done=done: callback(done + i, len(sigmas) - 1))
            x = sampler.run(pipeline.engine, x, part, cond, uncond, rng=rng, callback=step)
        return x

    def sample(self, prompts: list, height: int, width: int, negative=None, num_steps: int = None, seed: int = 0,
               sampler=None, callback=None) -> np.ndarray:
        """Images [B, H, W, 3] uint8 (:meth:`sample_latents` decoded by the refiner's VAE)."""
        return self.refiner.decode(self.sample_latents(prompts, height, width, negative, num_steps, seed, sampler,
                                                       callback))
