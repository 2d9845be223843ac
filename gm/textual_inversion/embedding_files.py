"""Reading learned-embedding files for sampling, with a clear error for files made for another model."""
import os

from gm.textual_inversion.embeddings import ENCODER_KEYS, load_ti
from gm.weight_files import WeightFileError, open_weights

# Width of the single text encoder of the SD versions whose embedding files people mistake for SDXL's.
OTHER_MODELS = {768: "SD 1.x", 1024: "SD 2.x"}
SDXL_WIDTHS = (768, 1280)
FLOAT_DTYPES = {"F16", "BF16", "F32", "F64", "Float16", "BFloat16", "Float32", "Float64"}


def read_embedding(path, encoder_widths):
    """(token, [rows per encoder]) of a ``_ti.ckpt``, checked against the model's encoder widths (if given).

    A file without ``clip_l``/``clip_g`` gets a WeightFileError that says which model it looks made
    for, from the width of its vectors (768: SD 1.x, 1024: SD 2.x).
    """
    if not os.path.isfile(path):
        raise WeightFileError(f"{path}: no such embedding file")
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".ckpt", ".safetensors"):
        pickle = " (a PyTorch pickle, as SD 1.x/2.x embeddings are)" if ext in (".pt", ".bin") else ""
        raise WeightFileError(f"{path}: not a _ti.ckpt embedding file{pickle}")
    with open_weights(path) as reader:
        if not all(k in reader.keys() for k in ENCODER_KEYS):
            raise WeightFileError(_other_model_message(path, reader, encoder_widths))
    return load_ti(path, encoder_widths)


def _other_model_message(path, reader, encoder_widths):
    widths = sorted({reader.shape(k)[-1] for k in reader.keys()
                     if reader.dtype(k) in FLOAT_DTYPES and len(reader.shape(k)) in (1, 2)})
    need = ("this model" if encoder_widths else "SDXL") + " needs " + " and ".join(
        f"{k} [N, {w}]" for k, w in zip(ENCODER_KEYS, encoder_widths or SDXL_WIDTHS))
    if len(widths) == 1 and widths[0] in OTHER_MODELS:
        return (f"{path}: looks like an {OTHER_MODELS[widths[0]]} embedding ({widths[0]}-wide vectors for one "
                f"text encoder); {need}, one set per text encoder")
    found = ", ".join(map(str, widths[:5])) + (" ..." if len(widths) > 5 else "") or "none"
    return f"{path}: not an embedding for SDXL's two text encoders (vector widths found: {found}); {need}"
