"""Every command line reports a flag it cannot parse in one ``error: ...`` line, exit code 1, as any other
bad input (gm.cli.ArgumentParser); device and mode flags are checked the same way everywhere."""
import argparse
import os

import pytest

from conftest import ROOT, TINY_CONFIG as TINY, run_script

from gm.cli import ArgumentParser, device_name, ms_mode
from gm.errors import UsageError


@pytest.mark.parametrize("script,args,expected", [
    ("train_textual_inversion.py", ["--ms_mode", "3"], "argument --ms_mode: '3': expected 0 (graph mode) or 1"),
    ("train_textual_inversion.py", ["--total_step", "abc"], "argument --total_step: invalid int value: 'abc'"),
    ("train_textual_inversion.py", ["--device_target", "nonsense"],
     "argument --device_target: 'nonsense': expected one of CPU, GPU, Ascend"),
    ("train_textual_inversion.py", ["--resume", "maybe"], "argument --resume: expected True or False, got 'maybe'"),
    ("demo/sampling_without_streamlit.py", ["--sampler", "plms"], "argument --sampler: invalid choice: 'plms'"),
    ("demo/sampling_without_streamlit.py", ["--H", "1.5"], "argument --H: invalid int value: '1.5'"),
    ("tools/export_embedding.py", ["--src", "x.ckpt"], "the following arguments are required: --format, --dst"),
    ("tools/inspect_embedding.py", [], "the following arguments are required: FILE"),
    ("tools/random_checkpoint.py", ["--config", "c.yaml", "--out", "o.safetensors", "--dtype", "fp8"],
     "argument --dtype: invalid choice: 'fp8'"),
    ("tools/convert_weight.py", ["--src", "a", "--dst", "b.ckpt", "--bogus"], "unrecognized arguments: --bogus"),
    ("tools/make_demo_dataset.py", ["--out"], "argument --out: expected one argument"),
    ("tools/check_mindone_interop.py", ["--work"], "argument --work: expected one argument"),
])
def test_every_cli_reports_a_bad_flag_in_one_line(script, args, expected, tmp_path):
    result = run_script(script, *args, cwd=tmp_path, timeout=300)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr
    assert "usage:" not in result.stderr and "Traceback" not in result.stderr
    assert os.listdir(tmp_path) == []


def test_help_still_works(tmp_path):
    result = run_script("tools/export_embedding.py", "--help", cwd=tmp_path, timeout=300)
    assert result.returncode == 0 and "usage:" in result.stdout and result.stderr == ""


def test_parser_raises_usage_error_in_process():
    p = ArgumentParser(prog="x")
    p.add_argument("--n", type=int)
    with pytest.raises(UsageError, match=r"^argument --n: invalid int value: 'a' \(see x --help\)$"):
        p.parse_args(["--n", "a"])


def test_device_and_mode_values():
    """``--device_target`` takes CPU, GPU and Ascend in any case; ``--ms_mode`` 0 or 1."""
    assert [device_name(v) for v in ("cpu", "CPU", " Gpu", "ascend")] == ["CPU", "CPU", "GPU", "Ascend"]
    assert [ms_mode(v) for v in ("0", "1", 1)] == [0, 1, 1]
    for bad in ("nonsense", "", "npu"):
        with pytest.raises(argparse.ArgumentTypeError, match="expected one of CPU, GPU, Ascend"):
            device_name(bad)
    for bad in ("2", "abc", "-1", "0.5"):
        with pytest.raises(argparse.ArgumentTypeError, match="expected 0"):
            ms_mode(bad)


def test_unusable_device_in_training_is_one_line(tmp_path):
    """A device this MindSpore has no backend for: one error line, without MindSpore's own probe log."""
    result = run_script("train_textual_inversion.py", "--device_target", "gpu", "--data_path",
                        os.path.join(ROOT, "datasets", "demo_toy"), "--save_path", str(tmp_path / "run"),
                        cwd=tmp_path, timeout=300)
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: --device_target GPU: not usable with this MindSpore"), result.stderr
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("script,args,expected", [
    ("tools/random_checkpoint.py", ["--config", "{tiny}", "--out", "r.safetensors", "--seed", "-1"],
     "--seed -1: expected an integer of at least 0"),
    ("tools/random_checkpoint.py", ["--config", "{tiny}", "--out", "blocker/r.safetensors"],
     "--out blocker/r.safetensors: cannot write there (blocker is not a writable folder)"),
    ("tools/convert_weight.py", ["--src", "{weights}", "--dst", "blocker/x.ckpt", "--config", "{tiny}"],
     "--dst blocker/x.ckpt: cannot write there (blocker is not a writable folder)"),
    ("tools/export_embedding.py", ["--src", "{ti}", "--format", "diffusers", "--dst", "blocker/out"],
     "--dst blocker/out: cannot write there (blocker is not a writable folder)"),
    ("tools/make_demo_dataset.py", ["--out", "blocker"], "--out blocker: is a file (expected a folder)"),
    ("tools/make_demo_dataset.py", ["--out", ""], "--out '': expected a folder"),
])
def test_outputs_that_cannot_be_written_are_one_line(script, args, expected, tmp_path, tmp_path_factory,
                                                     tiny_checkpoint):
    """An output under a file, in a folder that cannot be written, or empty: refused before any work, with
    one line naming the flag (gm.checks.check_outputs); a bad seed likewise."""
    import numpy as np

    from gm.textual_inversion import formats

    inputs = tmp_path_factory.mktemp("inputs")
    ti = str(inputs / "w_ti.ckpt")
    formats.write(ti, "<w>", [np.ones((1, 32), np.float32), np.ones((1, 64), np.float32)], "ours")
    (tmp_path / "blocker").write_text("a file")
    result = run_script(script, *[a.format(tiny=TINY, weights=tiny_checkpoint, ti=ti) for a in args],
                        cwd=tmp_path, timeout=300)
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and expected in line, result.stderr
    assert os.listdir(tmp_path) == ["blocker"] and (tmp_path / "blocker").read_text() == "a file"


def test_a_write_that_fails_late_is_one_error_and_leaves_nothing(tmp_path):
    """atomic_output, the one writer of output files: a folder that cannot be made or written (here: under a
    file) is a UsageError naming the file, and no temporary file is left behind."""
    import numpy as np

    from gm.checkpoints.weight_files import write_ckpt

    (tmp_path / "blocker").write_text("a file")
    target = str(tmp_path / "blocker" / "sub" / "x.ckpt")
    with pytest.raises(UsageError, match=f"^{target}: cannot write it"):
        write_ckpt(target, [("a", np.ones(3, np.float32))])
    assert os.listdir(tmp_path) == ["blocker"]


def _imported_modules(path):
    import ast

    tree = ast.parse(open(path).read(), path)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_the_library_never_imports_the_cli():
    """gm/ (the library) imports nothing from gm/cli.py (the CLIs' plumbing); the errors and constants
    every layer shares import neither argparse nor MindSpore."""
    import glob

    library = [p for p in glob.glob(os.path.join(ROOT, "gm", "**", "*.py"), recursive=True)
               if os.path.relpath(p, ROOT) != os.path.join("gm", "cli.py")]
    assert len(library) > 30
    offenders = [os.path.relpath(p, ROOT) for p in library if "gm.cli" in _imported_modules(p)]
    assert offenders == []
    for shared in ("errors.py", "constants.py"):
        imported = _imported_modules(os.path.join(ROOT, "gm", shared))
        assert not {m for m in imported if m.split(".")[0] in ("argparse", "mindspore")}, shared


def test_the_toy_weights_with_another_models_config_are_one_line(capsys, tmp_path, keep_mode):
    """The toy model's file given with the tiny config: the layout error, one line naming the file; nothing written."""
    from conftest import run_main
    from train_textual_inversion import main

    save = tmp_path / "run"
    code, _, err = run_main(capsys, main, "--config", os.path.join(ROOT, "configs/training/sd_xl_tiny_finetune_"
                                                                  "textual_inversion.yaml"),
                            "--weight", os.path.join(ROOT, "checkpoints/sd_xl_toy.safetensors"), "--data_path",
                            os.path.join(ROOT, "datasets/demo_toy"), "--save_path", str(save), "--device_target", "CPU")
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: ")
    assert "sd_xl_toy.safetensors: does not fit the model config" in lines[0]
    assert not save.exists()
