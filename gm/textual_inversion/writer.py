"""Who writes a run's outputs: rank 0 writes them all (:class:`RunWriter`); every other rank of a data-parallel
run makes the same calls and writes and shows nothing (:class:`NullWriter`). :func:`run_writer` picks one from
the parallel context, once; the trainer calls its writer unconditionally."""
import sys

from tqdm import tqdm

from gm.textual_inversion.embeddings import save_ti
from gm.textual_inversion.outputs import check_save_path, clear_run
from gm.textual_inversion.state import write_state
from gm.textual_inversion.tensorboard_log import EventLog


class RunWriter:
    """The run's files under ``--save_path`` (through its :class:`~gm.textual_inversion.outputs.RunOutputs`, one
    per concept), its progress bars and its messages."""

    def __init__(self, s, outputs):
        """``s``: the run's :class:`~gm.textual_inversion.settings.Settings`; ``outputs``: the RunOutputs of
        its concepts, in order (the first also holds the run's loss log and resume state)."""
        self.s = s
        self.outputs = outputs
        self.out = outputs[0]
        self.events = None  # the TensorBoard log (--log_with tensorboard), from start() on

    def check(self):
        """Refuse a ``--save_path`` whose earlier run would be lost; writes nothing."""
        check_save_path(self.s.save_path, self.s.resume, self.s.overwrite)

    def start(self, start_step):
        """The run starts writing: ``--overwrite True`` removes the earlier run's files; the loss log keeps
        its rows up to ``start_step``; with --log_with tensorboard a new event file begins at the next step."""
        if self.s.overwrite:
            clear_run(self.s.save_path)
        self.out.start_loss_log(start_step)
        if self.s.log_with == "tensorboard":
            self.events = EventLog(self.out.logs_dir, start_step + 1)

    def log(self, row):
        """One step's loss log row ({column: value}), also as TensorBoard scalars (the empty ones left out)."""
        self.out.log_row(row)
        if self.events is not None:
            self.events.scalars(row["step"], {k: v for k, v in row.items() if k != "step" and v is not None})

    def save(self, step, concept_rows, rows, moments, best):
        """Each concept's ``_ti.ckpt`` of ``step`` (its rows per encoder, in ``concept_rows``; the oldest
        files beyond --max_num_ckpt pruned), the resume state (the learned ``rows``, the optimiser
        ``moments``, the ``best`` evaluation) and the loss plot."""
        for concept, out, word in zip(self.s.concepts, self.outputs, concept_rows):
            save_ti(out.ti_path(step), concept.placeholder_token, word)
            out.prune(self.s.max_num_ckpt)
        write_state(self.out.state_path, rows, moments, step, self.s.seed, self.s.concepts, best)
        self.out.save_loss_curve()

    def save_best(self, concept_rows):
        """Each concept's ``best_ti.ckpt``."""
        for concept, out, word in zip(self.s.concepts, self.outputs, concept_rows):
            save_ti(out.best_path, concept.placeholder_token, word)

    def save_samples(self, concept, step, images):
        """Concept number ``concept``'s sample images of ``step`` and its progression grid."""
        self.outputs[concept].save_samples(step, images)

    def message(self, text):
        """A line (or lines) on stdout, above any progress bar."""
        tqdm.write(text)
        sys.stdout.flush()

    def progress(self, iterable=None, **options):
        """A tqdm progress bar."""
        return tqdm(iterable, **options)


class NullWriter:
    """Every rank but 0: :class:`RunWriter`'s calls, nothing written or shown."""

    def check(self):
        pass

    def start(self, start_step):
        pass

    def log(self, row):
        pass

    def save(self, step, concept_rows, rows, moments, best):
        pass

    def save_best(self, concept_rows):
        pass

    def save_samples(self, concept, step, images):
        pass

    def message(self, text):
        pass

    def progress(self, iterable=None, **options):
        """A bar that shows nothing (it still iterates over ``iterable``)."""
        return tqdm(iterable, disable=True)


def run_writer(parallel, s, outputs):
    """The writer of this process: :class:`RunWriter` on the main rank, else :class:`NullWriter`."""
    return RunWriter(s, outputs) if parallel.is_main else NullWriter()
