"""Shared command-line plumbing: the argument parser every CLI uses, True/False and device flags, and
:func:`run`, which turns the toolkit's errors into one ``error: ...`` line and exit code 1."""
import argparse
import sys

from gm.constants import AMP_DTYPES, AMP_LEVELS, DEVICES
from gm.errors import ConfigError, UsageError, WeightFileError


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser with one-line errors: a flag it cannot parse (unknown flag, invalid choice, a value
    of the wrong type, a missing required flag) raises :class:`UsageError`, which :func:`run` prints as one
    ``error: ...`` line with exit code 1, as every other bad input (no usage dump, no exit code 2)."""

    def error(self, message):
        raise UsageError(f"{message} (see {self.prog} --help)")


def str2bool(value):
    """argparse type accepting True/False, yes/no, 1/0 (any case)."""
    text = str(value).strip().lower()
    if text in ("true", "yes", "1"):
        return True
    if text in ("false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {value!r}")


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


def add_compile_cache_arg(group):
    """``--compile_cache DIR|off``: where compiled graphs are kept between runs (gm.compile_cache)."""
    group.add_argument("--compile_cache", default=None, metavar="DIR",
                       help="folder of compiled graphs reused by a later run with the same model, shapes and "
                            "settings (graph mode; one sub-folder per key; delete it to clear); off: no cache "
                            "(default: $SDXL_TI_COMPILE_CACHE, else ~/.cache/sdxl_ti/compile)")


def run(main):
    """Call ``main()``; known bad-input errors become ``error: ...`` on stderr and exit code 1."""
    try:
        main()
    except (UsageError, ConfigError, WeightFileError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
