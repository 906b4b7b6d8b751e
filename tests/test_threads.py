"""torch's CPU threads (issue 15): asked for, or torch's count capped at the CPUs the process may use; a note when
other work already fills them; a resumed run keeps its checkpoint's count (exact resume on the CPU needs the same
split of the sums)."""
import pytest
import torch

from mmvae import devices
from mmvae.cli import main
from mmvae.datasets import SharedPrivateToy
from mmvae.models import build
from mmvae.trainer import Trainer


@pytest.fixture(autouse=True)
def _restore_threads(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setitem(devices._CHOSEN, "threads", None)
    yield
    torch.set_num_threads(before)


def _machine(monkeypatch, cpus: int, load: float):
    monkeypatch.setattr(devices, "usable_cpus", lambda: cpus)
    monkeypatch.setattr(devices, "busy_cpus", lambda: load)


def test_auto_caps_torch_at_the_usable_cpus_never_by_the_load(monkeypatch):
    torch.set_num_threads(2)
    _machine(monkeypatch, cpus=1, load=0.0)  # e.g. `taskset -c 0` or a container with --cpus=1
    n, why = devices.use_threads()
    assert n == 1 and torch.get_num_threads() == 1 and "may use" in why
    torch.set_num_threads(2)
    _machine(monkeypatch, cpus=2, load=7.0)
    assert devices.use_threads()[0] == 2  # the load changes no run's numbers, it only gets a note
    assert "--threads 1" in devices.oversubscribed(2) and devices.oversubscribed(1) is None
    _machine(monkeypatch, cpus=8, load=0.5)
    assert devices.oversubscribed(2) is None


def test_usable_cpus_reads_the_affinity_mask():
    import os

    assert 1 <= devices.usable_cpus() <= len(os.sched_getaffinity(0))


def test_a_requested_count_wins_and_sticks_and_omp_num_threads_is_respected(monkeypatch):
    _machine(monkeypatch, cpus=2, load=4.0)
    assert devices.use_threads(2) == (2, "requested") and torch.get_num_threads() == 2
    assert devices.use_threads()[0] == 2  # a later automatic pick keeps the caller's choice
    monkeypatch.setitem(devices._CHOSEN, "threads", None)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert devices.pick_threads() == (2, "OMP_NUM_THREADS")
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="threads must be an integer >= 1"):
            devices.pick_threads(bad)


def test_trainer_records_its_threads_and_a_resume_keeps_the_checkpoints(tmp_path, monkeypatch):
    _machine(monkeypatch, cpus=2, load=0.0)
    train = SharedPrivateToy(n=64, seed=0)
    model = build("mopoe", train, shared_dim=2)
    Trainer(model, max_epochs=1, batch_size=32, device="cpu", out=tmp_path / "run", progress=False,
            threads=1).fit(train)
    assert torch.get_num_threads() == 1
    monkeypatch.setitem(devices._CHOSEN, "threads", None)
    torch.set_num_threads(2)
    Trainer(build("mopoe", train, shared_dim=2), max_epochs=2, batch_size=32, device="cpu", out=tmp_path / "run",
            progress=False, resume=tmp_path / "run" / "last.pt").fit(train)
    assert torch.get_num_threads() == 1  # the checkpoint's count, not torch's 2
    with pytest.raises(Exception, match="threads"):
        Trainer(model, threads=0)


def test_cli_threads_flag_sets_the_count_and_rejects_nonsense(tmp_path, capsys):
    torch.set_num_threads(2)
    assert main(["--threads", "1", "compare", str(tmp_path / "missing")]) == 2  # set before the command runs
    assert torch.get_num_threads() == 1 and devices._CHOSEN["threads"] == 1
    with pytest.raises(SystemExit):
        main(["--threads", "0", "demo"])
    assert "expects an integer >= 1" in capsys.readouterr().err
