"""The NumPy safetensors reader/writer: exact round trips, the byte layout,
bfloat16 widening, and a clear error for every malformed file."""
import json

import numpy as np
import pytest

from minigpt.errors import CheckpointError
from minigpt.safetensors_io import load_file, read_header, save_file


def _tensors():
    rng = np.random.default_rng(0)
    return {
        "w": rng.normal(size=(3, 5)).astype(np.float32),
        "d": rng.normal(size=(2, 2, 2)),
        "h": rng.normal(size=(4,)).astype(np.float16),
        "i": np.arange(6, dtype=np.int64).reshape(2, 3),
        "u": np.arange(7, dtype=np.uint8),
        "b": np.array([True, False, True]),
        "scalar": np.array(2.5, dtype=np.float32),
        "empty": np.zeros((0, 3), dtype=np.float32),
        "big_endian": np.arange(3, dtype=">f4"),
        "strided": np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::2],
    }


def test_round_trip_is_bit_exact(tmp_path):
    t = _tensors()
    save_file(t, tmp_path / "x.safetensors", metadata={"format": "pt"})
    back, meta = load_file(tmp_path / "x.safetensors")
    assert meta == {"format": "pt"}
    assert list(back) == list(t)  # file order is kept
    for k, a in t.items():
        assert back[k].shape == a.shape
        assert back[k].dtype == a.dtype.newbyteorder("=")
        assert back[k].tobytes() == np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("=")).tobytes()


def test_byte_layout(tmp_path):
    a = np.array([1.0, -2.0], dtype=np.float32)
    path = tmp_path / "x.safetensors"
    size = save_file({"a": a}, path)
    raw = path.read_bytes()
    assert size == len(raw)
    n = int.from_bytes(raw[:8], "little")
    assert (8 + n) % 8 == 0  # data region 8-byte aligned
    header = json.loads(raw[8 : 8 + n])
    assert header == {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
    assert raw[8 + n :] == a.astype("<f4").tobytes()


def _write_raw(path, header, data):
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + data)
    return path


def test_bf16_is_widened_exactly(tmp_path):
    x = np.array([1.0, -3.140625, 2.0**-100, 65280.0], dtype=np.float32)  # all exact in bfloat16
    bits = (x.view(np.uint32) >> 16).astype("<u2")
    path = _write_raw(tmp_path / "b.safetensors",
                      {"x": {"dtype": "BF16", "shape": [4], "data_offsets": [0, 8]}}, bits.tobytes())
    back, _ = load_file(path)
    assert back["x"].dtype == np.float32
    assert np.array_equal(back["x"], x)
    raw, _ = load_file(path, bf16_to_float32=False)
    assert np.array_equal(raw["x"], bits)


@pytest.mark.parametrize("header, data, message", [
    ({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, "outside the file"),
    ({"x": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, "needs 12"),
    ({"x": {"dtype": "Q7", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, "invalid header entry"),
    ({"x": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8, "invalid header entry"),
    ({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "y": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12, "overlaps"),
    ({"x": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12, "gap"),
    ({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 12, "after the last tensor"),
    ([1, 2], b"", "not a JSON object"),
])
def test_malformed_files_are_refused(tmp_path, header, data, message):
    path = _write_raw(tmp_path / "bad.safetensors", header, data)
    with pytest.raises(CheckpointError, match=message):
        load_file(path)


def test_truncated_and_foreign_files_are_refused(tmp_path):
    path = tmp_path / "x.safetensors"
    save_file({"a": np.ones(100, np.float32)}, path)
    raw = path.read_bytes()
    (tmp_path / "cut").write_bytes(raw[:-10])
    with pytest.raises(CheckpointError, match="outside the file"):
        load_file(tmp_path / "cut")
    (tmp_path / "tiny").write_bytes(b"\1\2")
    with pytest.raises(CheckpointError, match="too short"):
        read_header(tmp_path / "tiny")
    (tmp_path / "zip").write_bytes(b"PK\3\4" + b"\0" * 100)  # a huge "header length"
    with pytest.raises(CheckpointError, match="does not fit"):
        read_header(tmp_path / "zip")
    (tmp_path / "json").write_bytes((5).to_bytes(8, "little") + b"{nope")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_header(tmp_path / "json")


def test_unstorable_dtype_and_metadata_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="cannot store"):
        save_file({"c": np.ones(2, np.complex64)}, tmp_path / "c.safetensors")
    with pytest.raises(CheckpointError, match="strings"):
        save_file({"a": np.ones(2)}, tmp_path / "m.safetensors", metadata={"n": 1})
