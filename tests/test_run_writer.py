"""gm.textual_inversion.writer: rank 0's RunWriter writes a run's files and messages; the other ranks' NullWriter
takes the same calls and writes nothing. No model, no training."""
import inspect
import os
from types import SimpleNamespace

import numpy as np
import pytest

from gm.parallel import SingleProcess
from gm.textual_inversion.outputs import RunOutputs
from gm.textual_inversion.settings import Concept, Settings
from gm.textual_inversion.writer import NullWriter, RunWriter, run_writer


def files(folder):
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs)


def settings(save, **extra):
    return Settings(config={}, config_path="train.yaml", weight="w.ckpt", save_path=str(save),
                    concepts=[Concept("<toy>", "data", num_vectors=2)], **extra)


def write_a_run(writer):
    """Every call the trainer makes, as a run of 2 steps saved at step 2 makes them."""
    writer.check()
    writer.message("Key settings")
    assert list(writer.progress(range(3), desc="caching latents", leave=False)) == [0, 1, 2]
    writer.start(0)
    bar = writer.progress(total=2, initial=0, desc="training", unit="step")
    for step in (1, 2):
        writer.log({"step": step, "loss": 0.5 / step, "lr": 0.1, "step_seconds": 0.2, "validation_loss": None})
        bar.update(1)
    bar.close()
    rows = [np.ones((2, 32), np.float32), np.ones((2, 64), np.float32)]
    writer.save_best(rows)
    writer.save(2, [rows], rows, [np.zeros_like(r) for r in rows * 2], (2, 0.25))
    writer.save_samples(0, 2, [np.zeros((8, 8, 3), np.uint8)] * 2)


def test_the_run_writer_writes_the_run_and_the_null_writer_nothing(tmp_path, capsys):
    for writer_class, save in ((RunWriter, tmp_path / "rank0"), (NullWriter, tmp_path / "rank1")):
        s = settings(save)
        write_a_run(RunWriter(s, [RunOutputs(s.save_path, "SD-XL-tiny", columns=("validation_loss",))])
                    if writer_class is RunWriter else NullWriter())
    assert files(tmp_path / "rank0") == ["loss.csv", "loss.png", os.path.join("samples", "progression.png"),
                                         os.path.join("samples", "step_2.png"), "train_state.ckpt",
                                         os.path.join("weights", "SD-XL-tiny_2_ti.ckpt"),
                                         os.path.join("weights", "best_ti.ckpt")]
    assert (tmp_path / "rank0" / "loss.csv").read_text().splitlines() == [
        "step,loss,lr,step_seconds,validation_loss", "1,0.500000,0.1,0.200,", "2,0.250000,0.1,0.200,"]
    assert not (tmp_path / "rank1").exists()
    out, err = capsys.readouterr()
    assert out.count("Key settings") == 1 and "training" in err and err.count("caching latents") >= 1


def test_the_null_writer_takes_every_call_of_the_run_writer():
    """The trainer calls its writer unconditionally, so both must take the same calls."""
    def calls(cls):
        return {name: inspect.signature(f) for name, f in inspect.getmembers(cls, inspect.isfunction)
                if not name.startswith("_")}

    assert calls(NullWriter) == calls(RunWriter)


@pytest.mark.parametrize("parallel,expected", [(SingleProcess(), RunWriter),
                                               (SimpleNamespace(is_main=True), RunWriter),
                                               (SimpleNamespace(is_main=False), NullWriter)])
def test_the_main_rank_writes(parallel, expected, tmp_path):
    s = settings(tmp_path)
    assert type(run_writer(parallel, s, [RunOutputs(s.save_path, "SD-XL-tiny")])) is expected
