"""Fuzzing the model-file reader and builder: whatever is in the file, ``build_model`` either
builds a model that runs, or raises ModelError naming the file (and a line that exists).

Three sources of input: (a) random edits of real model files, (b) random YAML documents built
from the keys and layer types the builder knows, (c) random bytes and text. A model that does
build must also run forward and produce the output shape the builder inferred, since a file
that builds and then fails on its first batch is a validation error reported too late.
"""
from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import minidl as mdl
from minidl.builder import build_model
from minidl.spec import ModelError
from minidl.summary import summarize

MODELS = Path(__file__).resolve().parents[1] / "models"
MINI_TEXT = (MODELS / "alexnet-mini.yaml").read_text(encoding="utf-8")

# Small but exercising everything: block and flow style, a graph (two columns, concat, add),
# every parameter kind (ints, pairs, floats, bools, strings, initializer mappings) and a train section.
SMALL_TEXT = """\
# a small graph model
name: small
input: [2, 9, 9]
layers:
  - name: a
    type: conv2d
    out_channels: 4
    kernel_size: [3, 3]
    padding: 1
    inputs: input
    weight_init: {type: normal, std: 0.01}
    bias_init: 1
  - {name: b, type: conv2d, out_channels: 4, kernel_size: 1, groups: 2, inputs: input}
  - {name: cat, type: concat, inputs: [a, b]}
  - {name: norm, type: lrn, size: 3, alpha: 1.0e-4, beta: 0.75, k: 2.0, convention: paper}
  - {name: bn, type: batchnorm2d}
  - {name: relu, type: relu}
  - {name: pool, type: maxpool2d, kernel_size: 3, stride: 2, ceil_mode: true}
  - {name: avg, type: avgpool2d, kernel_size: 2, stride: 1, padding: 1}
  - {name: res, type: add, inputs: [avg, avg]}
  - {name: ada, type: adaptive_avgpool2d, output_size: 2}
  - {name: flat, type: flatten}
  - {name: drop, type: dropout, p: 0.5}
  - {name: fc, type: linear, out_features: 3}
  - {name: out, type: log_softmax, axis: 1}
output: out
train:
  epochs: 2
  batch_size: 4
  optimizer: {type: sgd, lr: 0.1, momentum: 0.9}
  scheduler: {type: cosine, t_max: 2}
"""

# Deadlines are per example; every layer, initializer and registry is warmed up first (below) so
# that a first-call import does not count as a slow example.
FUZZ = settings(deadline=timedelta(seconds=5),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])

# what YAML itself counts as a line break (the reader maps \r\n and \r to \n before PyYAML sees them)
_YAML_BREAKS = re.compile(r"\r\n|[\r\n\x85\u2028\u2029]")
# models that do build are run forward only when that is cheap (a fuzzed file may legitimately
# describe a large network)
_MAX_FORWARD_MACS = 30_000_000
_MAX_FORWARD_BYTES = 64 << 20


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory):
    build_model(yaml.safe_load(SMALL_TEXT))  # warm up every registry the files can reach
    build_model(MODELS / "alexnet-mini.yaml")
    return tmp_path_factory.mktemp("fuzz")


def check_file(path: Path, data: bytes):
    """Build ``path`` (holding ``data``): a ModelError with a real location, or a model that runs."""
    try:
        model = build_model(path)
    except ModelError as e:  # anything else escaping fails the test with its traceback
        assert isinstance(e, ValueError)
        assert str(e).startswith(f"{path}"), str(e)
        assert e.source == str(path)
        assert e.message and e.message in str(e)
        if e.line is not None:
            text = data.decode("utf-8")  # a line number means the file was read as text
            lines = _YAML_BREAKS.split(text)
            assert 1 <= e.line <= len(lines), f"line {e.line} of a {len(lines)}-line file: {e}"
            assert 1 <= e.column <= len(lines[e.line - 1]) + 1, f"column {e.column} of {lines[e.line - 1]!r}: {e}"
            assert str(e).startswith(f"{path}:{e.line}:{e.column}: ")
        else:
            assert e.column is None
        return None
    check_runs(model)
    return model


def check_runs(model):
    """A model that built runs forward in eval mode and gives the output shape the builder inferred."""
    output_node = next(n for n in model.nodes if n.name == model.output)
    summary = summarize(model, batch=2)
    if summary["macs"] > _MAX_FORWARD_MACS or summary["activation_bytes"] > _MAX_FORWARD_BYTES:
        return
    x = mdl.tensor(np.random.default_rng(0).standard_normal((2,) + model.input_shape).astype(np.float32))
    with mdl.no_grad():
        y = model.eval()(x)
    assert tuple(y.shape) == (2,) + output_node.output_shape, (y.shape, output_node.output_shape)


def write_and_check(directory: Path, data: bytes, name="model.yaml"):
    path = directory / name
    path.write_bytes(data)
    return check_file(path, data)


# ----------------------------------------------------------------- the bases are valid
@pytest.mark.parametrize("text", [MINI_TEXT, SMALL_TEXT], ids=["alexnet-mini", "small"])
def test_unmutated_bases_build_and_run(fuzz_dir, text):
    model = write_and_check(fuzz_dir, text.encode())
    assert model is not None and len(model.nodes) > 10


# ----------------------------------------------------------------- (a) mutations of real files
INSERT_ALPHABET = ":-[]{},&*!#|>?%@.~ \n\t'\"abc"


@st.composite
def mutations(draw, base: str):
    """``base`` after 1-6 random edits: character deletions/insertions/swaps, span deletions,
    line deletions, duplications and swaps. Never inserts digits, so numbers only change by
    deletion and nothing gets large enough to allocate much."""
    text = base
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["delete", "delete_span", "insert", "swap_chars", "delete_line",
                                   "duplicate_line", "swap_lines"]))
        if op in ("delete_line", "duplicate_line", "swap_lines"):
            lines = text.split("\n")
            i = draw(st.integers(0, len(lines) - 1))
            j = draw(st.integers(0, len(lines) - 1))
            if op == "delete_line":
                del lines[i]
            elif op == "duplicate_line":
                lines.insert(j, lines[i])
            else:
                lines[i], lines[j] = lines[j], lines[i]
            text = "\n".join(lines)
        elif op == "insert":
            i = draw(st.integers(0, len(text)))
            chars = draw(st.text(INSERT_ALPHABET, min_size=1, max_size=3))
            text = text[:i] + chars + text[i:]
        elif not text:
            continue
        elif op == "delete":
            i = draw(st.integers(0, len(text) - 1))
            text = text[:i] + text[i + 1:]
        elif op == "delete_span":
            i = draw(st.integers(0, len(text) - 1))
            n = draw(st.integers(1, 12))
            text = text[:i] + text[i + n:]
        else:  # swap_chars
            i = draw(st.integers(0, len(text) - 1))
            j = draw(st.integers(0, len(text) - 1))
            chars = list(text)
            chars[i], chars[j] = chars[j], chars[i]
            text = "".join(chars)
    return text


@settings(FUZZ, max_examples=150)
@given(text=mutations(MINI_TEXT))
def test_mutated_alexnet_mini(fuzz_dir, text):
    write_and_check(fuzz_dir, text.encode("utf-8"))


@settings(FUZZ, max_examples=200)
@given(text=mutations(SMALL_TEXT))
@example(text=SMALL_TEXT.replace("output: out", "output: [out]"))       # an unhashable output name
@example(text=SMALL_TEXT.replace("output: out", "output: {out: 1}"))
@example(text=SMALL_TEXT.replace("inputs: [a, b]", "inputs: [a, a]"))   # the same input twice
@example(text=SMALL_TEXT.replace("axis: 1", "axis: 7"))                 # softmax axis out of range
@example(text=SMALL_TEXT.replace("size: 3,", "size: 0,"))               # empty LRN window
@example(text=SMALL_TEXT.replace("padding: 1}", "padding: 3}"))          # avg pool over padding only
@example(text=SMALL_TEXT.replace("stride: 2, ceil", "padding: 2, stride: 2, ceil"))  # max pool pad > k/2
@example(text=SMALL_TEXT.replace("output_size: 2", "output_size: [2, 2, 2]"))
@example(text=SMALL_TEXT.replace("{name: bn, type: batchnorm2d}", "{name: bn, type: batchnorm2d, num_features: 0}"))
@example(text=SMALL_TEXT.replace("{name: bn, type: batchnorm2d}", "{name: bn, type: batchnorm2d, num_features: 3}"))
@example(text=SMALL_TEXT + "\n\n  - unclosed: [1, 2\n")                 # error at the end of the file
@example(text="name: 'm\r\ninput: [1]\r\n")                             # CRLF and an open quote at EOF
def test_mutated_small_model(fuzz_dir, text):
    write_and_check(fuzz_dir, text.encode("utf-8"))


# ----------------------------------------------------------------- (b) random documents
# layer type -> (required keys, optional keys), as the built-in layers declare them
LAYER_PARAMS = {
    "conv2d": (["out_channels", "kernel_size"],
               ["stride", "padding", "dilation", "groups", "bias", "in_channels", "weight_init", "bias_init"]),
    "linear": (["out_features"], ["in_features", "bias", "weight_init", "bias_init"]),
    "maxpool2d": (["kernel_size"], ["stride", "padding", "dilation", "ceil_mode"]),
    "avgpool2d": (["kernel_size"], ["stride", "padding", "ceil_mode", "count_include_pad"]),
    "adaptive_avgpool2d": (["output_size"], []),
    "batchnorm2d": ([], ["num_features", "eps", "momentum", "affine", "weight_init", "bias_init"]),
    "lrn": ([], ["size", "alpha", "beta", "k", "convention"]),
    "dropout": ([], ["p"]),
    "flatten": ([], ["start_dim"]),
    "relu": ([], []),
    "softmax": ([], ["axis"]),
    "log_softmax": ([], ["axis"]),
    "concat": ([], ["axis"]),
    "add": ([], []),
}
LAYER_TYPES = sorted(LAYER_PARAMS) + ["conv2D", "Linear", "nope"]
KEYS = sorted({k for required, optional in LAYER_PARAMS.values() for k in required + optional} | {
    "name", "input", "layers", "output", "train", "type", "inputs", "std", "epochs", "batch_size", "optimizer",
    "scheduler", "lr", "t_max", "augmentation", "seed", "kernal_size"})
NAMES = ["a", "b", "c", "d"]  # few, so that ``inputs`` often names an earlier layer

def weighted(*choices):
    """One of several strategies, each (weight, strategy) chosen with probability ~ weight."""
    return st.sampled_from([s for weight, s in choices for _ in range(weight)]).flatmap(lambda s: s)


small_ints = st.integers(0, 20)
scalars = st.one_of(
    small_ints, st.none(), st.booleans(),
    st.sampled_from([0.0, 0.5, 1.0e-4, 0.75, 2.0, -1.0, 1.5]),
    st.sampled_from(LAYER_TYPES + KEYS + NAMES + ["input", "paper", "pytorch", "normal", "sgd", "", "1x"]),
    st.text(max_size=6),
)
keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=6), small_ints, st.none(), st.booleans())
any_value = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=5)),
    max_leaves=25,
)
sizes = st.one_of(st.integers(1, 4), st.integers(1, 4), small_ints, st.lists(small_ints, max_size=3))
names = st.one_of(st.sampled_from(NAMES), st.sampled_from(NAMES), st.sampled_from(["input", "", "1x", "a b"]))
VALUES = {
    "out_channels": st.integers(1, 8) | small_ints, "groups": st.integers(1, 3) | small_ints,
    "kernel_size": sizes, "stride": sizes, "padding": st.integers(0, 2) | sizes, "dilation": sizes,
    "output_size": sizes, "in_channels": small_ints, "out_features": st.integers(1, 8) | small_ints,
    "in_features": small_ints, "num_features": small_ints, "size": small_ints,
    "axis": st.integers(-5, 5), "start_dim": st.integers(-1, 4),
    "p": st.sampled_from([0.0, 0.5, 0.9, 1.0, -0.5]), "eps": st.sampled_from([1e-5, 0, 1]),
    "momentum": st.sampled_from([0.1, 0, 1]), "k": st.sampled_from([0, 1, 2.0]),
    "alpha": st.sampled_from([0, 1.0e-4, 1]), "beta": st.sampled_from([0, 0.75, 2]),
    "ceil_mode": st.booleans(), "count_include_pad": st.booleans(), "bias": st.booleans(), "affine": st.booleans(),
    "convention": st.sampled_from(["paper", "pytorch", "x"]),
    "weight_init": st.one_of(small_ints, st.sampled_from(["normal", "zeros", "kaiming_uniform", "bogus"]),
                             st.fixed_dictionaries({"type": st.sampled_from(["normal", "uniform", "constant"])},
                                                   optional={"std": small_ints, "value": small_ints})),
    "bias_init": st.one_of(small_ints, st.sampled_from(["zeros", "ones", "normal"])),
}
inputs = st.one_of(names, st.lists(names, min_size=1, max_size=3))
typed_layers = st.one_of(*[
    st.fixed_dictionaries({"type": st.just(t), **{k: VALUES[k] for k in required}},
                          optional={"name": names, "inputs": inputs, **{k: VALUES[k] for k in optional}})
    for t, (required, optional) in LAYER_PARAMS.items()])
junk_layers = st.one_of(  # wrong keys or types, or anything at all
    st.fixed_dictionaries({"type": st.sampled_from(LAYER_TYPES)},
                          optional={k: st.one_of(VALUES.get(k, scalars), any_value) for k in KEYS if k != "type"}),
    any_value,
)
layers = weighted((6, typed_layers), (1, junk_layers))
train_sections = st.one_of(
    st.fixed_dictionaries({}, optional={
        "epochs": small_ints, "batch_size": st.one_of(small_ints, any_value), "seed": small_ints,
        "optimizer": st.fixed_dictionaries({"type": st.sampled_from(["sgd", "adam", "sdg", ""])},
                                           optional={"lr": st.sampled_from([0.1, 1, "x"]), "momentum": scalars}),
        "scheduler": st.fixed_dictionaries({"type": st.sampled_from(["cosine", "step", "nope"])},
                                           optional={"t_max": small_ints, "step_size": small_ints}),
        "augmentation": st.lists(any_value, max_size=2),
    }),
    any_value,
)
model_documents = st.fixed_dictionaries(
    {"name": weighted((4, st.just("m")), (1, scalars)),
     "input": weighted((3, st.lists(st.integers(1, 12), min_size=3, max_size=3)),
                       (1, st.lists(st.integers(1, 12), min_size=1, max_size=3)),
                       (1, st.lists(small_ints, max_size=4)), (1, any_value)),
     "layers": weighted((6, st.lists(layers, min_size=1, max_size=6)), (1, any_value))},
    optional={"output": weighted((4, names), (1, any_value)), "train": train_sections},
)
documents = weighted(
    (8, model_documents),
    (1, st.tuples(model_documents, keys, any_value).map(lambda t: {**t[0], t[1]: t[2]})),  # maybe an unknown key
    (1, any_value),
)


@settings(FUZZ, max_examples=300)
@given(document=documents)
@example(document={"name": "m", "input": [3, 4, 4], "layers": [{"type": "relu"}], "output": ["relu0"]})
@example(document={"name": "m", "input": [3, 4, 4], "layers": [{"type": "add", "inputs": ["input", "input"]}]})
@example(document={"name": "m", "input": [3], "layers": [{"type": "softmax", "axis": 2}]})
@example(document={"name": "m", "input": [3, 4], "layers": [{"type": "adaptive_avgpool2d", "output_size": 1}]})
def test_random_documents(fuzz_dir, document):
    text = yaml.safe_dump(document, default_flow_style=bool(len(str(document)) % 2))
    write_and_check(fuzz_dir, text.encode("utf-8"))


# ----------------------------------------------------------------- (c) random bytes and text
@settings(FUZZ, max_examples=150)
@given(data=st.one_of(
    st.binary(max_size=400),
    st.text(max_size=200).map(lambda t: t.encode("utf-8")),
    st.tuples(st.integers(0, len(SMALL_TEXT)), st.binary(min_size=1, max_size=8)).map(
        lambda t: SMALL_TEXT.encode()[:t[0]] + t[1] + SMALL_TEXT.encode()[t[0]:]),
))
@example(data=b"")
@example(data=b"\xff\xfe\x00\x00")
@example(data=b"\xef\xbb\xbfname: m\n")
@example(data=b"name: m\x00\n")
@example(data=b"name: [\x85\xe2\x80\xa8")
def test_random_bytes(fuzz_dir, data):
    write_and_check(fuzz_dir, data)


# ----------------------------------------------------------------- located errors, pinned
@pytest.mark.parametrize("text,line", [
    ("name: m\ninput: [1, 4, 4\n", 3),      # the scanner reports the end of the stream: one past the last line
    ("name: m\ninput: [1]\nlayers: [{type: relu}]\noutput: [x]\n", 4),
    ("name: m\ninput: [1]\nlayers: [{type: relu}]\noutput: nope\n", 4),
], ids=["unclosed-at-eof", "output-list", "output-unknown"])
def test_errors_point_at_a_line_of_the_file(fuzz_dir, text, line):
    path = fuzz_dir / "pinned.yaml"
    path.write_text(text)
    with pytest.raises(ModelError) as info:
        build_model(path)
    assert info.value.line == line and str(info.value).startswith(f"{path}:{line}:")
