"""Checks of values and output paths; each failure is a UsageError naming the setting and the value."""
import math
import numbers
import os
from collections.abc import Sequence

from gm.constants import MAX_IMAGE_SIDE
from gm.errors import UsageError


def _integer(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _real(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


# What a valid value is, for check_value: (description, test).
RULES = {
    "count": ("an integer of at least 1", lambda v: _integer(v) and v >= 1),
    "natural": ("an integer of at least 0", lambda v: _integer(v) and v >= 0),
    "multiple_of_8": ("a positive multiple of 8", lambda v: _integer(v) and v > 0 and v % 8 == 0),
    "positive": ("a finite number above 0", lambda v: _real(v) and v > 0),
    "non_negative": ("a finite number of at least 0", lambda v: _real(v) and v >= 0),
    "probability": ("a probability in [0, 1]", lambda v: _real(v) and 0 <= v <= 1),
    "finite": ("a finite number", _real),
    "boolean": ("True or False", lambda v: isinstance(v, bool)),
    "adam_betas": ("two numbers in [0, 1), e.g. [0.9, 0.999]",
                   lambda v: isinstance(v, Sequence) and not isinstance(v, str) and len(v) == 2
                   and all(_real(b) and 0 <= b < 1 for b in v)),
}


def check_value(name, value, rule):
    """UsageError ``"{name} {value}: expected ..."`` unless ``value`` satisfies ``RULES[rule]``."""
    what, test = RULES[rule]
    if not test(value):
        shown = value if isinstance(value, numbers.Number) else list(value) if isinstance(value, Sequence) and not \
            isinstance(value, str) else repr(value)
        raise UsageError(f"{name} {shown}: expected {what}")


def check_side(name, value, hint=""):
    """UsageError ``"{name}: at most 4096 pixels a side{hint}"`` for a side above :data:`MAX_IMAGE_SIDE`."""
    if value > MAX_IMAGE_SIDE:
        raise UsageError(f"{name}: at most {MAX_IMAGE_SIDE} pixels a side{hint}")


def check_outputs(outputs, inputs, kind="file"):
    """Refuse, before anything is written, outputs that would overwrite or delete an input.

    ``outputs`` and ``inputs`` are (flag, path) pairs (None paths are skipped), compared resolved
    (links, ``..``). ``kind`` says what the outputs are: ``"file"`` (written whole; an existing
    folder there is refused), ``"folder"`` (a folder whose files the tool writes and deletes: no
    input may lie inside it) or ``"new_files"`` (a folder that only receives new files). Each output
    must also be writable: an empty path, or one under a file or a read-only folder, is refused.
    """
    for out_flag, out in outputs:
        if not out:
            raise UsageError(f"{out_flag} {out!r}: expected a {'file name' if kind == 'file' else 'folder'}")
        if kind == "file" and os.path.isdir(out):
            raise UsageError(f"{out_flag} {out}: is a folder (expected a file name)")
        if kind != "file" and os.path.exists(out) and not os.path.isdir(out):
            raise UsageError(f"{out_flag} {out}: is a file (expected a folder)")
        check_writable(out_flag, out, out if kind != "file" else os.path.dirname(out) or ".")
        target = os.path.realpath(out)
        for in_flag, path in inputs:
            if path is None:
                continue
            source = os.path.realpath(path)
            if source == target or (os.path.exists(out) and os.path.exists(path) and os.path.samefile(out, path)):
                raise UsageError(f"{out_flag} {out}: is also {in_flag}; choose an output that is not an input")
            if kind == "folder" and source.startswith(target.rstrip(os.sep) + os.sep):
                raise UsageError(f"{out_flag} {out}: holds {in_flag} {path}; choose an output folder "
                                 "outside the inputs")


def check_writable(flag, path, folder):
    """UsageError naming ``flag`` and ``path`` unless ``folder`` (where ``path`` goes) is, or can be created
    in, a writable folder; nothing is created."""
    existing = folder
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing) or "."
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path}: cannot write there ({existing} is not a writable folder)")
