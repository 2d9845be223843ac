"""Shared test helpers: configs, tolerances, MindSpore mode switching, the tiny checkpoint, script runners.

The torch/transformers/diffusers reference models are in tests/reference.py.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY_CONFIG = os.path.join(ROOT, "configs", "inference", "sd_xl_tiny.yaml")
BASE_CONFIG = os.path.join(ROOT, "configs", "inference", "sd_xl_base.yaml")
TINY_SEED = 1  # the seed of the tiny_checkpoint fixture's random weights


def rel_err(ours, ref):
    """||ours - ref|| / ||ref|| over the whole array."""
    ours = np.asarray(ours, np.float64)
    ref = np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.linalg.norm(ours - ref) / max(np.linalg.norm(ref), 1e-30))


@pytest.fixture(scope="session", autouse=True)
def cpu_device():
    """MindSpore's device set to CPU before any test runs a kernel: after that, ``set_device`` (the ms_mode
    fixture, an in-process ``--device_target CPU``) is refused unless it was called first, and in-process
    command lines without ``--device_target`` do run kernels."""
    import mindspore as ms
    ms.set_device("CPU")


@pytest.fixture(params=[1, 0], ids=["pynative", "graph"])
def ms_mode(request):
    """Run a test in PyNative (1) and graph (0) mode on CPU."""
    import mindspore as ms
    ms.set_context(mode=request.param)
    ms.set_device("CPU")
    yield request.param
    ms.set_context(mode=1)


@pytest.fixture
def keep_mode():
    """MindSpore's execution mode as it was before the test, restored after it (the test may change it)."""
    import mindspore as ms
    mode = ms.get_context("mode")
    yield mode
    ms.set_context(mode=mode)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """Random weights (seed TINY_SEED) for configs/inference/sd_xl_tiny.yaml, the model of the tiny training
    config too, in the official single-file layout: one .safetensors file in a folder of its own. Read only."""
    from gm.checkpoints.random_weights import write_random_checkpoint

    path = str(tmp_path_factory.mktemp("tiny_checkpoint") / "tiny.safetensors")
    write_random_checkpoint(TINY_CONFIG, path, seed=TINY_SEED)
    return path


def run_script(path, *args, cwd=ROOT, timeout=600, env=None):
    """Run the repository's script ``path`` (relative to the repository, or absolute) with this Python, as a
    user does: a separate process, output captured as text. ``env``: variables added to this environment."""
    return subprocess.run([sys.executable, os.path.join(ROOT, path), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=None if env is None else {**os.environ, **env})


def run_main(capsys, main, *args):
    """A command line's ``main(argv)`` run in this process as ``gm.cli.run`` runs it (fast, no new process):
    (exit code, stdout, stderr)."""
    from gm.cli import run

    try:
        run(lambda: main(list(args)))
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def damaged(src, dst, edit):
    """Copy the safetensors file ``src`` to ``dst`` with its JSON header changed by ``edit(header)``."""
    data = open(src, "rb").read()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    header = edit(header) or header
    blob = json.dumps(header).encode()
    with open(dst, "wb") as f:
        f.write(len(blob).to_bytes(8, "little") + blob + data[8 + n:])
    return dst
