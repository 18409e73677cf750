"""ONNX tests need the `onnx` extra; the example plugin's fixtures come from tests/plugins."""
from __future__ import annotations

import pytest

from ..plugins.conftest import fresh_plugins, swish_installed  # noqa: F401 (fixtures)

pytest.importorskip("onnx", reason="ONNX export and import need the onnx extra: pip install 'minidl[onnx]'")
pytest.importorskip("onnxruntime", reason="ONNX parity runs ONNX Runtime: pip install 'minidl[onnx]'")
