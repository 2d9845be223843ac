"""What a training run leaves under ``--save_path``.

    weights/{version}_{step}_ti.ckpt   learned vectors (at most max_num_ckpt kept); with several
                                       concepts, weights/{concept}/... and samples/{concept}/...
    train_state.ckpt                   vectors + optimiser moments + step, for --resume
    loss.csv, loss.png                 loss log and curve
    samples/step_{step}.png            images for a fixed prompt and seed (--infer_during_train)
    samples/progression.png            one row per inference step: the concept appearing
"""
import csv
import glob
import os
import re

import numpy as np
from PIL import Image

from gm.cli import UsageError
from gm.images import loss_curve, make_grid, save_png
from gm.weight_files import atomic_output

LOG_FIELDS = ("step", "loss", "lr", "step_seconds")


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

    def check_writable(self):
        """Create the folders; UsageError naming --save_path if that is not possible."""
        try:
            for d in (self.root, self.weights_dir, self.samples_dir):
                os.makedirs(d, exist_ok=True)
            probe = os.path.join(self.root, ".write_test")
            with open(probe, "w") as f:
                f.write("ok")
            os.remove(probe)
        except OSError as e:
            raise UsageError(f"--save_path {self.root}: cannot write there ({e.strerror or e})") from None

    def ti_path(self, step):
        return os.path.join(self.weights_dir, f"{self.version}_{step}_ti.ckpt")

    def saved_steps(self):
        """Steps of the ``_ti.ckpt`` files present, ascending."""
        pattern = re.compile(rf"{re.escape(self.version)}_(\d+)_ti\.ckpt$")
        steps = [int(m.group(1)) for f in glob.glob(os.path.join(self.weights_dir, "*_ti.ckpt"))
                 if (m := pattern.search(os.path.basename(f)))]
        return sorted(steps)

    def prune(self, max_num_ckpt):
        """Delete the oldest ``_ti.ckpt`` files beyond ``max_num_ckpt``."""
        if not max_num_ckpt:
            return
        for step in self.saved_steps()[:-max_num_ckpt]:
            os.remove(self.ti_path(step))

    def read_losses(self):
        """(steps, losses) logged so far."""
        if not os.path.isfile(self.loss_path):
            return [], []
        with open(self.loss_path) as f:
            rows = list(csv.DictReader(f))
        return [int(r["step"]) for r in rows], [float(r["loss"]) for r in rows]

    def start_loss_log(self, resume_step):
        """Keep the log rows up to ``resume_step`` (every later step is trained again)."""
        rows = []
        if resume_step and os.path.isfile(self.loss_path):
            with open(self.loss_path) as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        with atomic_output(self.loss_path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, LOG_FIELDS)
            writer.writeheader()
            writer.writerows(rows)

    def log_loss(self, step, loss, lr, seconds):
        with open(self.loss_path, "a", newline="") as f:
            csv.writer(f).writerow([step, f"{loss:.6f}", f"{lr:.6g}", f"{seconds:.3f}"])

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
