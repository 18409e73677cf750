"""Weight import and export against a locally built torchvision-layout AlexNet in plain PyTorch:
the same logits and gradients after import (from .safetensors and from .pth), a bit-exact round
trip back into PyTorch and into minidl, and located errors for state dicts that do not fit."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is the reference here: pip install torch==2.13.0 (CPU build)")
from safetensors.torch import load_file as torch_load_safetensors  # noqa: E402
from safetensors.torch import save_file as torch_save_safetensors  # noqa: E402
from torch import nn  # noqa: E402

import minidl as mdl  # noqa: E402
from minidl.builder import build_model  # noqa: E402
from minidl.safetensors_io import read_header  # noqa: E402
from minidl.weights import load_weights, read_weight_file, save_weights  # noqa: E402

YAML = Path(__file__).resolve().parents[1] / "models" / "alexnet-torchvision.yaml"


class TorchAlexNet(nn.Module):
    """torchvision.models.alexnet's layout, module for module (torchvision itself is not installed)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(), nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(p=0.5), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(),
            nn.Dropout(p=0.5), nn.Linear(4096, 4096), nn.ReLU(),
            nn.Linear(4096, 1000),
        )

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


TORCHVISION_KEYS = [f"features.{i}.{k}" for i in (0, 3, 6, 8, 10) for k in ("weight", "bias")] + \
                   [f"classifier.{i}.{k}" for i in (1, 4, 6) for k in ("weight", "bias")]
GRAD_PARAMS = ["features.0.weight", "features.3.bias", "features.10.weight", "classifier.1.weight",
               "classifier.4.bias", "classifier.6.weight", "classifier.6.bias"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The PyTorch model with random weights (biases too), saved as .safetensors and as .pth."""
    torch.manual_seed(0)
    model = TorchAlexNet().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.uniform_(-0.1, 0.1)  # PyTorch's default bias init is small; make biases matter
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    directory = tmp_path_factory.mktemp("weights")
    files = {".safetensors": directory / "alexnet.safetensors", ".pth": directory / "alexnet.pth"}
    torch_save_safetensors(state, str(files[".safetensors"]))
    torch.save(state, files[".pth"])
    return model, state, files, directory


@pytest.fixture(scope="module")
def imported(reference):
    """minidl's alexnet-torchvision with the reference weights, from each file kind."""
    _, _, files, _ = reference
    models = {}
    for suffix, path in files.items():
        models[suffix] = build_model(YAML)
        load_weights(models[suffix], path)
        models[suffix].eval()
    return models


@pytest.fixture(scope="module")
def target():
    """A model to load bad files into (what a failed load leaves in it does not matter)."""
    return build_model(YAML)


def inputs(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_reference_layout_is_torchvisions(reference):
    model, state, _, _ = reference
    assert list(state) == TORCHVISION_KEYS
    assert sum(p.numel() for p in model.parameters()) == 61_100_840
    minidl_model = build_model(YAML)
    assert list(minidl_model.state_dict()) == TORCHVISION_KEYS
    assert {k: tuple(v.shape) for k, v in minidl_model.state_dict().items()} == \
           {k: tuple(v.shape) for k, v in state.items()}


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_import_copies_every_tensor_exactly(reference, imported, suffix):
    _, state, files, _ = reference
    own = imported[suffix].state_dict()
    for key, value in state.items():
        assert own[key].dtype == np.float32
        assert np.array_equal(np.asarray(own[key]), value.numpy()), key
    assert set(read_weight_file(files[suffix])) == set(state)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
@pytest.mark.parametrize("shape", [(2, 3, 224, 224), (1, 3, 288, 288)],
                         ids=["224", "288-adaptive-pool-resamples"])
def test_logits_match_pytorch(reference, imported, suffix, shape):
    model, _, _, _ = reference
    x = inputs(shape, seed=1)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    with mdl.no_grad():
        got = imported[suffix](mdl.tensor(x)).numpy()
    assert got.shape == expected.shape == (shape[0], 1000)
    assert np.abs(expected).max() > 1e-2  # not a trivially small output
    assert np.abs(got - expected).max() < 1e-4
    assert (got.argmax(1) == expected.argmax(1)).all()


def test_gradients_match_pytorch(reference, imported):
    model, _, _, _ = reference
    x = inputs((1, 3, 224, 224), seed=2)
    r = inputs((1, 1000), seed=3)  # loss = sum(logits * r): every logit gets its own upstream gradient

    xt = torch.from_numpy(x).requires_grad_(True)
    model.zero_grad()
    (model(xt) * torch.from_numpy(r)).sum().backward()
    expected = {"input": xt.grad.numpy()}
    expected.update({name: p.grad.numpy() for name, p in model.named_parameters() if name in GRAD_PARAMS})

    ours = imported[".safetensors"]
    ours.zero_grad()
    xm = mdl.tensor(x, requires_grad=True)
    (ours(xm) * mdl.tensor(r)).sum().backward()
    got = {"input": xm.grad.numpy()}
    params = dict(ours.named_parameters())
    got.update({name: params[name].grad.numpy() for name in GRAD_PARAMS})

    for name, want in expected.items():
        scale = np.abs(want).max()
        assert scale > 0, name
        np.testing.assert_allclose(got[name], want, rtol=1e-3, atol=1e-3 * scale, err_msg=name)
        # and as a whole: relative error of the gradient vector
        assert np.linalg.norm(got[name] - want) <= 1e-3 * np.linalg.norm(want), name


def test_export_loads_into_pytorch_and_back_bit_exact(reference, imported):
    model, state, _, directory = reference
    ours = imported[".pth"]
    path = directory / "exported.safetensors"
    assert save_weights(ours, path, metadata={"source": "alexnet.pth", "epoch": 3}) == path
    _, metadata, _ = read_header(path)
    assert metadata == {"source": "alexnet.pth", "epoch": "3"}

    # a PyTorch user loads it with the library they know, under names they recognise
    exported = torch_load_safetensors(str(path))
    assert set(exported) == set(TORCHVISION_KEYS)
    fresh_torch = TorchAlexNet()
    fresh_torch.load_state_dict(exported, strict=True)
    for key, value in fresh_torch.state_dict().items():
        assert value.dtype == torch.float32
        assert torch.equal(value, state[key]), key  # bit-exact: what went in to minidl comes back

    # and a fresh minidl model gets the very same bits
    fresh = build_model(YAML)
    load_weights(fresh, path)
    for key, value in ours.state_dict().items():
        assert np.array_equal(np.asarray(fresh.state_dict()[key]), np.asarray(value)), key
    x = inputs((1, 3, 224, 224), seed=4)
    with mdl.no_grad():
        assert np.array_equal(fresh.eval()(mdl.tensor(x)).numpy(), ours(mdl.tensor(x)).numpy())


# ----------------------------------------------------------------- errors and options
def save_state(state, path):
    if path.suffix == ".pth":
        torch.save(state, path)
    else:
        torch_save_safetensors(state, str(path))
    return path


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_missing_key_names_file_and_key(reference, target, suffix):
    _, state, _, directory = reference
    path = save_state({k: v for k, v in state.items() if k != "classifier.6.bias"}, directory / f"missing{suffix}")
    with pytest.raises(ValueError) as info:
        load_weights(target, path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "classifier.6.bias" in message and "missing" in message
    assert "features.0.weight" not in message  # only the missing one is listed


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_wrong_shape_names_file_key_and_shapes(reference, target, suffix):
    _, state, _, directory = reference
    bad = dict(state)
    bad["classifier.6.weight"] = torch.zeros(10, 4096)  # a 10-class head
    path = save_state(bad, directory / f"shape{suffix}")
    with pytest.raises(ValueError) as info:
        load_weights(target, path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "classifier.6.weight" in message
    assert "(10, 4096)" in message and "(1000, 4096)" in message


def test_unexpected_key_and_non_strict_load(reference, target):
    _, state, _, directory = reference
    extra = dict(state)
    extra["features.1.weight"] = torch.zeros(3)
    path = save_state(extra, directory / "extra.safetensors")
    with pytest.raises(ValueError, match=r"unexpected \['features.1.weight'\]") as info:
        load_weights(target, path)
    assert str(info.value).startswith(f"{path}: ")
    load_weights(target, path, strict=False)  # the extra name is ignored, everything else loads
    for key, value in state.items():
        assert np.array_equal(np.asarray(target.state_dict()[key]), value.numpy()), key

    partial = save_state({"classifier.6.bias": torch.full((1000,), 0.5)}, directory / "partial.pth")
    before = np.array(target.state_dict()["features.0.weight"])
    load_weights(target, partial, strict=False)
    assert (np.asarray(target.state_dict()["classifier.6.bias"]) == 0.5).all()
    assert np.array_equal(np.asarray(target.state_dict()["features.0.weight"]), before)  # untouched


def test_rename_strips_data_parallel_prefix_and_state_dict_wrapper(reference, target):
    _, state, _, directory = reference
    path = directory / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 7}, path)
    load_weights(target, path, rename={"module.": ""})
    for key, value in state.items():
        assert np.array_equal(np.asarray(target.state_dict()[key]), value.numpy()), key
    with pytest.raises(ValueError, match="missing"):
        load_weights(target, path)  # without the rename nothing matches


def test_unreadable_weight_files_are_value_errors_naming_the_file(tmp_path):
    model = build_model({"name": "m", "input": [4], "layers": [{"type": "linear", "out_features": 2}]})
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os
            return (os.system, (f"touch {marker}",))

    cases = {
        "evil.pth": lambda p: torch.save({"fc": Evil()}, p),  # a pickle that would run code
        "truncated.pth": lambda p: p.write_bytes(b"PK\x03\x04" + b"\0" * 20),
        "text.pth": lambda p: p.write_text("hello world"),
        "list.pth": lambda p: torch.save([torch.zeros(2)], p),
        "weights.npz": lambda p: p.write_bytes(b""),
    }
    for name, make in cases.items():
        path = tmp_path / name
        make(path)
        with pytest.raises(ValueError) as info:
            load_weights(model, path)
        assert str(info.value).startswith(f"{path}: "), (name, str(info.value))
        if name == "evil.pth":
            assert "refused" in str(info.value)
    assert not marker.exists()


def test_bfloat16_pth_is_widened(tmp_path):
    """Many published checkpoints are bfloat16; NumPy has no such dtype, so they load widened (exactly)."""
    model = build_model({"name": "m", "input": [4], "layers": [{"name": "fc", "type": "linear", "out_features": 2}]})
    w = torch.randn(2, 4).to(torch.bfloat16)
    path = tmp_path / "bf16.pth"
    torch.save({"fc.weight": w, "fc.bias": torch.zeros(2, dtype=torch.bfloat16)}, path)
    load_weights(model, path)
    assert np.array_equal(np.asarray(model.state_dict()["fc.weight"]), w.float().numpy())
