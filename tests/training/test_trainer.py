"""Trainer.fit leaves the process's SIGINT handler alone unless asked (``minidl train`` asks)."""
from __future__ import annotations

import signal

import pytest

from minidl.training.checkpoint import list_checkpoints
from minidl.training.recipe import prepare


def _trainer(tiny, out=None, interrupt_at=None):
    """A real tiny Trainer whose optimizer step records the SIGINT handler (and can raise a real SIGINT)."""
    model, data = tiny
    trainer = prepare(str(model), data=str(data), steps=4, out=out, progress=False, workers=1)
    seen = []
    step = trainer.optimizer.step

    def recording_step():
        step()
        seen.append(signal.getsignal(signal.SIGINT))
        if interrupt_at is not None and len(seen) == interrupt_at:
            signal.raise_signal(signal.SIGINT)

    trainer.optimizer.step = recording_step
    return trainer, seen


@pytest.fixture
def own_handler():
    def handler(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, handler)
    yield handler
    signal.signal(signal.SIGINT, previous)


def test_fit_does_not_touch_sigint_by_default(tiny, own_handler):
    trainer, seen = _trainer(tiny)
    trainer.fit()
    assert seen == [own_handler] * 4
    assert signal.getsignal(signal.SIGINT) is own_handler


def test_ctrl_c_interrupts_a_default_fit_as_usual(tiny, own_handler):
    trainer, seen = _trainer(tiny, interrupt_at=2)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert len(seen) == 2


def test_handle_sigint_finishes_the_step_checkpoints_and_restores_the_handler(tiny, tmp_path, own_handler):
    trainer, seen = _trainer(tiny, out=tmp_path / "run", interrupt_at=2)
    trainer.fit(handle_sigint=True)
    assert len(seen) == 2 and all(handler is not own_handler for handler in seen)  # swapped while fit ran
    assert signal.getsignal(signal.SIGINT) is own_handler  # and given back
    assert trainer.step == 2 and list_checkpoints(tmp_path / "run" / "checkpoints")


@pytest.mark.parametrize("precision, cuda_graph", [("fp32", "off"), ("fp16", "off"), ("fp32", "on")])
def test_no_gpu_reads_between_metric_reads(precision, cuda_graph, tiny, cuda):
    # a GPU training step copies nothing to the host and never waits for the GPU, eager or replayed from a
    # CUDA graph; the trainer reads the loss and accuracy every check_every steps (the backend counts every
    # read and wait). prepare_step is the optimizer's host half, which runs once per step either way.
    from minidl import backend

    model, data = tiny
    trainer = prepare(str(model), data=str(data), steps=12, progress=False, workers=1, device=cuda,
                      precision=precision, cuda_graph=cuda_graph)
    trainer.check_every = 4
    reads = []
    prepare_step = trainer.optimizer.prepare_step

    def counting_step():
        prepare_step()
        reads.append(backend.device_reads())

    trainer.optimizer.prepare_step = counting_step
    trainer.fit()
    deltas = [{k: b[k] - a[k] for k in a} for a, b in zip(reads, reads[1:])]
    for i, delta in enumerate(deltas, start=2):  # between step i - 1's update and step i's
        if (i - 1) % 4:
            assert delta == {"host_reads": 0, "synchronizations": 0}, (i, delta)
    assert any(d["host_reads"] for d in deltas)  # the metric reads are counted
    assert len(reads) == 12 and (trainer.step_graph.replays > 0) == (cuda_graph == "on")


def test_evaluation_on_a_gpu_reads_back_once_not_per_batch(tiny, cuda):
    # loss and top-k counts stay on the device over all batches: three reads at the end, however many batches
    from minidl import backend
    from minidl.training.metrics import evaluate

    model, data = tiny
    trainer = prepare(str(model), data=str(data), steps=1, progress=False, workers=1, device=cuda)
    on_cpu = prepare(str(model), data=str(data), steps=1, progress=False, workers=1)
    on_cpu.model.load_state_dict(trainer.model.state_dict())
    trainer.val_loader.batch_size = on_cpu.val_loader.batch_size = 10  # 5 batches of the 48 test images
    before = backend.device_reads()["host_reads"]
    result = evaluate(trainer.model, trainer.val_loader)
    assert backend.device_reads()["host_reads"] - before == 3
    assert len(trainer.val_loader) > 3  # more batches than reads
    expected = evaluate(on_cpu.model, on_cpu.val_loader)
    assert result["top1"] == expected["top1"] and result["top5"] == expected["top5"]
    assert result["loss"] == pytest.approx(expected["loss"], rel=1e-5)
