"""Whole-step CUDA graphs (minidl.training.cuda_graph): the switch, the reasons, and eager == captured."""
from __future__ import annotations

import numpy as np
import pytest

from minidl.spec import ModelError
from minidl.training.cuda_graph import WARMUP_STEPS, StepGraph
from minidl.training.recipe import prepare


def _weights(trainer):
    return {name: p.numpy().copy() for name, p in trainer.model.named_parameters()}


def _with_train_line(tiny, line):
    model, data = tiny
    text = model.read_text().replace("  seed: 3\n", f"  seed: 3\n  {line}\n")
    model.write_text(text)
    return str(model), str(data)


@pytest.mark.parametrize("written, mode", [("off", "off"), ("on", "on"), ("auto", "auto"), ("'off'", "off")])
def test_model_file_switch_reads_yaml_on_and_off(tiny, written, mode):
    # YAML 1.1 reads a bare on/off as a boolean; the switch takes either spelling
    model, data = _with_train_line(tiny, f"cuda_graph: {written}")
    trainer = prepare(model, data=data, steps=1, progress=False, workers=1)
    assert trainer.step_graph.mode == mode and not trainer.step_graph.active  # never on a CPU


def test_model_file_switch_refuses_other_values_with_the_line(tiny):
    model, data = _with_train_line(tiny, "cuda_graph: always")
    with pytest.raises(ModelError, match=r"train.cuda_graph must be one of auto, on, off.*'always'") as info:
        prepare(model, data=data, steps=1, progress=False, workers=1)
    assert "tiny.yaml:" in str(info.value)


def test_step_graph_refuses_an_unknown_mode():
    with pytest.raises(ValueError, match="cuda_graph must be one of auto, on, off, got 'yes'"):
        StepGraph("yes", None, None, None, print)


@pytest.mark.parametrize("mode", ["auto", "on", "off"])
def test_on_a_cpu_training_is_eager_and_on_says_why_once(tiny, mode, capsys):
    model, data = tiny
    trainer = prepare(str(model), data=str(data), steps=WARMUP_STEPS + 3, progress=False, workers=1,
                      cuda_graph=mode)
    trainer.fit()
    said = [line for line in capsys.readouterr().out.splitlines() if "cuda_graph" in line]
    if mode == "on":
        assert said == ["cuda_graph on: running eagerly: CUDA graphs need a GPU; this run is on cpu:0"]
    else:
        assert said == []
    assert trainer.step_graph.replays == 0 and trainer.step == WARMUP_STEPS + 3
    reference = prepare(str(model), data=str(data), steps=WARMUP_STEPS + 3, progress=False, workers=1,
                        cuda_graph="off")
    reference.fit()
    for name, value in _weights(reference).items():
        np.testing.assert_array_equal(_weights(trainer)[name], value, err_msg=name)


def test_refusals_name_the_reason(tiny):
    model, data = tiny
    fp16 = prepare(str(model), data=str(data), steps=1, progress=False, workers=1, precision="fp16")
    assert "fp16 loss scaling" in fp16._capture_refusal()
    trainer = prepare(str(model), data=str(data), steps=1, progress=False, workers=1)
    assert trainer.check_every == 1 and "check_every=1" in trainer._capture_refusal()  # the CPU's default
    trainer.check_every = 50  # a GPU's default
    assert trainer._capture_refusal() is None


def test_captured_training_ends_at_the_eager_weights(tiny, cuda, capsys):
    # dropout (counter-based, moved on between replays), SGD with momentum and weight decay, and a learning
    # rate that changes every step (cosine with warm-up, per step): one capture, then replays
    model, data = tiny
    runs = {}
    for mode in ("off", "on"):
        trainer = prepare(str(model), data=str(data), steps=WARMUP_STEPS + 12, progress=False, workers=1,
                          device=cuda, cuda_graph=mode)
        trainer.fit()
        runs[mode] = trainer
    captured = runs["on"].step_graph
    assert captured.graph is not None and captured.replays == 12, captured.reason
    assert "the training step is captured after 3 eager steps" in capsys.readouterr().out
    eager, graphed = _weights(runs["off"]), _weights(runs["on"])
    for name in eager:
        np.testing.assert_allclose(graphed[name], eager[name], rtol=1e-5, atol=1e-6, err_msg=name)
    assert [row["train_loss"] for row in runs["on"].history] == pytest.approx(
        [row["train_loss"] for row in runs["off"].history], rel=1e-5)
    assert runs["on"].optimizer.step_count == runs["off"].optimizer.step_count == WARMUP_STEPS + 12


def test_captured_adam_with_a_step_schedule(tiny, cuda):
    # Adam's bias corrections and the learning rate come from device memory on each replay
    model, data = tiny
    model.write_text(model.read_text().replace("{type: sgd, lr: 0.05, momentum: 0.9, weight_decay: 5.0e-4}",
                                               "{type: adamw, lr: 0.01}"))
    runs = {}
    for mode in ("off", "on"):
        trainer = prepare(str(model), data=str(data), steps=WARMUP_STEPS + 6, progress=False, workers=1,
                          device=cuda, cuda_graph=mode)
        trainer.fit()
        runs[mode] = _weights(trainer), trainer.step_graph.replays
    assert runs["on"][1] == 6
    for name, value in runs["off"][0].items():
        np.testing.assert_allclose(runs["on"][0][name], value, rtol=1e-5, atol=1e-6, err_msg=name)
