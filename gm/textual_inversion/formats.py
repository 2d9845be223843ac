"""Learned-word files of the SDXL tools in use: recognising, reading and writing them.

Formats (the names used by ``tools/export_embedding.py --format``):

``ours``       this toolkit's ``_ti.ckpt`` (MindSpore checkpoint): ``clip_l`` [N, 768], ``clip_g``
               [N, 1280], ``placeholder_token`` (str) and ``num_vectors`` (int).
``a1111``      the SDXL embedding ``.safetensors`` of AUTOMATIC1111, ComfyUI and kohya sd-scripts:
               ``clip_l`` [N, 768] and ``clip_g`` [N, 1280]; the word is the file name
               (``cat-toy.safetensors`` is written ``cat-toy`` in prompts).
``diffusers``  what diffusers' SDXL textual-inversion script writes and ``load_textual_inversion``
               takes, once per text encoder: a folder with ``learned_embeds.safetensors``
               {token: [N, 768]} (text_encoder) and ``learned_embeds_2.safetensors`` {token: [N, 1280]}
               (text_encoder_2). Either file of a pair (also ``learned_embeds-steps-K`` /
               ``learned_embeds_2-steps-K``) may be given instead of the folder.
``mindone``    mindone's SDXL ``_ti.ckpt``: the new rows under its two encoders' embedding parameter
               names (:data:`MINDONE_KEYS`), ``placeholder_token`` and ``num_vectors``.

Rows are per encoder in SDXL's order (CLIP ViT-L first, OpenCLIP ViT-bigG second). A file made for a
one-encoder model (SD 1.x: 768-wide vectors, SD 2.x: 1024-wide) is recognised and refused by name as a
learned word; :func:`read_one_encoder` reads one to start SDXL's encoder 1 (SD 1.x uses the same CLIP
ViT-L/14 text tower).
PyTorch pickles (``.pt``/``.bin``) are refused: reading them means running their code.
"""
import os
import re
from dataclasses import dataclass, field

import numpy as np

from gm.checkpoints.weight_files import READERS, open_weights, write_ckpt, write_safetensors
from gm.errors import UsageError, WeightFileError
from gm.textual_inversion.words import RULE, word_problem

ENCODER_KEYS = ("clip_l", "clip_g")
SDXL_WIDTHS = (768, 1280)
ONE_ENCODER_FAMILIES = {768: "SD 1.x", 1024: "SD 2.x"}
MINDONE_KEYS = ("conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.embedding_table",
                "conditioner.embedders.1.model.token_embedding.embedding_table")
DIFFUSERS_FILES = ("learned_embeds.safetensors", "learned_embeds_2.safetensors")
DTYPES = {"fp32": np.float32, "fp16": np.float16}  # stored precision of written files (--dtype)
EXTENSIONS = {"a1111": ".safetensors", "ours": ".ckpt", "mindone": ".ckpt"}  # diffusers: a folder
FORMATS = {
    "ours": "this toolkit's _ti.ckpt",
    "a1111": "AUTOMATIC1111 / ComfyUI / kohya sd-scripts SDXL safetensors",
    "diffusers": "diffusers' learned_embeds pair, one file per text encoder",
    "mindone": "mindone's SDXL _ti.ckpt",
}
DTYPE_NAMES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "Float64": "float64",
               "Float32": "float32", "Float16": "float16", "BFloat16": "bfloat16"}
PICKLE_EXTENSIONS = (".pt", ".pth", ".bin")
PICKLE_MAGIC = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")
NEED = "SDXL needs clip_l [N, 768] and clip_g [N, 1280] (one set of vectors per text encoder)"
MAX_VALUES = 1 << 24  # an embedding holds at most a few hundred thousand; more is a model checkpoint


@dataclass
class StoredTensor:
    """One stored tensor: its name, file, stored dtype (numpy's name), shape and values (float32;
    None in files too large to be embeddings)."""
    name: str
    file: str
    dtype: str
    shape: tuple
    value: np.ndarray = None


@dataclass
class EmbeddingFile:
    """What an embedding file (or diffusers folder) holds.

    ``token`` and ``rows`` (one float32 [N, D] array per SDXL encoder) are set when it is usable
    here; otherwise ``problem`` says why not (with ``rows`` set when only the token is not a valid word). ``tensors`` are the stored vectors, by encoder
    (``clip_l``/``clip_g``) when the format is known, else by stored name.
    """
    path: str
    format: str = "other"
    family: str = "unknown"
    tensors: dict = field(default_factory=dict)
    token: str = None
    trained_token: str = None
    rows: list = None
    problem: str = None


def describe(path: str) -> EmbeddingFile:
    """An :class:`EmbeddingFile` for ``path`` (file or diffusers folder) in any format, usable or not.

    Raises :class:`WeightFileError` only for what cannot be read at all (missing, truncated, a pickle).
    """
    if os.path.isdir(path):
        return _describe_folder(path)
    if not os.path.isfile(path):
        raise WeightFileError(f"{path}: no such embedding file or folder")
    _refuse_pickle(path)
    content = _read(path)
    tensors, strings = content["tensors"], content["strings"]
    if content["too_large"]:
        return EmbeddingFile(path, tensors=tensors, problem=(
            f"{path}: {len(tensors)} tensors, far too many values for an embedding (a model checkpoint?); {NEED}"))
    stem = _stem(path)
    if set(ENCODER_KEYS) <= set(tensors):
        fmt = "ours" if path.lower().endswith(".ckpt") else "a1111"
        token = strings.get("placeholder_token", stem)
        found = _usable(path, fmt, token, [tensors[k] for k in ENCODER_KEYS], content["ints"].get("num_vectors"))
        found.trained_token = content["metadata"].get("placeholder_token")
        return found
    if set(MINDONE_KEYS) <= set(tensors):
        return _usable(path, "mindone", strings.get("placeholder_token", stem),
                       [tensors[k] for k in MINDONE_KEYS], content["ints"].get("num_vectors"))
    if len(tensors) == 1 and not strings and path.lower().endswith(".safetensors"):
        partner = _diffusers_partner(path)
        if partner and os.path.isfile(partner):
            return _describe_pair(path, *((partner, path) if _is_second(path) else (path, partner)))
    found = EmbeddingFile(path, tensors=tensors)
    found.family, found.problem = _other_family(path, tensors, _single_half_hint(path) if len(tensors) == 1 else "")
    return found


def read(path: str, need_word: bool = True) -> EmbeddingFile:
    """The usable :class:`EmbeddingFile` at ``path``; :class:`WeightFileError` (one line naming the
    file and, for another model's file, the model family it looks made for) otherwise.

    The file's token must be a learned word (:mod:`gm.textual_inversion.words`) unless ``need_word`` is
    False (its vectors are used under another word: exporting with a new ``--token``, initialising).
    """
    found = describe(path)
    if found.rows is None or (need_word and found.problem):
        raise WeightFileError(found.problem)
    return found


def read_one_encoder(path: str) -> EmbeddingFile:
    """The vectors of a one-text-encoder embedding (SD 1.x: CLIP ViT-L/14, SDXL's encoder 1) as
    ``rows = [[N, D]]``: a ``.safetensors``/``.ckpt`` holding one [N, D] (or [D]) tensor, such as A1111 /
    kohya ``emb_params`` or ``string_to_param.*``, or diffusers' ``learned_embeds.safetensors``
    {token: vectors} (also its folder). :class:`WeightFileError` naming the file otherwise."""
    if os.path.isdir(path):
        file = os.path.join(path, DIFFUSERS_FILES[0])
        if not os.path.isfile(file):
            raise WeightFileError(f"{path}: a folder without {DIFFUSERS_FILES[0]} (diffusers' textual-inversion "
                                  "output)")
        path = file
    if not os.path.isfile(path):
        raise WeightFileError(f"{path}: no such embedding file or folder")
    _refuse_pickle(path)
    content = _read(path)
    tensors = content["tensors"]
    if set(ENCODER_KEYS) <= set(tensors) or set(MINDONE_KEYS) <= set(tensors):
        raise WeightFileError(f"{path}: an SDXL embedding (vectors for both text encoders), not a one-encoder "
                              "(SD 1.x) file; start from it with --initializer_file")
    if content["too_large"] or len(tensors) != 1:
        names = ", ".join(list(tensors)[:3]) + (" ..." if len(tensors) > 3 else "")
        raise WeightFileError(f"{path}: expected one [N, D] tensor of vectors (emb_params, string_to_param.* or "
                              f"diffusers' {{token: vectors}}), found {len(tensors)} ({names or 'none'})")
    stored = next(iter(tensors.values()))
    rows = stored.value.reshape(1, -1) if stored.value.ndim == 1 else stored.value
    problem = _rows_problem(path, [rows], [stored.name])
    if problem:
        raise WeightFileError(problem)
    token = stored.name if stored.name not in ("emb_params", "string_to_param.*", "*") else _stem(path)
    family = ONE_ENCODER_FAMILIES.get(rows.shape[1], "unknown")
    return EmbeddingFile(path, "one encoder", family, tensors, token, rows=[rows])


def write(dst: str, token: str, rows: list, fmt: str, dtype=np.float32) -> list:
    """Write ``token``'s rows (one [N, D] array per encoder) as format ``fmt``; returns the files written.

    Every file is written atomically. ``a1111`` files carry no token (their word is the file name)
    but keep it as metadata ``placeholder_token``; ``diffusers`` writes the pair into folder ``dst``.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown embedding format {fmt!r} (one of {', '.join(FORMATS)})")
    rows = [np.asarray(r, np.float32) for r in rows]
    problem = _rows_problem(dst, rows, ENCODER_KEYS) or (None if token else f"{dst}: empty token")
    if problem:
        raise ValueError(problem)
    largest = max(float(np.abs(r).max()) for r in rows)
    if largest > np.finfo(dtype).max:
        raise WeightFileError(f"{dst}: vectors with values up to {largest:.3g} do not fit {np.dtype(dtype).name} "
                              f"(at most {float(np.finfo(dtype).max):.5g}); store them as float32 (--dtype fp32)")
    count = np.asarray(rows[0].shape[0], np.int64)
    if fmt in ("ours", "mindone"):
        names = ENCODER_KEYS if fmt == "ours" else MINDONE_KEYS
        write_ckpt(dst, [*((n, r.astype(dtype)) for n, r in zip(names, rows)),
                         ("placeholder_token", token), ("num_vectors", count)])
        return [dst]
    if fmt == "a1111":
        write_safetensors(dst, [(k, r.shape, dtype, lambda r=r: r) for k, r in zip(ENCODER_KEYS, rows)],
                          metadata={"format": "pt", "placeholder_token": token})
        return [dst]
    os.makedirs(dst, exist_ok=True)
    paths = [os.path.join(dst, name) for name in DIFFUSERS_FILES]
    for path, r in zip(paths, rows):
        write_safetensors(path, [(token, r.shape, dtype, lambda r=r: r)], metadata={"format": "pt"})
    return paths


def output_path(dst: str, fmt: str, token: str, token_given: bool = True) -> tuple:
    """(file or folder to write, the word a user writes in prompts) for ``token`` in format ``fmt`` at ``dst``
    (``--dst``): a folder gets a file named after the token; an a1111 file's word is its file name, which a
    given ``--token`` (``token_given``) must match. UsageError naming the flag otherwise."""
    is_folder = os.path.isdir(dst) or dst.endswith(("/", os.sep))
    if fmt == "diffusers":
        if os.path.isfile(dst) or dst.lower().endswith((".safetensors", ".ckpt", ".bin")):
            raise UsageError(f"--dst {dst}: diffusers' layout is a folder (it gets {' and '.join(DIFFUSERS_FILES)})")
        return dst, token
    ext = EXTENSIONS[fmt]
    if is_folder:
        name = file_word(token) if fmt == "a1111" else f"{file_word(token)}_ti"
        dst = os.path.join(dst, name + ext)
    elif not dst.lower().endswith(ext):
        raise UsageError(f"--dst {dst}: a {fmt} file ends with {ext}")
    if fmt != "a1111":
        return dst, token
    word = os.path.basename(dst)[:-len(ext)]
    if token_given and token != word and not is_folder:
        raise UsageError(f"--token {token!r}: an a1111 file's word is its file name ({word!r}); "
                         f"name the file {file_word(token)}{ext} or give a folder as --dst")
    return dst, word


def file_word(token):
    """A file name stem for an a1111 file of ``token``: ``<cat-toy>`` -> ``cat-toy`` (valid on every OS)."""
    word = token[1:-1] if token.startswith("<") and token.endswith(">") and len(token) > 2 else token
    return re.sub(r'[<>:"/\\|?*\x00-\x1f]', "_", word).strip(" .") or "embedding"


# -- reading -------------------------------------------------------------------------------------------
def _refuse_pickle(path):
    with open(path, "rb") as f:
        head = f.read(4)
    ext = os.path.splitext(path)[1].lower()
    if ext in PICKLE_EXTENSIONS or head.startswith(PICKLE_MAGIC):
        raise WeightFileError(
            f"{path}: a PyTorch pickle ({ext or 'no extension'}), which cannot be read without running its code; "
            "load it with PyTorch where you trust it and save the vectors with safetensors.torch.save_file "
            "(SDXL: clip_l [N, 768] and clip_g [N, 1280]), then pass the .safetensors file")


def _read(path):
    """Stored float tensors (as float32), strings, integer scalars and safetensors metadata of one file."""
    if os.path.splitext(path)[1].lower() not in READERS:
        raise WeightFileError(f"{path}: not an embedding file (expected .safetensors, .ckpt or a diffusers folder)")
    with open_weights(path) as reader:
        content = {"tensors": {}, "strings": {}, "ints": {}, "metadata": getattr(reader, "metadata", {})}
        floats = [k for k in reader.keys() if reader.dtype(k) in DTYPE_NAMES]
        content["too_large"] = sum(int(np.prod(reader.shape(k))) for k in floats) > MAX_VALUES
        for key in reader.keys():
            dtype, shape = reader.dtype(key), tuple(reader.shape(key))
            if key in floats:
                value = None if content["too_large"] else np.array(reader.get(key), np.float32)
                content["tensors"][key] = StoredTensor(key, path, DTYPE_NAMES[dtype], shape, value)
            elif not content["too_large"]:
                _add_other(content, key, reader.get(key))
    return content


def _add_other(content, key, value):
    """File a non-float entry (copied out of the memory map) under strings or integer scalars."""
    if isinstance(value, str):
        content["strings"][key] = value
    elif value.size == 1 and np.issubdtype(value.dtype, np.integer):
        content["ints"][key] = int(value.reshape(()))


def _stem(path):
    name = os.path.basename(os.path.normpath(path))
    return name[:-len(".safetensors")] if name.lower().endswith(".safetensors") else os.path.splitext(name)[0]


def _usable(path, fmt, token, stored, num_vectors=None):
    """An EmbeddingFile of an SDXL layout, with ``problem`` set if its values cannot be used."""
    found = EmbeddingFile(path, fmt, tensors=dict(zip(ENCODER_KEYS, stored)), token=token)
    rows = [t.value.reshape(1, -1) if t.value.ndim == 1 else t.value for t in stored]
    found.family = _sdxl_family(rows)
    names = [os.path.basename(t.file) if fmt == "diffusers" else t.name for t in stored]
    found.problem = _rows_problem(path, rows, names)
    if not found.problem and num_vectors is not None and num_vectors != rows[0].shape[0]:
        found.problem = f"{path}: num_vectors is {num_vectors} but the file holds {rows[0].shape[0]} vectors"
    if not found.problem and not token:
        found.problem = f"{path}: the file names no token (empty placeholder_token)"
    if found.problem:
        return found
    found.rows = rows
    problem = word_problem(token, rows[0].shape[0])
    if problem:
        hint = " (an a1111 file's word is its file name: rename the file)" if fmt == "a1111" else ""
        found.problem = f"{path}: its token {token!r} {problem}; a learned word is {RULE}{hint}"
    return found


def _rows_problem(path, rows, names):
    for name, r in zip(names, rows):
        if r.ndim != 2:
            return f"{path}: {name} has shape {list(r.shape)}; expected [N, D] vectors"
        if r.size == 0:
            return f"{path}: {name} holds no vectors (shape {list(r.shape)})"
        if not np.isfinite(r).all():
            return f"{path}: {name} holds NaN or infinite values"
    if len(rows) == 2 and rows[0].shape[0] != rows[1].shape[0]:
        return (f"{path}: {names[0]} has {rows[0].shape[0]} vectors but {names[1]} has {rows[1].shape[0]}; "
                "both text encoders need the same number")
    return None


def _sdxl_family(rows):
    widths = tuple(r.shape[-1] for r in rows)
    return "SDXL" if widths == SDXL_WIDTHS else f"SDXL layout ({widths[0]} + {widths[1]} wide)"


def _widths(tensors):
    return sorted({t.shape[-1] for t in tensors.values() if len(t.shape) in (1, 2)})


def _other_family(path, tensors, hint=""):
    """(family, problem) of a file that is not in an SDXL layout."""
    widths = _widths(tensors)
    if len(widths) == 1 and widths[0] in ONE_ENCODER_FAMILIES:
        family = ONE_ENCODER_FAMILIES[widths[0]]
        return family, (f"{path}: looks like an {family} embedding ({widths[0]}-wide vectors for one text "
                        f"encoder){hint}; {NEED}")
    if not tensors:
        return "unknown", f"{path}: holds no vectors; {NEED}"
    names = ", ".join(list(tensors)[:3]) + (" ..." if len(tensors) > 3 else "")
    found = ", ".join(map(str, widths[:5])) + (" ..." if len(widths) > 5 else "") or "none"
    return "unknown", (f"{path}: not an SDXL embedding this toolkit knows (tensors {names}; vector widths {found})"
                       f"{hint}; {NEED}")


# -- diffusers pairs -----------------------------------------------------------------------------------
def _is_second(path):
    return "learned_embeds_2" in os.path.basename(path)


def _diffusers_partner(path):
    """The other file of a diffusers learned_embeds pair (None if the name is not of that kind)."""
    folder, name = os.path.split(path)
    if "learned_embeds_2" in name:
        return os.path.join(folder, name.replace("learned_embeds_2", "learned_embeds", 1))
    if "learned_embeds" in name:
        return os.path.join(folder, name.replace("learned_embeds", "learned_embeds_2", 1))
    return None


def _describe_folder(path):
    first, second = (os.path.join(path, name) for name in DIFFUSERS_FILES)
    if os.path.isfile(first) and os.path.isfile(second):
        return _describe_pair(path, first, second)
    present = [f for f in (first, second) if os.path.isfile(f)]
    if len(present) == 1:
        return describe(present[0])
    pickles = sorted(f for f in os.listdir(path) if f.endswith(".bin"))
    if pickles:
        _refuse_pickle(os.path.join(path, pickles[0]))
    raise WeightFileError(f"{path}: a folder without {DIFFUSERS_FILES[0]} and {DIFFUSERS_FILES[1]} "
                          "(diffusers' SDXL textual-inversion output)")


def _describe_pair(path, first, second):
    """A diffusers pair: {token: [N, D]} for text_encoder in ``first``, for text_encoder_2 in ``second``."""
    halves = []
    for file in (first, second):
        _refuse_pickle(file)
        content = _read(file)
        if content["too_large"] or len(content["tensors"]) != 1 or content["strings"]:
            found = EmbeddingFile(path, "diffusers", tensors=content["tensors"])
            found.family, found.problem = _other_family(file, content["tensors"])
            return found
        halves.append(next(iter(content["tensors"].values())))
    tokens = [t.name for t in halves]
    if tokens[0] != tokens[1]:
        found = EmbeddingFile(path, "diffusers", tensors=dict(zip(ENCODER_KEYS, halves)))
        found.problem = f"{path}: the two files hold different tokens ({tokens[0]!r} and {tokens[1]!r})"
        return found
    return _usable(path, "diffusers", tokens[0], halves)


def _single_half_hint(path):
    partner = _diffusers_partner(path)
    if partner and not _is_second(path):
        return f", or the first half of a diffusers SDXL pair whose {os.path.basename(partner)} is not beside it"
    if partner:
        return f", or the second half of a diffusers SDXL pair whose {os.path.basename(partner)} is not beside it"
    return ""
