"""Shared command-line plumbing: one-line errors, True/False flags and the device flags."""
import argparse
import sys


class UsageError(Exception):
    """Bad input the user can fix: a flag value, a file, a folder."""


class ConfigError(Exception):
    """A config file that is missing or not a model config."""


def str2bool(value):
    """argparse type accepting True/False, yes/no, 1/0 (any case)."""
    text = str(value).strip().lower()
    if text in ("true", "yes", "1"):
        return True
    if text in ("false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {value!r}")


AMP_LEVELS = ("O0", "O2", "O3")
AMP_DTYPES = ("float16", "bfloat16")


def add_device_args(group):
    """``--device_target``, ``--ms_mode``, ``--ms_amp_level`` and ``--amp_dtype`` on an argparse group."""
    group.add_argument("--device_target", default=None, help="CPU, GPU or Ascend (default: the installed MindSpore's)")
    group.add_argument("--ms_mode", type=int, default=0, choices=[0, 1], help="0 graph mode, 1 PyNative")
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
