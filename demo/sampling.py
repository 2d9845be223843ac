"""Streamlit app: SDXL images with learned textual-inversion words.

    streamlit run demo/sampling.py
    streamlit run demo/sampling.py -- --config configs/training/sd_xl_tiny_finetune_textual_inversion.yaml \\
        --weight checkpoints/sd_xl_tiny_random.safetensors --textual_inversion_weight runs/demo/weights/x_ti.ckpt

The sidebar's config, weights and embedding files start from these flags, else from the environment
(SDXL_CONFIG, SDXL_WEIGHT, SDXL_TI_WEIGHTS: paths joined by the OS path separator, SDXL_DEVICE,
SDXL_MS_MODE), else SDXL base. The model is loaded once and kept while the server runs.
"""
import argparse
import glob
import hashlib
import io
import os
import sys
import tempfile
import threading
import time

import streamlit as st

from gm.mindspore_in_streamlit import import_mindspore

import_mindspore()

from PIL import Image  # noqa: E402 (after import_mindspore)

from gm.build import build_model  # noqa: E402 (after import_mindspore)
from gm.cli import ArgumentParser, device_name, ms_mode  # noqa: E402 (after import_mindspore)
from gm.compile_cache import resolve, sampling_parts, use_compile_cache  # noqa: E402 (after import_mindspore)
from gm.config import load_config  # noqa: E402 (after import_mindspore)
from gm.constants import MAX_IMAGES, MAX_IMAGE_SIDE, SAMPLERS, SPACINGS  # noqa: E402 (after import_mindspore)
from gm.errors import ConfigError, UsageError, WeightFileError  # noqa: E402 (after import_mindspore)
from gm.images import make_grid  # noqa: E402 (after import_mindspore)
from gm.inference import SamplingPipeline, default_size  # noqa: E402 (after import_mindspore)
from gm.refiner import TwoStagePipeline  # noqa: E402 (after import_mindspore)
from gm.runtime import init_mindspore  # noqa: E402 (after import_mindspore)
from gm.modules.diffusionmodules.sampling import make_sampler  # noqa: E402 (after import_mindspore)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BAD_INPUT = (UsageError, ConfigError, WeightFileError)
UPLOADS = os.path.join(tempfile.gettempdir(), "sdxl_ti_uploads")


# Flags after ``--``, each with the environment variable it falls back on.
ENVIRONMENT = {"config": "SDXL_CONFIG", "weight": "SDXL_WEIGHT", "textual_inversion_weight": "SDXL_TI_WEIGHTS",
               "device_target": "SDXL_DEVICE", "ms_mode": "SDXL_MS_MODE"}
DEFAULTS = {"config": "configs/inference/sd_xl_base.yaml", "weight": "checkpoints/sd_xl_base_1.0_ms.ckpt",
            "textual_inversion_weight": [], "device_target": None, "ms_mode": 0}


def options(argv):
    """Flags after ``--``; a flag not given comes from its environment variable (:data:`ENVIRONMENT`), else
    :data:`DEFAULTS`. A bad value is a UsageError naming the flag or the variable, checked as the CLIs check it."""
    p = ArgumentParser(prog="demo/sampling.py", allow_abbrev=False)
    p.add_argument("--config")
    p.add_argument("--weight")
    p.add_argument("--textual_inversion_weight", nargs="+", action="extend")
    p.add_argument("--device_target", type=device_name)
    p.add_argument("--ms_mode", type=ms_mode)
    p.add_argument("--compile_cache")  # gm.compile_cache.resolve: else $SDXL_TI_COMPILE_CACHE, else the default
    opts = p.parse_known_args(argv)[0]
    convert = {"textual_inversion_weight": lambda v: [path for path in v.split(os.pathsep) if path],
               "device_target": device_name, "ms_mode": ms_mode}
    for key, variable in ENVIRONMENT.items():
        value = os.environ.get(variable)
        if getattr(opts, key) is None and value:
            try:
                setattr(opts, key, convert.get(key, str)(value))
            except argparse.ArgumentTypeError as e:
                raise UsageError(f"environment variable {variable}: {e}") from None
        if getattr(opts, key) is None:
            setattr(opts, key, DEFAULTS[key])
    return opts


@st.cache_resource
def setup(device_target, mode):
    """MindSpore's device and mode, once per process."""
    init_mindspore(device_target, mode)
    return True


@st.cache_resource(max_entries=1, show_spinner="Loading the model ...")
def load(config_path, weight_path):
    """(SamplingPipeline, lock, config) for a config and weights, built once and shared by every session; choosing
    other ones frees these (two SDXL models would not fit in memory)."""
    config = load_config(config_path)
    if not os.path.isfile(weight_path):
        raise UsageError(f"{weight_path}: no such weight file")
    return SamplingPipeline(build_model(config, weight_path)), threading.Lock(), config


@st.cache_resource(max_entries=1, show_spinner="Loading the refiner ...")
def load_refiner(config_path, weight_path):
    """The refiner's SamplingPipeline, built once and shared as :func:`load`'s model is."""
    if not os.path.isfile(weight_path):
        raise UsageError(f"{weight_path}: no such weight file")
    return SamplingPipeline(build_model(load_config(config_path), weight_path))


def refiner_choice():
    """The sidebar's refiner toggle: None, or (config path, weight path, switch)."""
    st.sidebar.header("Refiner")
    if not st.sidebar.toggle("Finish with the SDXL refiner", False, key="refiner"):
        return None
    return (st.sidebar.text_input("Refiner config", "configs/inference/sd_xl_refiner.yaml", key="refiner_config"),
            st.sidebar.text_input("Refiner weights", "checkpoints/sd_xl_refiner_1.0_ms.ckpt", key="refiner_weight"),
            st.sidebar.slider("Switch to the refiner at", 0.05, 0.95, 0.8, 0.05, key="refiner_switch",
                              help="share of the noise schedule the base denoises"))


def saved_upload(upload):
    """Path of an uploaded embedding file, written once under the temp folder by content hash."""
    data = upload.getvalue()
    folder = os.path.join(UPLOADS, hashlib.sha256(data).hexdigest()[:16])
    path = os.path.join(folder, os.path.basename(upload.name))
    if not os.path.isfile(path):
        os.makedirs(folder, exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    return path


def png_bytes(image):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def sidebar(opts):
    """Model and embedding choices: (config path, weight path, embedding paths)."""
    st.sidebar.header("Model")
    config_path = st.sidebar.text_input("Config", opts.config, key="config")
    weight_path = st.sidebar.text_input("Weights", opts.weight, key="weight")
    st.sidebar.header("Learned words")
    found = sorted(glob.glob("runs/**/*_ti.ckpt", recursive=True))
    choices = list(dict.fromkeys(opts.textual_inversion_weight + found))
    picked = st.sidebar.multiselect("Embedding files", choices, default=opts.textual_inversion_weight,
                                    key="embeddings")
    uploads = st.sidebar.file_uploader("Or upload embedding files", type=["ckpt", "safetensors"],
                                       accept_multiple_files=True, key="uploads")
    return config_path, weight_path, picked + [saved_upload(u) for u in uploads or []]


def settings(config, multiple):
    """The sampling controls of the main page, as a dict; sizes step by ``multiple``."""
    side = default_size(config)
    s = {"prompt": st.text_area("Prompt", "a <cat-toy> backpack", key="prompt"),
         "negative": st.text_input("Negative prompt", "", key="negative")}
    left, middle, right = st.columns(3)
    s["sampler"] = left.selectbox("Sampler", list(SAMPLERS), format_func=lambda name: SAMPLERS[name][0],
                                  key="sampler")
    s["spacing"] = left.selectbox("Noise spacing", SPACINGS, key="spacing",
                                  help="sgm: generative-models; leading: diffusers' SDXL default; karras: Karras "
                                       "et al.'s sigmas (DPM++ 2M with karras is DPM++ 2M Karras)")
    s["steps"] = middle.number_input("Steps", 1, 1000, 40, key="steps")
    s["guidance"] = middle.number_input("Guidance scale", 0.0, 50.0, 5.0, 0.5, key="guidance")
    s["seed"] = middle.number_input("Seed", 0, 2 ** 32 - 1, 42, key="seed")
    s["height"] = right.number_input("Height", multiple, MAX_IMAGE_SIDE, side, multiple, key="height")
    s["width"] = right.number_input("Width", multiple, MAX_IMAGE_SIDE, side, multiple, key="width")
    s["count"] = right.number_input("Images", 1, MAX_IMAGES, 1, key="count")
    return s


def load_embeddings(sampler, paths):
    """Give the shared model the words of ``paths`` (again: another session may have loaded other
    vectors for the same token since)."""
    for path in paths:
        sampler.load_concept(path)


def generate(sampler, lock, embeddings, s, compile_cache):
    """Sample with a progress bar; the images (uint8 [N, H, W, 3]). ``compile_cache``: (folder, key parts) of
    the compile cache, used by the server's first generation only (later ones may compile in any order)."""
    try:
        sampler.check_size(int(s["height"]), int(s["width"]))
    except ValueError as e:
        raise UsageError(str(e)) from None
    bar = st.progress(0.0, text="sampling")

    def progress(i, n):
        bar.progress(i / n, text=f"step {i}/{n}")

    method = make_sampler(s["sampler"], int(s["steps"]), float(s["guidance"]), spacing=s["spacing"])
    start = time.perf_counter()
    with lock:
        load_embeddings(sampler, embeddings)
        cache = use_compile_cache(*compile_cache)
        try:
            images = sampler.sample([s["prompt"]] * int(s["count"]), int(s["height"]), int(s["width"]),
                                    negative=s["negative"], seed=int(s["seed"]), sampler=method, callback=progress)
        finally:
            if cache:
                cache.close()
    bar.progress(1.0, text=f"{len(images)} images in {time.perf_counter() - start:.1f} s")
    return images


def show(results):
    st.image(list(results["images"]), caption=results["captions"], output_format="PNG")
    columns = st.columns(min(len(results["images"]) + 1, 4))
    for i, image in enumerate(results["images"]):
        columns[i % len(columns)].download_button(f"Download image {i + 1}", png_bytes(image), f"image_{i + 1}.png",
                                                  "image/png", key=f"download_{i}")
    if len(results["images"]) > 1:
        grid = make_grid(results["images"], len(results["images"]))
        columns[-1].download_button("Download grid", png_bytes(grid), "grid.png", "image/png", key="download_grid")


def main():
    st.set_page_config(page_title="SDXL textual inversion", layout="wide")
    st.title("SDXL with learned words")
    try:
        opts = options(sys.argv[1:])
    except BAD_INPUT as e:
        st.error(str(e))
        st.stop()
    config_path, weight_path, embeddings = sidebar(opts)
    refiner = refiner_choice()
    try:
        setup(opts.device_target, opts.ms_mode)
        sampler, lock, config = load(config_path, weight_path)
        if refiner:
            sampler = TwoStagePipeline(sampler, load_refiner(*refiner[:2]), refiner[2])
        with lock:
            load_embeddings(sampler, embeddings)
    except BAD_INPUT as e:
        st.error(str(e))
        st.stop()
    words = sampler.concepts
    st.sidebar.caption("Loaded: " + (", ".join(f"{t} ({n} vectors)" for t, n in words.items()) or "none"))
    s = settings(config, sampler.size_multiple)
    for message in sampler.prompt_warnings(s["prompt"]) + sampler.prompt_warnings(s["negative"]):
        st.warning(message)
    if st.button("Generate", type="primary", key="generate"):
        try:
            configs = [config] + ([load_config(refiner[0])] if refiner else [])
            parts = sampling_parts(configs, sampler.concepts, {**{k: v for k, v in s.items() if k != "seed"},
                                                               "refiner": refiner[2] if refiner else None})
            images = generate(sampler, lock, embeddings, s, (resolve(opts.compile_cache), parts))
        except BAD_INPUT as e:
            st.error(str(e))
            st.stop()
        st.session_state["results"] = {
            "images": images,
            "captions": [f"{s['prompt']} (seed {s['seed']}, {i + 1}/{len(images)})" for i in range(len(images))]}
    if "results" in st.session_state:
        show(st.session_state["results"])


main()
