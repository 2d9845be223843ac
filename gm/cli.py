"""Shared command-line plumbing: one-line errors and warnings, the argument parser every CLI uses, value and
output checks, True/False flags, device flags."""
import argparse
import math
from collections.abc import Sequence
import numbers
import os
import sys


class UsageError(Exception):
    """Bad input the user can fix: a flag value, a file, a folder."""


class ConfigError(Exception):
    """A config file that is missing or not a model config."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser with one-line errors: a flag it cannot parse (unknown flag, invalid choice, a value
    of the wrong type, a missing required flag) raises :class:`UsageError`, which :func:`run` prints as one
    ``error: ...`` line with exit code 1, as every other bad input (no usage dump, no exit code 2)."""

    def error(self, message):
        raise UsageError(f"{message} (see {self.prog} --help)")


def warn(message):
    """One ``warning: ...`` line on stderr (skipped inputs, repaired files): the run goes on."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def str2bool(value):
    """argparse type accepting True/False, yes/no, 1/0 (any case)."""
    text = str(value).strip().lower()
    if text in ("true", "yes", "1"):
        return True
    if text in ("false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {value!r}")


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


# Sampling limits, the same in the sampling CLI and the Streamlit app: a typo (--num_rows 100000, --H 40000)
# is refused instead of filling the memory.
MAX_IMAGE_SIDE = 4096
MAX_IMAGES = 64


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


DEVICES = ("CPU", "GPU", "Ascend")


def device_name(value):
    """argparse type of ``--device_target``: CPU, GPU or Ascend in any case (``cpu`` is CPU)."""
    for name in DEVICES:
        if str(value).strip().lower() == name.lower():
            return name
    raise argparse.ArgumentTypeError(f"{value!r}: expected one of {', '.join(DEVICES)} (any case)")


def ms_mode(value):
    """argparse type of ``--ms_mode``: 0 (graph) or 1 (PyNative)."""
    if str(value).strip() in ("0", "1"):
        return int(value)
    raise argparse.ArgumentTypeError(f"{value!r}: expected 0 (graph mode) or 1 (PyNative)")


def check_writable(flag, path, folder):
    """UsageError naming ``flag`` and ``path`` unless ``folder`` (where ``path`` goes) is, or can be created
    in, a writable folder; nothing is created."""
    existing = folder
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing) or "."
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path}: cannot write there ({existing} is not a writable folder)")


AMP_LEVELS = ("O0", "O2", "O3")
AMP_DTYPES = ("float16", "bfloat16")


def add_device_args(group):
    """``--device_target``, ``--ms_mode``, ``--ms_amp_level`` and ``--amp_dtype`` on an argparse group."""
    group.add_argument("--device_target", type=device_name, default=None,
                       help="CPU, GPU or Ascend, any case (default: the installed MindSpore's)")
    group.add_argument("--ms_mode", type=ms_mode, default=0, metavar="{0,1}", help="0 graph mode, 1 PyNative")
    group.add_argument("--ms_amp_level", default="O0", choices=AMP_LEVELS,
                       help="mixed precision of the UNet and text encoders (VAE stays fp32): O0 fp32, O2 with "
                            "norms in fp32, O3 all; for Ascend/GPU (fp16 on CPU is slow)")
    group.add_argument("--amp_dtype", default="float16", choices=AMP_DTYPES,
                       help="low-precision type of --ms_amp_level O2/O3 (bfloat16: Ascend 910B, GPU)")


def run(main):
    """Call ``main()``; known bad-input errors become ``error: ...`` on stderr and exit code 1."""
    from gm.weight_files import WeightFileError

    try:
        main()
    except (UsageError, ConfigError, WeightFileError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
