"""gm.textual_inversion.writer: rank 0's RunWriter writes a run's files and messages; the other ranks' NullWriter
takes the same calls and writes nothing. gm.textual_inversion.tensorboard_log's event files, read back by
TensorBoard. No model, no training."""
import inspect
import math
import os
from types import SimpleNamespace

import mindspore  # noqa: F401  (before tensorboard: imported after it, MindSpore's protobuf descriptors clash)
import numpy as np
import pytest

from gm.parallel import SingleProcess
from gm.textual_inversion.outputs import RunOutputs
from gm.textual_inversion.settings import Concept, Settings
from gm.textual_inversion.tensorboard_log import EventLog
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
        s = settings(save, log_with="tensorboard")
        write_a_run(RunWriter(s, [RunOutputs(s.save_path, "SD-XL-tiny", columns=("validation_loss",))])
                    if writer_class is RunWriter else NullWriter())
    written = files(tmp_path / "rank0")
    events = [f for f in written if f.startswith(os.path.join("logs", "events.out.tfevents."))]
    assert len(events) == 1
    assert scalars(tmp_path / "rank0" / "logs") == {"loss": [(1, 0.5), (2, 0.25)], "lr": [(1, 0.1), (2, 0.1)],
                                                    "step_seconds": [(1, 0.2), (2, 0.2)]}
    assert [f for f in written if f not in events] == [
        "loss.csv", "loss.png", os.path.join("samples", "progression.png"), os.path.join("samples", "step_2.png"),
        "train_state.ckpt", os.path.join("weights", "SD-XL-tiny_2_ti.ckpt"), os.path.join("weights", "best_ti.ckpt")]
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


def test_overwrite_removes_the_earlier_event_files(tmp_path):
    """--overwrite True: the earlier run's event files go with its other files when the run starts writing."""
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "events.out.tfevents.1000000000.host").write_bytes(b"old")
    (tmp_path / "logs" / "notes.txt").write_text("mine")
    s = settings(tmp_path, log_with="tensorboard", overwrite=True)
    writer = RunWriter(s, [RunOutputs(s.save_path, "SD-XL-tiny")])
    writer.start(0)
    assert sorted(os.listdir(tmp_path / "logs")) == sorted([os.path.basename(writer.events.path), "notes.txt"])


@pytest.mark.parametrize("parallel,expected", [(SingleProcess(), RunWriter),
                                               (SimpleNamespace(is_main=True), RunWriter),
                                               (SimpleNamespace(is_main=False), NullWriter)])
def test_the_main_rank_writes(parallel, expected, tmp_path):
    s = settings(tmp_path)
    assert type(run_writer(parallel, s, [RunOutputs(s.save_path, "SD-XL-tiny")])) is expected


def scalars(folder):
    """{tag: [(step, value)]} of the event files in ``folder``, as TensorBoard reads them (value rounded to
    float32's 7 digits)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, float(f"{e.value:.7g}")) for e in events.Scalars(tag)]
            for tag in events.Tags()["scalars"]}


def test_event_files_read_back_in_tensorboard_and_a_resumed_session_replaces_the_stale_tail(tmp_path):
    """A session logged steps 1-3 but was saved at step 2; the resumed one starts a new file at step 3, whose
    SessionLog START makes TensorBoard drop the first file's step 3."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.compat.proto.event_pb2 import SessionLog

    first = EventLog(str(tmp_path), 1)
    for step in (1, 2, 3):
        first.scalars(step, {"loss": 1.0 / step, "norm_clip_l_0": 0.5})
    second = EventLog(str(tmp_path), 3)
    for step in (3, 4):
        second.scalars(step, {"loss": 10.0 * step, "validation_loss": math.inf if step == 3 else math.nan})
    assert sorted(os.listdir(tmp_path)) == [os.path.basename(first.path), os.path.basename(second.path)]
    read = scalars(tmp_path)
    assert read["loss"] == [(1, 1.0), (2, 0.5), (3, 30.0), (4, 40.0)]
    assert read["norm_clip_l_0"] == [(1, 0.5), (2, 0.5)]
    assert read["validation_loss"][0] == (3, math.inf) and math.isnan(read["validation_loss"][1][1])
    events = list(EventFileLoader(second.path).Load())
    assert events[0].file_version == "brain.Event:2" and events[0].step == 0
    assert events[1].session_log.status == SessionLog.START and events[1].step == 3
    assert [e.step for e in events[2:]] == [3, 4] and all(e.wall_time > 1e9 for e in events)
