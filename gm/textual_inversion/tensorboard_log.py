"""``logs/events.out.tfevents.*`` (``--log_with tensorboard``): loss.csv's columns as TensorBoard scalars, written
here without TensorBoard or TensorFlow (TensorBoard is needed only to view them).

An event file is a sequence of TFRecords (length as uint64, its masked CRC-32C, the data, the data's masked
CRC-32C), each an ``Event`` protocol buffer (tensorflow/core/util/event.proto): first the ``file_version``
event, then a ``SessionLog`` START at the first step this session trains (TensorBoard then drops what an
earlier session logged from that step on: the steps a resumed run trains again), then one ``Summary`` of
``simple_value`` scalars per step. The few protobuf fields needed are encoded by hand below.
"""
import glob
import os
import socket
import struct
import time

import numpy as np


def _crc32c_table():
    table = []
    for n in range(256):
        for _ in range(8):
            n = (n >> 1) ^ 0x82F63B78 if n & 1 else n >> 1
        table.append(n)
    return table


_CRC32C = _crc32c_table()


def masked_crc32c(data):
    """CRC-32C (Castagnoli) of ``data``, masked as TFRecord stores it."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def record(data):
    """One TFRecord holding ``data``."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc32c(length)) + data + struct.pack("<I", masked_crc32c(data))


def _varint(n):
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes(out) + bytes([n])


def _field(number, payload):
    """A length-delimited protobuf field (bytes, string or message)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def event(step, what):
    """An ``Event`` at ``step``, stamped with the wall clock, holding ``what`` (one encoded field of its oneof)."""
    return b"\x09" + struct.pack("<d", time.time()) + b"\x10" + _varint(step) + what  # wall_time = 1, step = 2


FILE_VERSION = _field(3, b"brain.Event:2")
SESSION_START = _field(7, b"\x08\x01")  # session_log = 7: SessionLog {status = 1: START}


def summary(values):
    """The ``summary`` field (5) of ``values``, {tag: float}: Summary {value = 1: Value {tag = 1, simple_value = 2}}
    for each (a float32: beyond its range, infinite)."""
    with np.errstate(over="ignore"):
        floats = np.asarray(list(values.values()), "<f4")
    return _field(5, b"".join(_field(1, _field(1, tag.encode()) + b"\x15" + value.tobytes())
                              for tag, value in zip(values, floats)))


class EventLog:
    """A new event file in ``folder`` for a session that trains from step ``first_step`` on; appended to (and
    closed) at each write, as loss.csv is."""

    def __init__(self, folder, first_step):
        os.makedirs(folder, exist_ok=True)
        stamp = int(time.time())  # TensorBoard reads a folder's event files in name order: newest last
        while glob.glob(os.path.join(glob.escape(folder), f"events.out.tfevents.{stamp:010d}.*")):
            stamp += 1
        self.path = os.path.join(folder, f"events.out.tfevents.{stamp:010d}.{socket.gethostname()}.{os.getpid()}")
        self._write(event(0, FILE_VERSION), event(first_step, SESSION_START))

    def scalars(self, step, values):
        """One event of ``values`` ({tag: float}) at ``step``."""
        self._write(event(step, summary(values)))

    def _write(self, *events):
        with open(self.path, "ab") as f:
            f.write(b"".join(record(e) for e in events))
