"""Atomic output: every file the toolkit writes appears whole under its name or not at all."""
import errno
import os
from contextlib import contextmanager

from gm.errors import UsageError


# What a full disk or a folder that cannot be written raises while an output is written.
_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM)


@contextmanager
def atomic_output(path):
    """Yield a temporary path beside ``path``; rename it to ``path`` only if the block succeeds.

    The toolkit's one way of writing an output file. If the file cannot be written (no such or read-only
    folder, a full disk) that is a UsageError naming ``path``, and nothing is left behind."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        os.makedirs(directory, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        ours = isinstance(e.filename, str) and (e.filename in (tmp, path) or directory == e.filename.rstrip(os.sep)
                                                or directory.startswith(e.filename.rstrip(os.sep) + os.sep))
        if not ours and e.errno not in _WRITE_ERRNOS:
            raise
        raise UsageError(f"{path}: cannot write it ({e.strerror or e})") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
