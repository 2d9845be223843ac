"""What a training run leaves under ``--save_path``.

    weights/{version}_{step}_ti.ckpt   learned vectors (at most max_num_ckpt kept); with several
                                       concepts, weights/{concept}/... and samples/{concept}/...
    train_state.ckpt                   vectors + optimiser moments + step, for --resume
    weights/best_ti.ckpt               the vectors of the best evaluated step (--best_by)
    loss.csv, loss.png                 loss log (one row per step; telemetry columns) and its plot
    samples/step_{step}.png            images for a fixed prompt and seed (--infer_during_train)
    samples/progression.png            one row per inference step: the concept appearing
    logs/events.out.tfevents.*         loss.csv's columns as TensorBoard scalars, one file per session
                                       (--log_with tensorboard; gm.textual_inversion.tensorboard_log)
"""
import glob
import os
import re

import numpy as np
from PIL import Image

from gm.errors import UsageError, warn
from gm.files import atomic_output
from gm.images import make_grid, save_png

# The first columns of loss.csv; the trainer adds its telemetry columns after them (norm_clip_l_0, ...,
# validation_loss, ...), empty where a step has no value.
LOG_FIELDS = ("step", "loss", "lr", "step_seconds")
# Files whose presence means --save_path holds a run; with the loss curve and samples, what
# --overwrite True removes (nothing else in the folder is touched).
RUN_MARKERS = ("train_state.ckpt", "loss.csv", "weights/*_ti.ckpt", "weights/*/*_ti.ckpt")
RUN_FILES = RUN_MARKERS + ("loss.png", "samples/step_*.png", "samples/progression.png",
                           "samples/*/step_*.png", "samples/*/progression.png", "logs/events.out.tfevents.*")


def run_files(save_path, patterns=RUN_FILES):
    """The files of a training run present in ``save_path``, sorted."""
    return sorted(f for p in patterns for f in glob.glob(os.path.join(glob.escape(save_path), p)))


def check_save_path(save_path, resume, overwrite):
    """Refuse a ``--save_path`` whose earlier run would be lost; writes nothing. (Whether it can be written
    is :func:`gm.checks.check_outputs`' check.)"""
    if resume and overwrite:
        raise UsageError("--resume True and --overwrite True: choose one (resume continues the run in "
                         "--save_path, overwrite replaces it)")
    found = run_files(save_path, RUN_MARKERS)
    if found and not (resume or overwrite):
        raise UsageError(f"--save_path {save_path}: holds an earlier run ({os.path.relpath(found[0], save_path)}); "
                         "continue it with --resume True, choose a new path, or replace it with --overwrite True")


def clear_run(save_path):
    """Delete the earlier run's files in ``save_path`` (``--overwrite True``); other files stay."""
    for path in run_files(save_path):
        os.remove(path)


def _log_row(line, header):
    """{column: value} of a loss.csv line (None for an empty cell), or None if it is not a complete row
    (a step and a loss at least)."""
    fields = line.split(",")
    if len(fields) != len(header):
        return None
    try:
        row = {name: float(v) if v else None for name, v in zip(header, fields)}
        row["step"] = int(fields[0])
    except ValueError:
        return None
    return row if row.get("loss") is not None else None


def _cell(name, value):
    if value is None:
        return ""
    if name == "step":
        return str(int(value))
    return f"{value:.3f}" if name == "step_seconds" else f"{value:.6f}" if name == "loss" else f"{value:.6g}"


class RunOutputs:
    """Files of one run; everything is written atomically except the appended loss log."""

    def __init__(self, save_path, version, concept=None, columns=()):
        """``concept`` names a sub-folder of weights/ and samples/ (runs learning several words);
        ``columns``: loss.csv's columns after :data:`LOG_FIELDS`."""
        self.root = save_path
        self.version = version
        self.columns = tuple(columns)
        self.weights_dir = os.path.join(save_path, "weights", *([concept] if concept else []))
        self.samples_dir = os.path.join(save_path, "samples", *([concept] if concept else []))
        self.state_path = os.path.join(save_path, "train_state.ckpt")
        self.loss_path = os.path.join(save_path, "loss.csv")
        self.curve_path = os.path.join(save_path, "loss.png")
        self.logs_dir = os.path.join(save_path, "logs")
        self.best_path = os.path.join(self.weights_dir, "best_ti.ckpt")

    def ti_path(self, step):
        return os.path.join(self.weights_dir, f"{self.version}_{step}_ti.ckpt")

    def saved_steps(self):
        """Steps of the ``_ti.ckpt`` files present, ascending."""
        pattern = re.compile(rf"{re.escape(self.version)}_(\d+)_ti\.ckpt$")
        steps = [int(m.group(1)) for f in glob.glob(os.path.join(self.weights_dir, "*_ti.ckpt"))
                 if (m := pattern.search(os.path.basename(f)))]
        return sorted(steps)

    def prune(self, max_num_ckpt):
        """Delete the oldest ``_ti.ckpt`` files beyond ``max_num_ckpt`` (None: keep all)."""
        if max_num_ckpt is None:
            return
        for step in self.saved_steps()[:-max_num_ckpt]:
            os.remove(self.ti_path(step))

    @property
    def fields(self):
        return LOG_FIELDS + self.columns

    def read_log(self):
        """Rows ({column: value}) of loss.csv in increasing step order, by the file's own header (a file
        without one has :data:`LOG_FIELDS`). A torn or unreadable row (a run killed while appending) is
        dropped, with one warning line."""
        if not os.path.isfile(self.loss_path):
            return []
        with open(self.loss_path, encoding="utf-8", errors="replace") as f:
            lines = [line.strip() for line in f.read().splitlines() if line.strip()]
        header = lines[0].split(",") if lines and lines[0].startswith("step,") else None
        rows, dropped = [], 0
        for line in lines[1:] if header else lines:
            row = _log_row(line, header or LOG_FIELDS)
            if row is None or (rows and row["step"] <= rows[-1]["step"]):
                dropped += 1
            else:
                rows.append(row)
        if dropped:
            warn(f"{self.loss_path}: dropped {dropped} unreadable row(s) (a run stopped while writing it?)")
        return rows

    def start_loss_log(self, resume_step):
        """Keep the log rows up to ``resume_step`` (every later step is trained again), in this run's
        columns (a column the earlier rows lack is left empty)."""
        rows = [r for r in self.read_log() if r["step"] <= resume_step] if resume_step else []
        with atomic_output(self.loss_path) as tmp, open(tmp, "w", newline="\n") as f:
            f.write(",".join(self.fields) + "\n")
            for row in rows:
                f.write(self._format(row))

    def log_row(self, row):
        """Append one step's row ({column: value}; missing columns are left empty)."""
        with open(self.loss_path, "a", newline="\n") as f:
            f.write(self._format(row))

    def _format(self, row):
        return ",".join(_cell(name, row.get(name)) for name in self.fields) + "\n"

    def save_loss_curve(self):
        from gm.textual_inversion.plot import save_plot  # matplotlib, imported only when a plot is drawn

        save_plot(self.read_log(), self.curve_path)

    def save_samples(self, step, images):
        """Images of one inference step, and the progression grid of all steps so far."""
        save_png(make_grid(images, len(images)), os.path.join(self.samples_dir, f"step_{step}.png"))
        rows = sorted(glob.glob(os.path.join(self.samples_dir, "step_*.png")),
                      key=lambda p: int(re.search(r"step_(\d+)", p).group(1)))
        strips = [np.asarray(Image.open(p).convert("RGB")) for p in rows]
        width = max(s.shape[1] for s in strips)
        strips = [np.pad(s, ((0, 0), (0, width - s.shape[1]), (0, 0)), constant_values=255) for s in strips]
        save_png(np.concatenate(strips, axis=0), os.path.join(self.samples_dir, "progression.png"))
