"""Learned words: placeholder tokens in both text encoders, and the ``_ti.ckpt`` files that hold them.

A concept's N vectors are N tokens ``<tok>``, ``<tok>_1`` ... ``<tok>_{N-1}`` added to both
tokenizers, with N rows appended to each encoder's embedding as its own small trainable
parameter (the frozen 49408-row tables are never copied). A prompt names the concept by
``<tok>`` alone; :func:`expand_prompt` writes out all N tokens.

A ``_ti.ckpt`` is a MindSpore checkpoint with ``clip_l`` [N, 768] (encoder 1), ``clip_g``
[N, 1280] (encoder 2), ``placeholder_token`` (str) and ``num_vectors`` (int).
"""
import re

import numpy as np

from gm.checkpoints.weight_files import write_ckpt
from gm.checks import check_value
from gm.errors import UsageError, WeightFileError
from gm.textual_inversion import formats
from gm.textual_inversion.words import check_initializer, check_word, initializer_groups, placeholder_tokens, slug

ENCODER_KEYS = ("clip_l", "clip_g")
ENCODERS = {"l": "CLIP ViT-L, encoder 1, clip_l", "g": "OpenCLIP ViT-bigG, encoder 2, clip_g"}  # --train_encoders


def expand_prompt(prompt, token, num_vectors):
    """Replace each whole ``token`` in ``prompt`` by its N tokens (unchanged for N = 1)."""
    if num_vectors == 1:
        return prompt
    expanded = " ".join(placeholder_tokens(token, num_vectors))
    return re.sub(rf"{re.escape(token)}(?!_\d)", lambda _: expanded, prompt)


def initial_rows(embedder, num_vectors, initializer_token, rng):
    """Starting rows for one encoder: ``initializer_token``'s rows (a word or phrase, spread over the
    vectors by :func:`gm.textual_inversion.words.initializer_groups`), or random rows drawn per dimension
    with the mean and spread of the existing table."""
    table = embedder.embedding.weight.asnumpy()
    if initializer_token:
        ids = check_initializer("--initializer_token", initializer_token)
        groups = initializer_groups(len(ids), num_vectors)
        return np.stack([table[[ids[j] for j in group]].mean(0) for group in groups]).astype(np.float32)
    return (table.mean(0) + rng.standard_normal((num_vectors, table.shape[1])) * table.std(0)).astype(np.float32)


def add_concept(conditioner, token, num_vectors, rows=None, initializer_token=None, seed=0,
                name="--placeholder_token"):
    """Add a concept's tokens to every text encoder; returns the new trainable parameters.

    ``rows`` (one [N, D] array per encoder, or None for an encoder) gives their values; the others are
    initialised from ``initializer_token`` or randomly. The token must be a learned word
    (:func:`gm.textual_inversion.words.check_word`) whose tokens no other learned word in the model uses;
    errors name it as ``name``.
    """
    check_value("--num_vectors", num_vectors, "count")
    check_word(name, token, num_vectors)
    tokens = placeholder_tokens(token, num_vectors)
    rng = np.random.default_rng(seed)
    params = []
    for index, embedder in enumerate(conditioner.text_embedders):
        taken = [t for t in tokens if _is_known(embedder.tokenizer, t)]
        if taken:
            raise UsageError(f"{name} {token!r}: {taken[0]!r} is a token of another learned word already in the "
                             "model; choose another word")
        given = None if rows is None else rows[index]
        values = initial_rows(embedder, num_vectors, initializer_token, rng) if given is None else given
        embedder.add_tokens(tokens, values, f"conditioner.text_embedders.{index}.{slug(token)}")
        params.append(embedder.embedding.extra)
    conditioner.learned_words[token] = num_vectors
    return params


def starting_rows(concept, widths):
    """A concept's rows from files, one entry per encoder (None: from its initializer_token or random):
    both from ``initializer_file`` (an SDXL embedding, e.g. of this word to keep training), or encoder 1's
    from ``initializer_file_l`` (a one-encoder SD 1.x embedding: SDXL's encoder 1 is SD 1.x's CLIP ViT-L/14).
    ``widths``: the model's encoder widths. One-line UsageError/WeightFileError naming the file."""
    if concept.initializer_file:
        key, path = "initializer_file", concept.initializer_file
        token, rows = load_ti(path, widths, need_word=False)  # its vectors, under our word
    elif concept.initializer_file_l:
        key, path = "initializer_file_l", concept.initializer_file_l
        found = formats.read_one_encoder(path)
        token, rows = found.token, [found.rows[0], None]
        if rows[0].shape[1] != widths[0]:
            family = f", an {found.family} embedding" if found.family != "unknown" else ""
            raise UsageError(f"{concept.label(key)} {path}: {rows[0].shape[1]}-wide vectors{family}, but the model's "
                             f"encoder 1 ({ENCODERS['l']}) takes {widths[0]}")
    else:
        return [None] * len(widths)
    if rows[0].shape[0] != concept.num_vectors:
        raise UsageError(f"{concept.label(key)} {path}: has {rows[0].shape[0]} vectors ({token}), but "
                         f"{concept.label('num_vectors')} is {concept.num_vectors}")
    return rows


def trained_encoders(name, value, concepts=()):
    """Indices of the text encoders whose rows are learned, from ``--train_encoders`` text such as ``l,g``
    (:data:`ENCODERS`); None: both, or only ``g`` when every concept's encoder-1 rows come from
    ``initializer_file_l``. UsageError naming ``name`` for anything else."""
    if value is None:
        seeded = concepts and all(getattr(c, "initializer_file_l", None) for c in concepts)
        return (1,) if seeded else (0, 1)
    names = [part.strip() for part in str(value).split(",")]
    unknown = [n for n in names if n not in ENCODERS]
    if unknown or len(set(names)) != len(names):
        what = f"unknown encoder {unknown[0]!r}" if unknown else "an encoder named twice"
        raise UsageError(f"{name} {value!r}: {what}; expected l ({ENCODERS['l']}), g ({ENCODERS['g']}) or l,g")
    return tuple(sorted(list(ENCODERS).index(n) for n in names))


def _is_known(tokenizer, token):
    try:
        tokenizer.token_to_id(token)
    except KeyError:
        return False
    return True


def concept_rows(conditioner, token, num_vectors):
    """The current rows of a concept in each encoder ([N, D] arrays)."""
    out = []
    for embedder in conditioner.text_embedders:
        first = embedder.tokenizer.token_to_id(token) - embedder.embedding.num_base
        out.append(embedder.embedding.extra.asnumpy()[first:first + num_vectors])
    return out


def save_ti(path, token, rows):
    """Write a ``_ti.ckpt`` (atomically) for ``token`` with one [N, D] array per encoder."""
    items = [(key, np.asarray(r, np.float32)) for key, r in zip(ENCODER_KEYS, rows)]
    items += [("placeholder_token", token), ("num_vectors", np.asarray(rows[0].shape[0], np.int64))]
    write_ckpt(path, items)


def load_ti(path, encoder_widths=None, need_word=True):
    """Read a learned word from an embedding file in any format of :mod:`gm.textual_inversion.formats`
    (ours, A1111/ComfyUI/kohya, diffusers, mindone): (token, [rows per encoder]); checks widths
    against ``encoder_widths`` and, if ``need_word``, that the token may be a learned word. Raises
    WeightFileError with a one-line message naming the file."""
    found = formats.read(path, need_word)
    if encoder_widths is not None:
        for key, r, width in zip(ENCODER_KEYS, found.rows, encoder_widths):
            if r.shape[1] != width:
                raise WeightFileError(f"{path}: {key} vectors are {r.shape[1]} wide but the model's encoder "
                                      f"takes {width}")
    return found.token, found.rows
