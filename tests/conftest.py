"""Shared test helpers: configs, tolerances and MindSpore mode switching."""
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

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
