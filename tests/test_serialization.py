"""mdl.save / mdl.load round trips through a real file; no pickle."""
from __future__ import annotations

import numpy as np

import minidl as mdl
import minidl.functions as F
from minidl.plugins import registry
from minidl.safetensors_io import read_header


def test_save_and_load_a_built_model_with_optimizer(tmp_path):
    model = mdl.build_model({"name": "m", "input": [3], "layers": [{"type": "linear", "out_features": 2}]})
    opt = registry("optimizers").create("adam", list(model.parameters()), lr=0.1)
    x = mdl.tensor(np.ones((4, 3), np.float32))
    F.cross_entropy(model(x), np.array([0, 1, 0, 1])).backward()
    opt.step()
    path = mdl.save(tmp_path / "m.safetensors", model, opt, epoch=3)
    loaded = mdl.load(path)
    assert loaded.meta["epoch"] == 3
    np.testing.assert_array_equal(loaded.model(x).numpy(), model(x).numpy())
    opt2 = registry("optimizers").create("adam", list(loaded.model.parameters()), lr=0.1)
    opt2.load_state_dict(loaded.optimizer_state)
    for o, m in ((opt, model), (opt2, loaded.model)):
        o.zero_grad()
        F.cross_entropy(m(x), np.array([1, 1, 0, 0])).backward()
        o.step()
    for (n, a), (_, b) in zip(model.named_parameters(), loaded.model.named_parameters()):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=n)
    header, metadata, _ = read_header(path)  # a plain safetensors file: tensors plus JSON text
    assert "model/linear0.weight" in header and "optimizer/0/exp_avg" in header and "minidl" in metadata
