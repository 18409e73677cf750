"""The example plugin's fixtures, from tests/plugins (the ONNX test modules skip without the onnx extra)."""
from __future__ import annotations

from ..plugins.conftest import fresh_plugins, swish_installed  # noqa: F401 (fixtures)
