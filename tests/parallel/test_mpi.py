"""Data parallelism over real MPI processes (mpiexec from MPICH's wheel, mpi4py)."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from minidl.training.checkpoint import list_checkpoints, load_checkpoint

from ..training.conftest import TINY_MODEL, make_npz

pytest.importorskip("mpi4py", reason="MPI tests need mpi4py and an MPI: pip install 'minidl[mpi]'")
MPIEXEC = shutil.which("mpiexec", path=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
pytestmark = pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec (pip install mpich)")
LIMIT_S = 120  # MPIEXEC_TIMEOUT: a stuck job is killed instead of hanging the suite


@pytest.fixture
def tiny(tmp_path):
    model = tmp_path / "tiny.yaml"
    model.write_text(textwrap.dedent(TINY_MODEL).lstrip())
    return model, make_npz(tmp_path / "tiny.npz")


def _train(tiny, out, ranks=1, extra=(), wait=True):
    model, data = tiny
    command = [sys.executable, "-m", "minidl.cli", "train", str(model), "--data", str(data), "--out", str(out),
               "--no-progress", *extra]
    if ranks > 1:
        command = [MPIEXEC, "-n", str(ranks)] + command
    # MPIEXEC_TIMEOUT bounds an MPICH (Hydra) job; the OMPI_ pair lets Open MPI's mpiexec run as root
    # (as in containers and CI), which it otherwise refuses. Each MPI ignores the other's variables.
    env = dict(os.environ, MPIEXEC_TIMEOUT=str(LIMIT_S), OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    if not wait:
        return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=LIMIT_S + 30)


def _final_parameters(out):
    return load_checkpoint(list_checkpoints(Path(out) / "checkpoints")[-1])["model"]


def _assert_close(a, b):
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_two_processes_end_where_one_process_does(tiny, tmp_path):
    one = _train(tiny, tmp_path / "one", extra=["--steps", "20"])
    two = _train(tiny, tmp_path / "two", ranks=2, extra=["--steps", "20"])
    assert one.returncode == 0, one.stdout + one.stderr
    assert two.returncode == 0, two.stdout + two.stderr
    assert "data parallel over 2 MPI processes: global batch 16 (8 per process)" in two.stdout
    _assert_close(_final_parameters(tmp_path / "two"), _final_parameters(tmp_path / "one"))
    # only rank 0 wrote: one metrics row per epoch (20 steps of batch 16 over 160 images = 2 epochs)
    assert len((tmp_path / "two" / "metrics.jsonl").read_text().splitlines()) == 2
    assert two.stdout.count("epoch 2:") == 1


def test_every_rank_resumes_from_the_same_checkpoint(tiny, tmp_path):
    straight = _train(tiny, tmp_path / "straight", extra=["--steps", "15"])
    first = _train(tiny, tmp_path / "split", ranks=2, extra=["--steps", "7"])
    second = _train(tiny, tmp_path / "split", ranks=2, extra=["--steps", "15", "--resume"])
    for run in (straight, first, second):
        assert run.returncode == 0, run.stdout + run.stderr
    assert "resumed from" in second.stdout and "step 7" in second.stdout
    _assert_close(_final_parameters(tmp_path / "split"), _final_parameters(tmp_path / "straight"))


def _rank_pid(job_pid, rank):
    """The pid of MPI rank ``rank`` among the descendants of ``job_pid`` (from /proc)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            status = (entry / "status").read_text()
        except OSError:
            continue
        if f"PMI_RANK={rank}".encode() in environ and "minidl.cli" in (entry / "cmdline").read_text(errors="ignore"):
            parent = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
            while parent > 1:
                if parent == job_pid:
                    return int(entry.name)
                parent = int(next(line.split()[1] for line in
                                  Path(f"/proc/{parent}/status").read_text().splitlines() if line.startswith("PPid:")))
    return None


def test_a_dead_rank_ends_the_job_instead_of_hanging(tiny, tmp_path):
    job = _train(tiny, tmp_path / "dies", ranks=2, extra=["--steps", "100000"], wait=False)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "dies" / "metrics.jsonl").exists():  # both ranks are in the training loop
            assert job.poll() is None and time.monotonic() < deadline, job.communicate()[0]
            time.sleep(0.2)
        victim = _rank_pid(job.pid, 1)
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        output, _ = job.communicate(timeout=60)
        took = time.monotonic() - killed_at
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode != 0
    assert "signal 9" in output  # MPICH: "BAD TERMINATION ... signal 9"; Open MPI: "exited on signal 9 (Killed)"
    assert took < 30


def test_an_error_on_the_ranks_aborts_the_job(tiny, tmp_path):
    model, _ = tiny
    started = time.monotonic()
    run = _train((model, tmp_path / "missing.npz"), tmp_path / "bad", ranks=2, extra=["--steps", "5"])
    assert run.returncode != 0
    assert "missing.npz" in run.stderr and "aborting every rank" in run.stderr
    assert time.monotonic() - started < 60
