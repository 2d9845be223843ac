"""Convert SDXL weights to a MindSpore checkpoint for this toolkit.

    python tools/convert_weight.py --src sd_xl_base_1.0.safetensors --dst checkpoints/sd_xl_base_1.0_ms.ckpt
    python tools/convert_weight.py --src stable-diffusion-xl-base-1.0/ --dst checkpoints/sd_xl_base_1.0_ms.ckpt
    python tools/convert_weight.py --src sd_xl_refiner_1.0.safetensors --dst checkpoints/sd_xl_refiner_1.0_ms.ckpt

SRC is the official single file or a diffusers-layout folder (unet/, vae/, text_encoder/ (not for the
refiner), text_encoder_2/ with safetensors files; fp16 variants are fine). Every key is checked against
the model config before anything is written; tensors are then converted one at a time (about
one tensor in memory), and DST appears only when complete.
"""
import glob
import os
import sys


import numpy as np
from tqdm import tqdm

from gm.checkpoints.diffusers_layout import source_of
from gm.checkpoints.layout import check_layout, official_layout, weight_kind
from gm.checkpoints.weight_files import SafetensorsReader, write_ckpt
from gm.checks import check_outputs
from gm.cli import ArgumentParser, run
from gm.config import load_config
from gm.errors import UsageError, WeightFileError

DTYPES = {"fp32": np.float32, "fp16": np.float16}
BASE_CONFIG, REFINER_CONFIG = "configs/inference/sd_xl_base.yaml", "configs/inference/sd_xl_refiner.yaml"


class SingleFileSource:
    """The official single file: keys are already ours."""

    def __init__(self, path):
        self.reader = SafetensorsReader(path)
        self.path = path

    def shapes(self, keys):
        """Shapes of all tensors in the file (so unexpected ones are reported too)."""
        return {k: self.reader.shape(k) for k in self.reader.keys()}

    def get(self, key):
        return self.reader.get(key)

    def close(self):
        self.reader.close()


class DiffusersSource:
    """A diffusers folder: each official key is rebuilt from its diffusers tensor(s)."""

    def __init__(self, path, num_res_blocks, vae_levels, keys):
        self.path = path
        self.num_res_blocks, self.vae_levels = num_res_blocks, vae_levels
        self.readers = {}
        try:
            for folder in sorted({source_of(k, num_res_blocks, vae_levels)[0] for k in keys}):
                self.readers[folder] = self._open_folder(folder)
        except WeightFileError:
            self.close()
            raise

    def _open_folder(self, folder):
        directory = os.path.join(self.path, folder)
        files = sorted(glob.glob(os.path.join(directory, "*.safetensors")))
        plain = [f for f in files if not os.path.basename(f).split(".")[-2:-1] == ["fp16"]]
        files = plain or files
        if not files:
            found = "a .bin file (convert it to safetensors first)" if glob.glob(os.path.join(directory, "*.bin")) \
                else "no .safetensors file"
            raise WeightFileError(f"{directory}: {found}")
        readers = [SafetensorsReader(f) for f in files]
        return {k: r for r in readers for k in r.keys()}

    def _locate(self, key):
        folder, keys, how = source_of(key, self.num_res_blocks, self.vae_levels)
        index = self.readers[folder]
        for k in keys:
            if k not in index:
                raise WeightFileError(f"{os.path.join(self.path, folder)}: has no tensor {k} (needed for {key})")
        return index, keys, how

    def shapes(self, keys):
        """Shapes the official ``keys`` will have once rebuilt from the folder."""
        out = {}
        for key in keys:
            index, src, how = self._locate(key)
            shape = list(index[src[0]].shape(src[0]))
            if how == "concat":
                shape[0] *= len(src)
            elif how == "transpose":
                shape = shape[::-1]
            elif how == "conv1x1":
                shape = shape[:2] + [1, 1]
            out[key] = tuple(shape)
        return out

    def get(self, key):
        index, src, how = self._locate(key)
        arrays = [index[k].get(k) for k in src]
        if how == "concat":
            return np.concatenate(arrays, axis=0)
        if how == "transpose":
            return arrays[0].T
        if how == "conv1x1":
            return arrays[0].reshape(arrays[0].shape[:2] + (1, 1))
        return arrays[0]

    def close(self):
        for index in self.readers.values():
            for reader in set(index.values()):
                reader.close()


def open_source(src, config, keys):
    """The single file or diffusers folder at ``src`` (for a folder: the subfolders ``keys`` come from)."""
    if os.path.isdir(src):
        unet = config.model.params.network_config.params
        vae = config.model.params.first_stage_config.params.ddconfig
        return DiffusersSource(src, unet.num_res_blocks, len(vae.ch_mult), keys)
    if not os.path.exists(src):
        raise UsageError(f"--src {src}: no such file or folder")
    if not src.endswith(".safetensors"):
        raise UsageError(f"--src {src}: expected an .safetensors file or a diffusers folder")
    return SingleFileSource(src)


def default_config(src):
    """The model config for ``src`` when no --config is given: SDXL refiner's for a refiner file or folder (its
    one text encoder is OpenCLIP's), else SDXL base's."""
    if os.path.isdir(src):
        folders = [os.path.isdir(os.path.join(src, name)) for name in ("text_encoder", "text_encoder_2")]
        refiner = folders == [False, True]
    else:
        refiner = src.endswith(".safetensors") and os.path.isfile(src) and weight_kind(src) == "refiner"
    return REFINER_CONFIG if refiner else BASE_CONFIG


def convert(src, dst, config_path, dtype="fp32"):
    """Convert ``src`` to ``dst`` (.ckpt) for the model of ``config_path``; returns the tensor count."""
    if not dst.endswith(".ckpt"):
        raise UsageError(f"--dst {dst}: the output must be a .ckpt file")
    check_outputs([("--dst", dst)], [("--src", src), ("--config", config_path)])
    config = load_config(config_path)
    layout = {k: shape for k, (shape, kind) in official_layout(config).items() if kind == "weight"}
    source = open_source(src, config, layout)
    try:
        check_layout(layout, source.shapes(layout), src)
        target = DTYPES[dtype]
        names = sorted(layout)

        def tensors():
            for name in tqdm(names, desc="converting", unit="tensor", file=sys.stderr):
                value = source.get(name)
                with np.errstate(over="ignore"):
                    converted = np.asarray(value, dtype=target)
                if not np.isfinite(converted).all() and np.isfinite(value).all():
                    raise WeightFileError(f"{src}: tensor {name} has values beyond {np.dtype(target).name}'s range "
                                          "(they would be stored as inf); convert with --dtype fp32")
                yield name, converted

        write_ckpt(dst, tensors())
    finally:
        source.close()
    return len(layout)


def main():
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", required=True, help="sd_xl_base_1.0.safetensors, sd_xl_refiner_1.0.safetensors or a "
                                                     "diffusers-layout folder")
    parser.add_argument("--dst", required=True, help="output MindSpore checkpoint (.ckpt)")
    parser.add_argument("--config", default=None,
                        help=f"model config the weights are for (default: {REFINER_CONFIG} for a refiner file or "
                             f"folder, else {BASE_CONFIG})")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32",
                        help="dtype stored in the .ckpt (default fp32; the model computes in fp32 on CPU)")
    args = parser.parse_args()
    n = convert(args.src, args.dst, args.config or default_config(args.src), args.dtype)
    print(f"wrote {n} tensors to {args.dst}")


if __name__ == "__main__":
    run(main)
