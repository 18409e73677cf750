"""Defensive safetensors reading: hand-crafted malicious or broken files are refused with a
SafetensorsError (a ValueError) that names the file and the problem, before anything is
allocated for them; files the safetensors library writes are read back exactly."""
from __future__ import annotations

import json
import struct
import tracemalloc
from datetime import timedelta

import numpy as np
import pytest
import safetensors.numpy
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file

from minidl.safetensors_io import ALLOWED_DTYPES, MAX_HEADER_BYTES, SafetensorsError, read_header, read_safetensors


def craft(path, header=None, data=b"", raw_header=None, header_len=None):
    """Write ``path`` as <u64 header length><header JSON><data>, any part of it possibly lying."""
    raw = raw_header if raw_header is not None else json.dumps(header).encode()
    n = len(raw) if header_len is None else header_len
    path.write_bytes(struct.pack("<Q", n) + raw + data)
    return path


def entry(dtype, shape, begin, end):
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


@pytest.fixture
def library_never_called(monkeypatch):
    """Fail if a refused file reaches the safetensors library (which allocates what the header says)."""
    def load_file(*args, **kwargs):
        raise AssertionError("safetensors.numpy.load_file was called for a file that should have been refused")

    monkeypatch.setattr(safetensors.numpy, "load_file", load_file)


def refused(path, *fragments):
    """Both entry points refuse ``path`` with a message naming it and every fragment; returns the message."""
    messages = []
    for reader in (read_header, read_safetensors):
        with pytest.raises(SafetensorsError) as info:
            reader(path)
        assert isinstance(info.value, ValueError)
        message = str(info.value)
        assert message.startswith(f"{path}: "), message
        for fragment in fragments:
            assert fragment in message, (fragment, message)
        messages.append(message)
    assert messages[0] == messages[1]
    return messages[0]


F32_4 = np.arange(4, dtype=np.float32).tobytes()  # 16 bytes


# ----------------------------------------------------------------- the length prefix
def test_file_shorter_than_the_length_prefix(tmp_path, library_never_called):
    for n in (0, 7):
        path = tmp_path / f"short{n}.safetensors"
        path.write_bytes(b"\x01" * n)
        refused(path, "too short", f"({n} bytes)")


@pytest.mark.parametrize("claimed", [100, 2**40, 2**64 - 1])
def test_header_length_larger_than_the_file(tmp_path, library_never_called, claimed):
    path = craft(tmp_path / "long.safetensors", {"a": entry("F32", [4], 0, 16)}, F32_4, header_len=claimed)
    size = path.stat().st_size
    assert claimed > size - 8
    refused(path, f"header length {claimed}", f"larger than the file ({size} bytes)")


def test_header_length_over_the_limit_is_not_read(tmp_path, library_never_called):
    path = tmp_path / "sparse.safetensors"
    claimed = MAX_HEADER_BYTES + 1
    with open(path, "wb") as f:  # a sparse file big enough to hold the claimed header: costs no disk
        f.write(struct.pack("<Q", claimed))
        f.truncate(8 + claimed + 64)
    tracemalloc.start()
    try:
        refused(path, f"header length {claimed}", "limit")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20  # the 100 MiB header was never read into memory


# ----------------------------------------------------------------- truncation
def test_truncated_files(tmp_path, library_never_called):
    good = tmp_path / "good.safetensors"
    save_file({"a": np.ones((4, 4), np.float32), "b": np.arange(3, dtype=np.int64)}, str(good))
    blob = good.read_bytes()
    header_len = struct.unpack("<Q", blob[:8])[0]
    # inside the header: the length now claims more than there is
    path = tmp_path / "cut_header.safetensors"
    path.write_bytes(blob[:8 + header_len // 2])
    refused(path, "larger than the file")
    # inside the data: the last tensor runs past the end
    path = tmp_path / "cut_data.safetensors"
    path.write_bytes(blob[:-5])
    message = refused(path, "go past the end of the data")
    assert "'a'" in message or "'b'" in message


# ----------------------------------------------------------------- the JSON header
@pytest.mark.parametrize("raw,fragment", [
    (b"", "not valid JSON"),
    (b"{not json}", "not valid JSON"),
    (b'{"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}', "not valid JSON"),  # unclosed
    (b'{"a": "\xff\xfe"}', "not valid JSON"),                                                # not UTF-8
    (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),                                     # nesting bomb
    (b'{"a": {"dtype": "F32", "shape": [' + b"9" * 5000 + b'], "data_offsets": [0, 16]}}', "not valid JSON"),
    (b"[1, 2, 3]", "not a JSON object"),
    (b'"a string"', "not a JSON object"),
], ids=["empty", "garbage", "unclosed", "not-utf8", "deep", "5000-digit-int", "array", "string"])
def test_invalid_json_header(tmp_path, library_never_called, raw, fragment):
    refused(craft(tmp_path / "json.safetensors", raw_header=raw, data=F32_4), fragment)


def test_duplicate_tensor_names(tmp_path, library_never_called):
    raw = (b'{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, '
           b'"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}')
    refused(craft(tmp_path / "dup.safetensors", raw_header=raw, data=F32_4), "duplicate name 'w'")


@pytest.mark.parametrize("dtype", ["F8_E4M3", "U64", "C64", "O", "object", "f32", "", None, 4])
def test_dtype_outside_the_allowed_list(tmp_path, library_never_called, dtype):
    path = craft(tmp_path / "dtype.safetensors", {"t": entry(dtype, [4], 0, 16)}, F32_4)
    refused(path, "tensor 't'", f"dtype {dtype!r} is not allowed", "F32")


@pytest.mark.parametrize("info,fragment", [
    ({"dtype": "F32", "shape": [4]}, "exactly dtype, shape, data_offsets"),
    ({"dtype": "F32", "shape": [4], "data_offsets": [0, 16], "extra": 1}, "exactly dtype, shape, data_offsets"),
    ("not a mapping", "exactly dtype, shape, data_offsets"),
    (entry("F32", [-4], 0, 16), "bad shape"),
    (entry("F32", [2.0, 2], 0, 16), "bad shape"),
    (entry("F32", [True, 4], 0, 16), "bad shape"),
    (entry("F32", "4", 0, 16), "bad shape"),
    ({"dtype": "F32", "shape": [4], "data_offsets": [16, 0]}, "bad data_offsets"),
    ({"dtype": "F32", "shape": [4], "data_offsets": [-16, 0]}, "bad data_offsets"),
    ({"dtype": "F32", "shape": [4], "data_offsets": [0, 8, 16]}, "bad data_offsets"),
    ({"dtype": "F32", "shape": [4], "data_offsets": [0, 16.0]}, "bad data_offsets"),
], ids=["no-offsets", "extra-key", "string", "negative-dim", "float-dim", "bool-dim", "string-shape",
        "reversed", "negative-offset", "three-offsets", "float-offset"])
def test_malformed_entries(tmp_path, library_never_called, info, fragment):
    refused(craft(tmp_path / "entry.safetensors", {"t": info}, F32_4), "tensor 't'", fragment)


@pytest.mark.parametrize("metadata", [[1, 2], {"epoch": 3}, "text"])
def test_metadata_must_map_names_to_strings(tmp_path, library_never_called, metadata):
    path = craft(tmp_path / "meta.safetensors", {"__metadata__": metadata, "a": entry("F32", [4], 0, 16)}, F32_4)
    refused(path, "__metadata__")


# ----------------------------------------------------------------- offsets against shapes and the data
@pytest.mark.parametrize("dtype,shape,span,needed", [
    ("F32", [2, 2], (0, 12), 16),
    ("F64", [2], (0, 8), 16),
    ("I8", [3], (0, 4), 3),
    ("F32", [0], (0, 4), 0),
])
def test_shape_and_byte_size_disagree(tmp_path, library_never_called, dtype, shape, span, needed):
    data = b"\0" * span[1]
    path = craft(tmp_path / "size.safetensors", {"t": entry(dtype, shape, *span)}, data)
    refused(path, "tensor 't'", f"needs {needed} bytes", f"offsets span {span[1] - span[0]}")


def test_offsets_past_the_end(tmp_path, library_never_called):
    path = craft(tmp_path / "past.safetensors", {"a": entry("F32", [2], 0, 8), "b": entry("F32", [4], 8, 24)}, F32_4)
    refused(path, "tensor 'b'", "offsets [8, 24] go past the end of the data (16 bytes)")


def test_overlapping_tensors(tmp_path, library_never_called):
    header = {"a": entry("F32", [3], 0, 12), "b": entry("F32", [2], 8, 16)}
    refused(craft(tmp_path / "overlap.safetensors", header, F32_4), "tensor 'b' overlaps", "offset 8")
    header = {"a": entry("F32", [4], 0, 16), "alias": entry("F32", [4], 0, 16)}  # the same bytes twice
    refused(craft(tmp_path / "alias.safetensors", header, F32_4), "overlaps")


def test_gap_between_tensors(tmp_path, library_never_called):
    header = {"a": entry("F32", [1], 0, 4), "b": entry("F32", [2], 8, 16)}
    refused(craft(tmp_path / "gap.safetensors", header, F32_4), "gap of 4 bytes before tensor 'b'")
    header = {"b": entry("F32", [2], 8, 16)}  # nothing accounts for the first 8 bytes
    refused(craft(tmp_path / "lead.safetensors", header, F32_4), "gap of 8 bytes before tensor 'b'")


def test_trailing_bytes(tmp_path, library_never_called):
    path = craft(tmp_path / "trail.safetensors", {"a": entry("F32", [4], 0, 16)}, F32_4 + b"\0" * 5)
    refused(path, "5 bytes after the last tensor")
    path = craft(tmp_path / "hidden.safetensors", {}, b"payload")
    refused(path, "7 bytes after the last tensor")


# ----------------------------------------------------------------- huge claims
@pytest.mark.parametrize("shape,span", [
    ([1 << 20, 1 << 20], (0, 16)),          # 4 TiB claimed, 16 bytes present
    ([1 << 32, 1 << 32], (0, 0)),           # 2**64 elements: wraps to 0 in int64 arithmetic
    ([3, 1 << 62], (0, 0)),                 # wraps to a negative size in int64
    ([1 << 21] * 3, (0, 16)),
], ids=["4TiB", "wraps-to-zero", "wraps-negative", "3d"])
def test_huge_tensor_is_refused_before_allocating(tmp_path, library_never_called, shape, span):
    path = craft(tmp_path / "huge.safetensors", {"big": entry("F32", shape, *span)}, b"\0" * span[1])
    tracemalloc.start()
    try:
        message = refused(path, "tensor 'big'", f"needs {4 * int(np.prod(shape, dtype=object))} bytes")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, peak
    assert "-" not in message.split("needs")[1].split("bytes")[0]


# ----------------------------------------------------------------- valid files
def test_reads_back_what_the_library_wrote(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {
        "f32": rng.standard_normal((3, 5)).astype(np.float32),
        "f64": rng.standard_normal(7),
        "f16": rng.standard_normal((2, 2)).astype(np.float16),
        "i8": np.array([-128, 0, 127], np.int8),
        "u8": np.arange(10, dtype=np.uint8),
        "i16": np.array([[1, -2]], np.int16),
        "i32": np.arange(-3, 3, dtype=np.int32).reshape(2, 3),
        "i64": np.array([2**40, -1]),
        "bool": np.array([True, False, True]),
        "scalar": np.array(3.5, np.float32),
        "empty": np.zeros((0, 4), np.float32),
    }
    path = tmp_path / "ok.safetensors"
    save_file(tensors, str(path), metadata={"format": "np", "epoch": "3"})
    header, metadata, offset = read_header(path)
    assert metadata == {"format": "np", "epoch": "3"}
    assert set(header) == set(tensors)
    assert offset == 8 + struct.unpack("<Q", path.read_bytes()[:8])[0]
    assert header["f32"]["dtype"] == "F32" and header["f32"]["shape"] == [3, 5]
    assert {info["dtype"] for info in header.values()} <= set(ALLOWED_DTYPES)
    loaded = read_safetensors(path)
    assert set(loaded) == set(tensors)
    for name, array in tensors.items():
        assert loaded[name].dtype == array.dtype, name
        assert loaded[name].shape == array.shape, name
        assert np.array_equal(loaded[name], array), name


def test_empty_file_with_no_tensors_is_valid(tmp_path):
    path = tmp_path / "none.safetensors"
    save_file({}, str(path))
    assert read_header(path)[:2] == ({}, {})
    assert read_safetensors(path) == {}


def test_bf16_is_read_with_ml_dtypes(tmp_path):
    pytest.importorskip("ml_dtypes")
    # bfloat16 1.0 = 0x3F80 and 2.0 = 0x4000, little-endian
    path = craft(tmp_path / "bf16.safetensors", {"h": entry("BF16", [2], 0, 4)}, b"\x80\x3f\x00\x40")
    loaded = read_safetensors(path)
    assert loaded["h"].astype(np.float32).tolist() == [1.0, 2.0]


# ----------------------------------------------------------------- any corruption: accepted or refused, nothing else
def _valid_blob() -> bytes:
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "v.safetensors"
        save_file({"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.arange(4, dtype=np.int64)}, str(path),
                  metadata={"k": "v"})
        return path.read_bytes()


VALID = _valid_blob()


@settings(deadline=timedelta(seconds=5), max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(st.sampled_from(["flip", "cut", "insert", "delete"]),
                                st.integers(0, len(VALID)), st.binary(min_size=1, max_size=4)), min_size=1, max_size=4))
@example(edits=[("flip", 0, b"\xff")])          # the length prefix
@example(edits=[("cut", 20, b"")])
@example(edits=[("insert", len(VALID), b"\0")])  # one trailing byte
def test_corrupted_files_are_read_exactly_or_refused(tmp_path, edits):
    blob = bytearray(VALID)
    for op, i, chunk in edits:
        i = min(i, len(blob))
        if op == "flip" and i < len(blob):
            blob[i] ^= chunk[0] or 1
        elif op == "cut":
            del blob[i:]
        elif op == "insert":
            blob[i:i] = chunk
        elif op == "delete":
            del blob[i:i + len(chunk)]
    path = tmp_path / "fuzz.safetensors"
    path.write_bytes(bytes(blob))
    try:
        loaded = read_safetensors(path)
    except SafetensorsError as e:
        assert str(e).startswith(f"{path}: ")
        return
    header, _, offset = read_header(path)
    # accepted: what came back is exactly what the (consistent) header describes
    data = bytes(blob[offset:])
    assert set(loaded) == set(header)
    for name, info in header.items():
        begin, end = info["data_offsets"]
        assert list(loaded[name].shape) == info["shape"]
        assert loaded[name].tobytes() == data[begin:end]
