"""The one MindSpore set-up every entry point uses: execution mode and device."""
import mindspore as ms

from gm.constants import DEVICES
from gm.errors import UsageError


def init_mindspore(device_target=None, mode=0):
    """Graph (0) or PyNative (1) mode on ``device_target`` (default: the installed MindSpore's).

    A device this MindSpore cannot use is one UsageError; the log lines MindSpore writes while it
    probes the device are dropped then (the error says why) and passed on when the device works.
    """
    if mode not in (0, 1) or isinstance(mode, bool):
        raise UsageError(f"--ms_mode {mode!r}: expected 0 (graph mode) or 1 (PyNative)")
    ms.set_context(mode=mode)
    if not device_target:
        return
    if device_target not in DEVICES:
        raise UsageError(f"--device_target {device_target!r}: expected one of {', '.join(DEVICES)}")
    held = _HeldLog()
    try:
        with held:
            ms.set_device(device_target)
    except (RuntimeError, ValueError) as e:
        reason = str(e).strip().splitlines()[0]
        raise UsageError(f"--device_target {device_target}: not usable with this MindSpore ({reason})") from None
    held.replay()


class _HeldLog:
    """Holds back what MindSpore's Python logger writes inside the ``with`` block; ``replay()`` writes it."""

    def __init__(self):
        from mindspore import log

        self.records = []
        try:
            self.logger = log._get_logger()  # noqa: SLF001 -- MindSpore has no public handle on its logger
        except Exception:  # another MindSpore version: let its log lines through
            self.logger = None

    def filter(self, record):
        self.records.append(record)
        return False

    def __enter__(self):
        if self.logger is not None:
            self.logger.addFilter(self)
        return self

    def __exit__(self, *exc):
        if self.logger is not None:
            self.logger.removeFilter(self)

    def replay(self):
        for record in self.records:
            self.logger.handle(record)
        self.records = []
