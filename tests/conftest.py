"""Shared test helpers: configs, tolerances and MindSpore mode switching."""
import os

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY_CONFIG = os.path.join(ROOT, "configs", "inference", "sd_xl_tiny.yaml")
BASE_CONFIG = os.path.join(ROOT, "configs", "inference", "sd_xl_base.yaml")


def rel_err(ours, ref):
    """||ours - ref|| / ||ref|| over the whole array."""
    ours = np.asarray(ours, np.float64)
    ref = np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.linalg.norm(ours - ref) / max(np.linalg.norm(ref), 1e-30))


@pytest.fixture(params=[1, 0], ids=["pynative", "graph"])
def ms_mode(request):
    """Run a test in PyNative (1) and graph (0) mode on CPU."""
    import mindspore as ms
    ms.set_context(mode=request.param)
    ms.set_device("CPU")
    yield request.param
    ms.set_context(mode=1)


def diffusers_unet_config(config, state):
    """diffusers' UNet config for one of our YAML configs (as a dict), via its single-file helper.

    diffusers only recognises SDXL's "text_time" added conditioning when context_dim is 2048 or
    1280; the tiny config (96) has the same structure, so the choice is made explicit here.
    """
    from diffusers.loaders import single_file_utils as sfu

    unet = sfu.create_unet_diffusers_config_from_ldm(config, state)
    unet.update(addition_embed_type="text_time", addition_time_embed_dim=256, class_embed_type=None)
    return unet
