"""The official SDXL single-file layout of a model config: every key, its shape and kind."""
import numpy as np
from mindspore.nn.utils import no_init_parameters

from gm.checkpoints.weight_files import open_weights, write_safetensors
from gm.config import instantiate_from_config
from gm.errors import WeightFileError

EMBEDDERS = "conditioner.embedders."
# Buffers of the reference code, not weights, that official files hold after each text embedder's prefix
# (CLIP-L's position ids, OpenCLIP's logit scale): written by tools/random_checkpoint.py like the official
# files have them, skipped when loading, as is the denoiser's sigmas.
BUFFERS = {"FrozenCLIPEmbedder": "transformer.text_model.embeddings.position_ids",
           "FrozenOpenCLIPEmbedder2": "model.logit_scale"}
# Which SDXL model a file is, by where its text encoders are: the base has CLIP-L (Hugging Face names) first
# and OpenCLIP bigG second, the refiner OpenCLIP bigG alone.
KINDS = {"base": ("conditioner.embedders.0.transformer.", "conditioner.embedders.1.model."),
         "refiner": ("conditioner.embedders.0.model.",)}


def is_buffer(key):
    """Whether an official key is a reference-code buffer (see :data:`BUFFERS`), not a weight."""
    parts = key.split(".", 3)
    return key == "denoiser.sigmas" or (key.startswith(EMBEDDERS) and len(parts) == 4 and parts[3] in BUFFERS.values())


def model_kind(keys):
    """"base" or "refiner" (:data:`KINDS`) for the keys of a file or model, else None."""
    found = {".".join(k.split(".")[:4]) + "." for k in keys if k.startswith(EMBEDDERS)}
    for kind, prefixes in KINDS.items():
        if found == set(prefixes):
            return kind
    return None


def weight_kind(path):
    """:func:`model_kind` of a weight file (reads its index only)."""
    with open_weights(path) as reader:
        return model_kind(reader.keys())


def model_parameters(model):
    """{name: Parameter} of the weights a checkpoint must provide (textual-inversion rows excluded)."""
    return {p.name: p for p in model.get_parameters() if not p.name.endswith(".extra")}


def official_layout(config):
    """{key: (shape, "weight" | "buffer")} for a config path, without allocating the weights."""
    from gm.config import load_config

    config = load_config(config) if isinstance(config, str) else config
    with no_init_parameters():
        model = instantiate_from_config(config.model)
    layout = {name: (tuple(p.shape), "weight") for name, p in model_parameters(model).items()}
    for i, embedder in enumerate(config.model.params.conditioner_config.params.emb_models):
        name = embedder.target.rsplit(".", 1)[-1]
        if name in BUFFERS:
            shape = (1, embedder.params.get("max_length", 77)) if name == "FrozenCLIPEmbedder" else ()
            layout[f"{EMBEDDERS}{i}.{BUFFERS[name]}"] = (shape, "buffer")
    return layout


def check_layout(expected, found, path):
    """Raise WeightFileError (counts and first names) unless ``found`` {key: shape} fits ``expected``."""
    found = {k: tuple(s) for k, s in found.items() if not is_buffer(k)}
    kinds = model_kind(expected), model_kind(found)
    if None not in kinds and kinds[0] != kinds[1]:
        raise WeightFileError(f"{path}: an SDXL {kinds[1]} checkpoint, but the model config is an SDXL {kinds[0]}")
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = sorted(k for k in set(expected) & set(found) if tuple(expected[k]) != found[k])
    if not (missing or unexpected or wrong):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
    if wrong:
        k = wrong[0]
        parts.append(f"{len(wrong)} of another shape (e.g. {k}: file {list(found[k])}, model {list(expected[k])})")
    raise WeightFileError(f"{path}: does not fit the model config: " + "; ".join(parts))


def buffer_value(name, shape):
    """Values of the official file's non-weight buffers (position ids, CLIP's logit scale)."""
    if name.endswith("position_ids"):
        return np.arange(shape[-1], dtype=np.int64).reshape(shape)
    return np.asarray(np.log(1 / 0.07), np.float32)


def write_official(config, out, weight_of, dtype=np.float32, metadata=None):
    """Write a ``.safetensors`` file in the official layout of ``config``: each weight from
    ``weight_of(key, shape)`` stored as ``dtype``, the buffers as the reference code has them.

    Tensors are produced and written one at a time; returns the number of keys.
    """
    entries = []
    for name, (shape, kind) in official_layout(config).items():
        if kind == "weight":
            entries.append((name, shape, dtype, lambda n=name, s=shape: weight_of(n, s)))
        else:
            value = buffer_value(name, shape)
            entries.append((name, shape, value.dtype, lambda v=value: v))
    write_safetensors(out, entries, metadata=metadata)
    return len(entries)
