"""Reading and writing weight files tensor by tensor: safetensors and MindSpore ``.ckpt``.

Both readers memory-map the file and hand out one tensor at a time, so a 7-14 GB SDXL file is
never held in memory as a whole; both writers stream to a temporary file renamed at the end,
so an interrupted write never leaves a partial file under the final name.

The ``.ckpt`` format is MindSpore's protobuf ``Checkpoint`` (repeated ``value`` {tag, tensor
{dims, tensor_type, tensor_content}}, large tensors split into several values with the same
tag); files written here load with ``mindspore.load_checkpoint`` and vice versa.
"""
import json
import math
import mmap
import os
import struct
from contextlib import contextmanager

import numpy as np

from gm.errors import WeightFileError
from gm.files import atomic_output


SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": "bf16",
                      "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
                      "U8": np.uint8, "BOOL": np.bool_}
CKPT_DTYPES = {"Float32": np.float32, "Float16": np.float16, "Float64": np.float64, "BFloat16": "bf16",
               "Int64": np.int64, "Int32": np.int32, "Int16": np.int16, "Int8": np.int8,
               "UInt8": np.uint8, "Bool": np.bool_}
CKPT_SLICE_BYTES = 512 * 1024 * 1024


def _bf16_to_f32(raw):
    return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)


def _array(buf, offset, nbytes, dtype, shape):
    if dtype == "bf16":
        return _bf16_to_f32(np.frombuffer(buf, np.uint16, nbytes // 2, offset)).reshape(shape)
    return np.frombuffer(buf, dtype, nbytes // np.dtype(dtype).itemsize, offset).reshape(shape)


def _itemsize(dtype):
    return 2 if dtype == "bf16" else np.dtype(dtype).itemsize


def _natural(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def safetensors_index(header, data_start, file_size):
    """(metadata, {key: (dtype name, shape, file offset, byte count)}) of a parsed safetensors header.

    Every entry is checked: a known dtype, a shape of non-negative integers, ``data_offsets`` [begin, end]
    with ``0 <= begin <= end``, exactly ``prod(shape) x itemsize`` bytes, inside the file, and no two
    entries sharing bytes. Raises WeightFileError naming the tensor (the caller adds the file).
    """
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise WeightFileError("not a safetensors file (__metadata__ is not a mapping of strings)")
    index, spans = {}, []
    for key, info in header.items():
        if key == "__metadata__":
            continue
        where = f"tensor {key}"
        if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
            raise WeightFileError(f"{where}: not a safetensors entry (expected dtype, shape and data_offsets)")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPES:
            raise WeightFileError(f"{where}: unsupported dtype {dtype!r} (known: {', '.join(SAFETENSORS_DTYPES)})")
        if not isinstance(shape, list) or not all(_natural(d) for d in shape):
            raise WeightFileError(f"{where}: shape {shape!r} is not a list of non-negative integers")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_natural(o) for o in offsets)
                and offsets[0] <= offsets[1]):
            raise WeightFileError(f"{where}: data_offsets {offsets!r} are not [begin, end] with 0 <= begin <= end")
        begin, end = offsets
        nbytes = math.prod(shape) * _itemsize(SAFETENSORS_DTYPES[dtype])
        if end - begin != nbytes:
            raise WeightFileError(f"{where}: shape {shape} of {dtype} needs {nbytes} bytes but its data_offsets "
                                  f"[{begin}, {end}] hold {end - begin} (a damaged or miswritten header)")
        if data_start + end > file_size:
            raise WeightFileError(f"truncated ({where} ends at byte {data_start + end}, the file has {file_size})")
        index[key] = (dtype, tuple(shape), data_start + begin, nbytes)
        if nbytes:
            spans.append((begin, end, key))
    spans.sort()
    for (_, end, first), (begin, _next_end, second) in zip(spans, spans[1:]):
        if begin < end:
            raise WeightFileError(f"tensors {first} and {second} overlap (data bytes {begin} to {end} belong to "
                                  "both; a damaged or miswritten header)")
    return metadata, index


class _MappedFile:
    def __init__(self, path):
        if not os.path.isfile(path):
            raise WeightFileError(f"{path}: no such file")
        self.path = path
        self._file = open(path, "rb")
        size = os.fstat(self._file.fileno()).st_size
        self.size = size
        self.buf = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) if size else b""

    # ``index``: {key: (dtype, shape, ...)}, filled by the subclass from the file's header.
    def keys(self):
        return list(self.index)

    def shape(self, key):
        return self.index[key][1]

    def dtype(self, key):
        return self.index[key][0]

    def close(self):
        """Close the file; the mapping stays alive while arrays returned by ``get`` still use it."""
        if isinstance(self.buf, mmap.mmap):
            try:
                self.buf.close()
            except BufferError:
                pass
        self._file.close()


class SafetensorsReader(_MappedFile):
    """Lazy reader: ``keys()``, ``shape(k)``, ``dtype(k)``, ``get(k)`` (float32 for bf16).

    The header is checked whole before any tensor is handed out (:func:`safetensors_index`): every file
    reader of the toolkit (``--weight``, conversion, embeddings, the app) goes through this one check.
    """

    def __init__(self, path):
        super().__init__(path)
        try:
            if self.size < 8:
                raise ValueError("shorter than a header")
            (n,) = struct.unpack("<Q", self.buf[:8])
            if n > self.size - 8 or n > 100_000_000:
                raise ValueError("header length past the end of the file")
            header = json.loads(bytes(self.buf[8:8 + n]))
            if not isinstance(header, dict):
                raise ValueError(f"the header is a JSON {type(header).__name__}, not an object")
        except (ValueError, UnicodeDecodeError) as e:
            self.close()
            raise WeightFileError(f"{path}: not a safetensors file ({e})") from None
        try:
            self.metadata, self.index = safetensors_index(header, 8 + n, self.size)
        except WeightFileError as e:
            self.close()
            raise WeightFileError(f"{path}: {e}") from None

    def get(self, key):
        dtype, shape, offset, nbytes = self.index[key]
        return _array(self.buf, offset, nbytes, SAFETENSORS_DTYPES[dtype], shape)


def _varint(buf, pos):
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def _fields(buf, start, end):
    """Yield (field number, wire type, value or (offset, length)) of a protobuf message."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield field, wire, value
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > end:
                raise ValueError("field past the end of its message")
            yield field, wire, (pos, length)
            pos += length
        else:
            raise ValueError(f"unexpected wire type {wire}")


class CkptReader(_MappedFile):
    """Lazy reader of a MindSpore ``.ckpt`` with the same interface as :class:`SafetensorsReader`."""

    def __init__(self, path):
        super().__init__(path)
        self.index = {}
        try:
            if self.size == 0:
                raise ValueError("empty file")
            for field, wire, value in _fields(self.buf, 0, self.size):
                if field != 1 or wire != 2:
                    raise ValueError("not a Checkpoint message")
                self._add_value(value[0], value[0] + value[1])
        except (ValueError, IndexError, UnicodeDecodeError, TypeError) as e:
            self.close()
            raise WeightFileError(f"{path}: not a readable MindSpore checkpoint ({e})") from None
        for tag, (dtype, shape, pieces) in self.index.items():
            if dtype == "str":
                continue
            nbytes, stored = math.prod(shape) * _itemsize(CKPT_DTYPES[dtype]), sum(n for _, n in pieces)
            if nbytes != stored:
                self.close()
                raise WeightFileError(f"{path}: tensor {tag}: shape {list(shape)} of {dtype} needs {nbytes} bytes "
                                      f"but the file holds {stored} (a damaged checkpoint)")

    def _add_value(self, start, end):
        tag, tensor = None, None
        for field, _, value in _fields(self.buf, start, end):
            if field == 1:
                tag = bytes(self.buf[value[0]:value[0] + value[1]]).decode()
            elif field == 2:
                tensor = value
        if tag is None or tensor is None:
            raise ValueError("value without tag or tensor")
        dims, dtype, pieces = [], None, []
        for field, wire, value in _fields(self.buf, tensor[0], tensor[0] + tensor[1]):
            if field == 1 and wire == 0:
                dims.append(value)
            elif field == 1:
                dims.extend(_varint_list(self.buf, *value))
            elif field == 2:
                dtype = bytes(self.buf[value[0]:value[0] + value[1]]).decode()
            elif field == 3:
                pieces.append(value)
        if dtype not in CKPT_DTYPES and dtype != "str":
            raise ValueError(f"unsupported tensor type {dtype} for {tag}")
        if tag in self.index:
            self.index[tag][2].extend(pieces)
        else:
            self.index[tag] = (dtype, tuple(dims), pieces)

    def get(self, key):
        """The tensor (a str for MindSpore's string entries, e.g. ``append_dict`` values)."""
        dtype, shape, pieces = self.index[key]
        if dtype == "str":
            return b"".join(bytes(self.buf[off:off + n]) for off, n in pieces).decode("utf-32-le")
        np_dtype = CKPT_DTYPES[dtype]
        if len(pieces) == 1:
            return _array(self.buf, pieces[0][0], pieces[0][1], np_dtype, shape)
        flat = [_array(self.buf, off, n, np_dtype, (-1,)) for off, n in pieces]
        return np.concatenate(flat).reshape(shape)


def _varint_list(buf, offset, length):
    out, pos = [], offset
    while pos < offset + length:
        value, pos = _varint(buf, pos)
        out.append(value)
    return out


READERS = {".safetensors": SafetensorsReader, ".ckpt": CkptReader}


@contextmanager
def open_weights(path):
    """Open a ``.safetensors`` or ``.ckpt`` file by its extension (:data:`READERS`); close it afterwards."""
    reader_class = READERS.get(os.path.splitext(path)[1].lower())
    if reader_class is None:
        raise WeightFileError(f"{path}: unknown weight file type (expected .safetensors or .ckpt)")
    reader = reader_class(path)
    try:
        yield reader
    finally:
        reader.close()


def _pb_key(field, wire):
    return _pb_varint((field << 3) | wire)


def _pb_varint(value):
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _pb_bytes(field, payload):
    return _pb_key(field, 2) + _pb_varint(len(payload)) + payload


def _ckpt_type(dtype):
    for name, np_dtype in CKPT_DTYPES.items():
        if np_dtype != "bf16" and np.dtype(np_dtype) == dtype:
            return name
    raise WeightFileError(f"cannot store dtype {dtype} in a .ckpt")


def write_ckpt(path, items):
    """Write ``(name, array or str)`` pairs from an iterable to ``path`` as a MindSpore checkpoint."""
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        for name, array in items:
            head = _pb_bytes(1, name.encode())
            if isinstance(array, str):
                tensor = _pb_key(1, 0) + _pb_varint(0) + _pb_bytes(2, b"str") + _pb_bytes(3, array.encode("utf-32-le"))
                f.write(_pb_bytes(1, head + _pb_bytes(2, tensor)))
                continue
            array = np.ascontiguousarray(array)
            dims = b"".join(_pb_key(1, 0) + _pb_varint(int(d)) for d in array.shape)
            ttype = _pb_bytes(2, _ckpt_type(array.dtype).encode())
            flat = array.reshape(-1)
            step = max(1, CKPT_SLICE_BYTES // max(array.itemsize, 1))
            for start in range(0, max(flat.size, 1), step):
                tensor = dims + ttype + _pb_bytes(3, flat[start:start + step].tobytes())
                f.write(_pb_bytes(1, head + _pb_bytes(2, tensor)))


def write_safetensors(path, items, metadata=None):
    """Write safetensors from ``(name, shape, dtype, produce)`` entries, one tensor in memory at a time.

    ``produce()`` returns the array; shapes and dtypes are declared up front for the header.
    """
    names = {np.dtype(v): k for k, v in SAFETENSORS_DTYPES.items() if v != "bf16"}
    header, offset = {}, 0
    for name, shape, dtype, _ in items:
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        header[name] = {"dtype": names[np.dtype(dtype)], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for name, shape, dtype, produce in items:
            array = np.asarray(produce(), dtype=dtype, order="C")
            if tuple(array.shape) != tuple(shape):
                raise WeightFileError(f"{name}: produced shape {array.shape}, declared {tuple(shape)}")
            f.write(array.tobytes())
