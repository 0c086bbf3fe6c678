"""Read and write the safetensors format with NumPy alone.

A .safetensors file is three parts, nothing else:

    bytes [0, 8)          N, the header length: unsigned 64-bit little-endian
    bytes [8, 8 + N)      a UTF-8 JSON object, padded with spaces:
                          {name: {"dtype": "F32", "shape": [d0, d1, ...],
                                  "data_offsets": [begin, end]}, ...,
                           "__metadata__": {str: str}}        (optional)
    bytes [8 + N, end)    the tensors' raw bytes, little-endian, C order;
                          tensor `name` is data[begin:end], and the tensors
                          tile the data region without gaps or overlaps.

There is no pickle and no code, so reading an untrusted file is safe; that
is why minigpt exchanges weights with Hugging Face in this format. Writing
it here (rather than through the `safetensors` package) keeps export and
import working on a machine with only NumPy.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from .errors import CheckpointError

# safetensors dtype name -> NumPy dtype (explicitly little-endian).
# BF16 has no NumPy dtype: it is read as its raw 16 bits, see _bf16_to_f32.
DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"), "U32": np.dtype("<u4"), "U16": np.dtype("<u2"), "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"), "BF16": np.dtype("<u2"),
}
_NAMES = {np.dtype(d).newbyteorder("="): n for n, d in DTYPES.items() if n != "BF16"}
MAX_HEADER_BYTES = 100 * 2**20  # a header this large means a corrupt length field
_ALIGN = 8  # the header is padded so the data region starts 8-byte aligned


def dtype_name(dtype) -> str:
    """NumPy dtype -> safetensors name ("F32", ...)."""
    try:
        return _NAMES[np.dtype(dtype).newbyteorder("=")]
    except KeyError:
        raise CheckpointError(f"safetensors cannot store dtype {np.dtype(dtype)}") from None


def _bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    """bfloat16 is the top half of a float32, so widening is exact: shift the
    16 stored bits into the high half of a 32-bit word."""
    return (raw.astype(np.uint32) << 16).view(np.float32)


def save_file(tensors: dict, path, metadata: dict | None = None) -> int:
    """Write tensors (name -> array) to path atomically, in the given order.

    metadata: optional str -> str pairs stored under "__metadata__"
    (Hugging Face expects {"format": "pt"}). Returns the file size in bytes.
    """
    from .checkpoint import atomic_write  # lazy: checkpoint imports the model

    header, arrays, offset = {}, [], 0
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise CheckpointError("safetensors metadata must map strings to strings")
        header["__metadata__"] = dict(metadata)
    for name, a in tensors.items():
        a = np.asarray(a)
        name_ = dtype_name(a.dtype)
        a = np.asarray(a, dtype=DTYPES[name_], order="C")  # little-endian, C order (0-d kept)
        header[name] = {"dtype": name_, "shape": list(a.shape),
                        "data_offsets": [offset, offset + a.nbytes]}
        arrays.append(a)
        offset += a.nbytes
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-(8 + len(text)) % _ALIGN)

    def write(f):
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for a in arrays:
            f.write(a.tobytes())

    atomic_write(path, write)
    return 8 + len(text) + offset


def read_header(path) -> tuple[dict, dict, int]:
    """(tensor entries, metadata, data start) of a safetensors file, validated:
    every entry's byte range matches its dtype and shape, and the ranges
    tile the data region exactly."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        first = f.read(8)
        if len(first) < 8:
            raise CheckpointError(f"{path}: too short to be a safetensors file ({size} bytes)")
        n = int.from_bytes(first, "little")
        if n > min(size - 8, MAX_HEADER_BYTES):
            raise CheckpointError(f"{path}: header length {n} does not fit a {size}-byte file "
                                  "(truncated, or not a safetensors file)")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: the safetensors header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: the safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    data_len = size - 8 - n
    spans = []
    for name, e in header.items():
        try:
            dtype, shape, (begin, end) = DTYPES[e["dtype"]], e["shape"], e["data_offsets"]
            if not all(isinstance(d, int) and d >= 0 for d in shape):
                raise ValueError
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: tensor {name!r} has an invalid header entry {e!r}") from None
        if not 0 <= begin <= end <= data_len:
            raise CheckpointError(f"{path}: tensor {name!r} lies outside the file (truncated?)")
        if end - begin != math.prod(shape) * dtype.itemsize:
            raise CheckpointError(f"{path}: tensor {name!r} has {end - begin} bytes, but "
                                  f"{e['dtype']} {shape} needs {math.prod(shape) * dtype.itemsize}")
        spans.append((begin, end, name))
    covered = 0
    for begin, end, name in sorted(spans):
        if begin != covered:
            raise CheckpointError(f"{path}: tensor {name!r} overlaps another or leaves a gap before it")
        covered = end
    if covered != data_len:
        raise CheckpointError(f"{path}: {data_len - covered} bytes after the last tensor")
    return header, metadata, 8 + n


def load_file(path, bf16_to_float32=True) -> tuple[dict[str, np.ndarray], dict]:
    """(name -> array, metadata) of a safetensors file, arrays in file order.

    Arrays are owned copies in native byte order; BF16 tensors are widened
    to float32 (exactly) unless bf16_to_float32=False, which returns their
    raw uint16 bits.
    """
    header, metadata, start = read_header(path)
    out = {}
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=start) if header and \
        Path(path).stat().st_size > start else np.zeros(0, np.uint8)
    for name, e in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        begin, end = e["data_offsets"]
        a = np.array(data[begin:end]).view(DTYPES[e["dtype"]]).reshape(tuple(e["shape"]))
        a = a.astype(a.dtype.newbyteorder("="))
        if e["dtype"] == "BF16" and bf16_to_float32:
            a = _bf16_to_f32(a)
        out[name] = a
    del data  # close the mapping before returning
    return out, metadata
