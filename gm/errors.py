"""The errors the toolkit reports as one ``error: ...`` line (no argparse, no MindSpore here), and its warnings."""
import sys


class UsageError(Exception):
    """Bad input the user can fix: a flag value, a file, a folder."""


class ConfigError(Exception):
    """A config file that is missing or not a model config."""


class WeightFileError(Exception):
    """A weight file that is missing, truncated, of another format, or does not fit the model."""


class ParallelError(UsageError):
    """A process of the job could not be started, joined or reached (reported as one line, exit 1)."""


def warn(message):
    """One ``warning: ...`` line on stderr (skipped inputs, repaired files): the run goes on."""
    print(f"warning: {message}", file=sys.stderr, flush=True)
