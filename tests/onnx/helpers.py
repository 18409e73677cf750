"""Running a model in minidl and in ONNX Runtime on the same inputs."""
from __future__ import annotations

import numpy as np
import pytest

import minidl as mdl


def require_onnx():
    """Skip the calling test module (with the reason) unless onnx and ONNX Runtime are installed; returns onnx."""
    onnx = pytest.importorskip("onnx", reason="ONNX export and import need the onnx extra: pip install 'minidl[onnx]'")
    pytest.importorskip("onnxruntime", reason="the ONNX tests run ONNX Runtime: pip install 'minidl[onnx]'")
    return onnx


def minidl_forward(model, x):
    with mdl.no_grad():
        return model(mdl.tensor(x)).numpy()


def ort_forward(onnx_file, x):
    """ONNX Runtime's output for input ``x`` (a path or serialized bytes)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only
    session = onnxruntime.InferenceSession(str(onnx_file) if not isinstance(onnx_file, bytes) else onnx_file,
                                           options, providers=["CPUExecutionProvider"])
    (output,) = session.run(None, {session.get_inputs()[0].name: x})
    return output


def lively(model, seed=0):
    """He-initialized weights (and biases of 0.1), so logits are of order one and a wrong op shows."""
    rng = np.random.default_rng(seed)
    state = {}
    for name, array in model.state_dict().items():
        if name.endswith("weight") and array.ndim > 1:
            fan_in = int(np.prod(array.shape[1:]))
            state[name] = (rng.standard_normal(array.shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        elif name.endswith("bias"):
            state[name] = np.full(array.shape, 0.1, np.float32)
        else:
            state[name] = array
    model.load_state_dict(state)
    return model


def assert_close(actual, expected, tol=1e-4):
    """Equal shapes and values within ``tol``, on outputs large enough for that to mean something."""
    assert actual.shape == expected.shape
    assert float(np.abs(expected).std()) > 100 * tol, "outputs too small for the comparison to mean anything"
    assert float(np.abs(actual - expected).max()) <= tol, float(np.abs(actual - expected).max())
