"""Sampling images from prompts with a DiffusionEngine: text-to-image, image-to-image, learned words."""
import re

import numpy as np
from mindspore import Tensor, nn, ops

from gm.errors import UsageError
from gm.modules.encoders.prompt_weights import parse_weights
from gm.textual_inversion.embeddings import add_concept, expand_prompt, load_ti
from gm.textual_inversion.words import placeholder_tokens

AESTHETIC_SCORES = (6.0, 2.5)  # the refiner's aesthetic score for prompts and for negative prompts (sgm, diffusers)
PLACEHOLDER = re.compile(r"<[^<>|\s]+>")


def default_size(config):
    """Image side by default: the training config's resolution, else SDXL's 1024."""
    return int((config.get("train") or {}).get("resolution", 1024))


def condition_batch(prompts: list, height: int, width: int, crop: tuple = (0, 0),
                    original_size: tuple = None, aesthetic_score: float = AESTHETIC_SCORES[0]) -> dict:
    """The conditioner's batch for prompts at a target size (SDXL's size/crop conditioning; the refiner's
    aesthetic score)."""
    n = len(prompts)
    original = original_size or (height, width)
    return {
        "txt": list(prompts),
        "original_size_as_tuple": np.tile(np.asarray(original, np.float32), (n, 1)),
        "crop_coords_top_left": np.tile(np.asarray(crop, np.float32), (n, 1)),
        "target_size_as_tuple": np.tile(np.asarray((height, width), np.float32), (n, 1)),
        "aesthetic_score": np.full((n, 1), aesthetic_score, np.float32),
    }


def strength_sigmas(sigmas, strength):
    """The tail of a descending schedule (final 0 included) that image-to-image runs, as sgm's
    Img2ImgDiscretizationWrapper: the last ``max(int(strength * len(sigmas)), 1)`` sigmas."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    return sigmas[len(sigmas) - max(int(strength * len(sigmas)), 1):]


def to_uint8(images) -> np.ndarray:
    """Decoded images [B, 3, H, W] in [-1, 1] -> uint8 [B, H, W, 3]."""
    images = ((images.asnumpy().clip(-1, 1) + 1) * 127.5).round().astype(np.uint8)
    return images.transpose(0, 2, 3, 1)


class _Embed(nn.Cell):
    """The conditioner as a top-level cell of its own: a fresh instance compiles a fresh graph."""

    def __init__(self, conditioner):
        super().__init__(auto_prefix=False)
        self.conditioner = conditioner

    def construct(self, *inputs):
        return self.conditioner(*inputs)


class _Encode(nn.Cell):
    """Images in [-1, 1] -> scaled latents (posterior mean)."""

    def __init__(self, engine):
        super().__init__(auto_prefix=False)
        self.engine = engine

    def construct(self, x):
        return self.engine.encode_first_stage(x)


class _Decode(nn.Cell):
    """Scaled latents -> images in [-1, 1]."""

    def __init__(self, engine):
        super().__init__(auto_prefix=False)
        self.engine = engine

    def construct(self, z):
        return self.engine.decode_first_stage(z)


class SamplingPipeline:
    """Text-to-image and image-to-image sampling with classifier-free guidance and learned words.

    Every network runs through a top-level cell compiled once (graph mode) and reused; adding a
    learned word builds a fresh conditioner cell, since a compiled graph would not see new rows.
    """

    def __init__(self, engine):
        self.engine = engine
        self.engine.set_train(False)
        self._embed = _Embed(engine.conditioner)
        self._encode = _Encode(engine)
        self._decode = _Decode(engine)
        # A model conditioned on an aesthetic score (SDXL's refiner) embeds an empty negative prompt as text, as
        # sgm's refiner sampling and diffusers' refiner config (force_zeros_for_empty_prompt: false) do.
        self.zero_empty_negative = "aesthetic_score" not in [e.input_key for e in engine.conditioner.embedders]

    @property
    def size_multiple(self) -> int:
        """What image sides must be multiples of (32 for SDXL)."""
        return self.engine.size_multiple

    # -- learned words -----------------------------------------------------------------------------
    @property
    def encoder_widths(self) -> list:
        """Width of each text encoder's token embedding (what a learned vector must have)."""
        return [e.width for e in self.engine.conditioner.text_embedders]

    @property
    def concepts(self) -> dict:
        """{token: number of vectors} of the learned words in the model, in the order added."""
        return dict(self.engine.conditioner.learned_words)

    def load_concept(self, path: str) -> str:
        """Add (or replace) the learned word of an embedding file (any format :func:`load_ti` reads); returns
        its token."""
        token, rows = load_ti(path, self.encoder_widths)
        self.add_concept(token, rows, path)
        return token

    def add_concept(self, token: str, rows: list, source: str = "embedding") -> None:
        """Give ``token`` the vectors ``rows`` (one [N, D] array per encoder).

        A token loaded before with the same N gets the new values; ``source`` names the origin in errors.
        """
        num_vectors = rows[0].shape[0]
        loaded = self.concepts.get(token)
        if loaded is not None:
            if loaded != num_vectors:
                raise UsageError(f"{source}: {token} is loaded already with {loaded} vectors; this file has "
                                 f"{num_vectors} (restart to swap it)")
            self._set_rows(token, rows)
            return
        add_concept(self.engine.conditioner, token, num_vectors, rows=rows, name=f"{source}: its token")
        self._embed = _Embed(self.engine.conditioner)

    def _set_rows(self, token, rows):
        for embedder, values in zip(self.engine.conditioner.text_embedders, rows):
            table = embedder.embedding.extra
            first = embedder.tokenizer.token_to_id(token) - embedder.embedding.num_base
            data = table.asnumpy().copy()
            data[first:first + len(values)] = values
            table.set_data(Tensor(data))

    # -- prompts -----------------------------------------------------------------------------------
    def expand(self, prompt: str) -> str:
        """The prompt with every learned word written as its N tokens (words written out already stay)."""
        for token, n in self.concepts.items():
            prompt = expand_prompt(prompt.replace(" ".join(placeholder_tokens(token, n)), token), token, n)
        return prompt

    def prompt_warnings(self, prompt: str) -> list:
        """Messages about a prompt: placeholders with no learned word loaded, weight syntax read literally
        (:mod:`gm.modules.encoders.prompt_weights`), learned words too long for one chunk of 75 tokens."""
        concepts = self.concepts
        messages = []
        for word in dict.fromkeys(PLACEHOLDER.findall(prompt)):
            if word not in concepts:
                loaded = ", ".join(concepts) or "none"
                messages.append(f"{word} looks like a learned word but no embedding is loaded for it "
                                f"(loaded: {loaded}); it is read as ordinary text")
        messages += parse_weights(prompt)[1]
        size = self.engine.conditioner.text_embedders[0].tokenizer.max_length - 2
        for word, n in concepts.items():
            if n > size and word in prompt:
                messages.append(f"{word} has {n} vectors, more than the {size} tokens CLIP reads at once; "
                                "it is split across chunks of the prompt")
        return messages

    def embed(self, prompts: list, height: int, width: int, num_chunks: int = 1,
              aesthetic_score: float = AESTHETIC_SCORES[0]) -> tuple:
        """(context, vector) for prompts (learned words expanded, weights applied) at a target size.

        A prompt of K chunks of 75 tokens (:mod:`gm.modules.encoders.prompt_chunks`) has a context of
        77 K tokens; all prompts get the same K, at least ``num_chunks``, the shorter ones padded with empty
        chunks. The vector's pooled text is that of each prompt's first chunk.
        """
        conditioner = self.engine.conditioner
        inputs, weights = conditioner.prepare_prompts(
            condition_batch([self.expand(p) for p in prompts], height, width, aesthetic_score=aesthetic_score),
            num_chunks)
        return conditioner.join_chunks(*self._embed(*inputs), weights)

    def encode(self, prompts, height, width, negative=None):
        """(cond, uncond) as (context, vector) pairs; an empty negative prompt gives zero text embeddings,
        as sgm's force_zero_embeddings and diffusers' force_zeros_for_empty_prompt (not for the refiner:
        :attr:`zero_empty_negative`). Negative prompts get the refiner's negative aesthetic score.

        ``negative`` is one string for all prompts or one per prompt; prompts and negative prompts get the
        same number of chunks (the shorter padded with empty ones), as guidance batches them.
        """
        if isinstance(negative, str):
            negative = [negative] * len(prompts)
        if self.zero_empty_negative and (negative is None or all(not p for p in negative)):
            cond = self.embed(prompts, height, width)
            context, vector = cond
            pooled = self.engine.conditioner.pooled_dim  # the text part of the vector; the size part stays
            vector = ops.cat([ops.zeros_like(vector[:, :pooled]), vector[:, pooled:]], axis=1)
            return cond, (ops.zeros_like(context), vector)
        negative = negative or [""] * len(prompts)
        k = max(self.engine.conditioner.num_chunks(self.expand(p)) for p in [*prompts, *negative])
        return self.embed(prompts, height, width, k), self.embed(negative, height, width, k, AESTHETIC_SCORES[1])

    # -- images ------------------------------------------------------------------------------------
    def decode(self, z) -> np.ndarray:
        """Scaled latents [B, 4, h, w] -> images [B, H, W, 3] uint8."""
        return to_uint8(self._decode(z))

    def initial_noise(self, rng, count: int, height: int, width: int) -> Tensor:
        """Unit-variance latent noise float32 [count, C, height / f, width / f] drawn from ``rng`` (f: the VAE's
        downsampling factor)."""
        vae = self.engine.first_stage_model
        f = vae.downsampling_factor
        return _normal(rng, (count, vae.embed_dim, height // f, width // f))

    def check_size(self, height, width):
        """ValueError unless both sides are positive multiples of :attr:`size_multiple`."""
        m = self.size_multiple
        if height % m or width % m or height < m or width < m:
            raise ValueError(f"height and width must be positive multiples of {m} for this model, "
                             f"got {height}x{width}")

    def sample(self, prompts: list, height: int, width: int, negative: list = None, num_steps: int = None,
               seed: int = 0, sampler=None, callback=None) -> np.ndarray:
        """Images [B, H, W, 3] uint8 for the prompts, from noise drawn with ``seed``."""
        self.check_size(height, width)
        sampler = sampler or self.engine.sampler
        cond, uncond = self.encode(prompts, height, width, negative)
        rng = np.random.default_rng(seed)
        noise = self.initial_noise(rng, len(prompts), height, width)
        x = sampler(self.engine, noise, cond, uncond, num_steps=num_steps, rng=rng, callback=callback)
        return to_uint8(self._decode(x))

    def img2img(self, prompts, image, strength, negative=None, num_steps=None, seed=0, sampler=None,
                callback=None):
        """Images [B, H, W, 3] uint8 made from ``image`` (uint8 [H, W, 3]) for the prompts.

        As sgm: the image's latent (posterior mean) is noised to the first sigma of the schedule's
        tail kept by :func:`strength_sigmas` and sampled down that tail; strength 1 keeps it all.
        """
        image = np.asarray(image, np.uint8)
        height, width = image.shape[:2]
        self.check_size(height, width)
        sampler = sampler or self.engine.sampler
        sigmas = strength_sigmas(sampler.sigmas(num_steps), strength)
        cond, uncond = self.encode(prompts, height, width, negative)
        pixels = Tensor((image.astype(np.float32) / 127.5 - 1.0).transpose(2, 0, 1)[None])
        z = ops.tile(self._encode(pixels), (len(prompts), 1, 1, 1))
        rng = np.random.default_rng(seed)
        x = z + _normal(rng, z.shape) * float(sigmas[0])
        x = sampler.run(self.engine, x, sigmas, cond, uncond, rng=rng, callback=callback)
        return to_uint8(self._decode(x))


def _normal(rng, shape):
    return Tensor(rng.standard_normal(shape).astype(np.float32))
