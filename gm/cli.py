"""Shared command-line plumbing: one-line errors and True/False flags."""
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


def run(main):
    """Call ``main()``; known bad-input errors become ``error: ...`` on stderr and exit code 1."""
    from gm.weight_files import WeightFileError

    try:
        main()
    except (UsageError, ConfigError, WeightFileError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
