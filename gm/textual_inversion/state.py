"""The resume state of a run (``train_state.ckpt``): the learned rows, the optimiser moments, the step, the
seed, the concepts they belong to and the best evaluated step so far with its value; written atomically,
read back with every check (one-line errors)."""
import os

import numpy as np

from gm.checkpoints.weight_files import open_weights, write_ckpt
from gm.errors import UsageError


def identity(concepts):
    """What the state records of the concepts: one "token num_vectors" line each."""
    return "\n".join(f"{c.placeholder_token} {c.num_vectors}" for c in concepts)


def write_state(path, rows, moments, step, seed, concepts, best=None):
    """Write the state of ``concepts`` at ``step`` (rows and moments: lists of arrays; ``best``: the best
    evaluated (step, value) so far, or None)."""
    items = [(f"rows_{i}", r) for i, r in enumerate(rows)]
    items += [(f"moment_{i}", m) for i, m in enumerate(moments)]
    items += [("step", np.asarray(step, np.int64)), ("seed", np.asarray(seed, np.int64)),
              ("placeholder_token", identity(concepts))]
    if best is not None:
        items += [("best_step", np.asarray(best[0], np.int64)), ("best_value", np.asarray(best[1], np.float64))]
    write_ckpt(path, items)


def read_state(path, concepts):
    """The state at ``path`` as {"step", "rows_i", "moment_i", "best"}, checked to be a state of ``concepts``
    ("best": (step, value), or None in a state without one)."""
    if not os.path.isfile(path):
        raise UsageError(f"--resume: no saved state at {path} (nothing to resume in --save_path)")
    with open_weights(path) as reader:
        saved = reader.get("placeholder_token") if "placeholder_token" in reader.keys() else None
        if not isinstance(saved, str):
            raise UsageError(f"--resume: {path} names no concepts; it is not a training state of this toolkit "
                             "(start a new run with --overwrite True)")
        if saved != identity(concepts):
            raise UsageError(f"--resume: {path} was saved for other concepts ({saved!r}, not "
                             f"{identity(concepts)!r})")
        state = {k: np.array(reader.get(k), np.float32) for k in reader.keys()
                 if k.startswith(("rows_", "moment_")) and not isinstance(reader.get(k), str)}
        step = np.asarray(reader.get("step")) if "step" in reader.keys() else np.zeros(0)
        if step.size != 1 or not np.issubdtype(step.dtype, np.integer) or int(step.reshape(())) < 0:
            raise UsageError(f"--resume: {path} holds no valid step; it is not a training state of this "
                             "toolkit (start a new run with --overwrite True)")
        state["step"] = int(step.reshape(()))
        keys = reader.keys()
        state["best"] = ((int(np.asarray(reader.get("best_step"))), float(np.asarray(reader.get("best_value"))))
                         if "best_step" in keys and "best_value" in keys else None)
    return state


def check_shapes(state, shapes, path):
    """UsageError unless ``state`` holds rows of ``shapes`` and two moments per row."""
    expected = {f"rows_{i}": shape for i, shape in enumerate(shapes)}
    expected.update({f"moment_{i}": shapes[i % len(shapes)] for i in range(2 * len(shapes))})
    for key, shape in expected.items():
        if key not in state or state[key].shape != shape:
            found = f"shape {list(state[key].shape)}" if key in state else "missing"
            raise UsageError(f"--resume: {path} is not the state of this run ({key}: {found}, "
                             f"expected {list(shape)}); start a new run with --overwrite True")
