"""What a training run leaves under ``--save_path``.

    weights/{version}_{step}_ti.ckpt   learned vectors (at most max_num_ckpt kept); with several
                                       concepts, weights/{concept}/... and samples/{concept}/...
    train_state.ckpt                   vectors + optimiser moments + step, for --resume
    loss.csv, loss.png                 loss log and curve
    samples/step_{step}.png            images for a fixed prompt and seed (--infer_during_train)
    samples/progression.png            one row per inference step: the concept appearing
"""
import glob
import os
import re

import numpy as np
from PIL import Image

from gm.errors import UsageError, warn
from gm.files import atomic_output
from gm.images import loss_curve, make_grid, save_png

LOG_FIELDS = ("step", "loss", "lr", "step_seconds")
# Files whose presence means --save_path holds a run; with the loss curve and samples, what
# --overwrite True removes (nothing else in the folder is touched).
RUN_MARKERS = ("train_state.ckpt", "loss.csv", "weights/*_ti.ckpt", "weights/*/*_ti.ckpt")
RUN_FILES = RUN_MARKERS + ("loss.png", "samples/step_*.png", "samples/progression.png",
                           "samples/*/step_*.png", "samples/*/progression.png")


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


def _log_row(line):
    """(step, loss, lr, seconds) of a loss.csv line, or None if it is not a complete row."""
    fields = line.split(",")
    if len(fields) != len(LOG_FIELDS):
        return None
    try:
        return int(fields[0]), float(fields[1]), float(fields[2]), float(fields[3])
    except ValueError:
        return None


class RunOutputs:
    """Files of one run; everything is written atomically except the appended loss log."""

    def __init__(self, save_path, version, concept=None):
        """``concept`` names a sub-folder of weights/ and samples/ (runs learning several words)."""
        self.root = save_path
        self.version = version
        self.weights_dir = os.path.join(save_path, "weights", *([concept] if concept else []))
        self.samples_dir = os.path.join(save_path, "samples", *([concept] if concept else []))
        self.state_path = os.path.join(save_path, "train_state.ckpt")
        self.loss_path = os.path.join(save_path, "loss.csv")
        self.curve_path = os.path.join(save_path, "loss.png")

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

    def read_log(self):
        """Rows (step, loss, lr, seconds) of loss.csv in increasing step order. A torn or unreadable
        row (a run killed while appending) is dropped, with one warning line."""
        if not os.path.isfile(self.loss_path):
            return []
        with open(self.loss_path, encoding="utf-8", errors="replace") as f:
            lines = [line.strip() for line in f.read().splitlines() if line.strip()]
        rows, dropped = [], 0
        for line in lines[1:] if lines and lines[0] == ",".join(LOG_FIELDS) else lines:
            row = _log_row(line)
            if row is None or (rows and row[0] <= rows[-1][0]):
                dropped += 1
            else:
                rows.append(row)
        if dropped:
            warn(f"{self.loss_path}: dropped {dropped} unreadable row(s) (a run stopped while writing it?)")
        return rows

    def read_losses(self):
        """(steps, losses) logged so far."""
        rows = self.read_log()
        return [r[0] for r in rows], [r[1] for r in rows]

    def start_loss_log(self, resume_step):
        """Keep the log rows up to ``resume_step`` (every later step is trained again)."""
        rows = [r for r in self.read_log() if r[0] <= resume_step] if resume_step else []
        with atomic_output(self.loss_path) as tmp, open(tmp, "w", newline="\n") as f:
            f.write(",".join(LOG_FIELDS) + "\n")
            for row in rows:
                f.write(self._format(*row))

    def log_loss(self, step, loss, lr, seconds):
        with open(self.loss_path, "a", newline="\n") as f:
            f.write(self._format(step, loss, lr, seconds))

    @staticmethod
    def _format(step, loss, lr, seconds):
        return f"{step},{loss:.6f},{lr:.6g},{seconds:.3f}\n"

    def save_loss_curve(self):
        steps, losses = self.read_losses()
        save_png(loss_curve(steps, losses), self.curve_path)

    def save_samples(self, step, images):
        """Images of one inference step, and the progression grid of all steps so far."""
        save_png(make_grid(images, len(images)), os.path.join(self.samples_dir, f"step_{step}.png"))
        rows = sorted(glob.glob(os.path.join(self.samples_dir, "step_*.png")),
                      key=lambda p: int(re.search(r"step_(\d+)", p).group(1)))
        strips = [np.asarray(Image.open(p).convert("RGB")) for p in rows]
        width = max(s.shape[1] for s in strips)
        strips = [np.pad(s, ((0, 0), (0, width - s.shape[1]), (0, 0)), constant_values=255) for s in strips]
        save_png(np.concatenate(strips, axis=0), os.path.join(self.samples_dir, "progression.png"))
