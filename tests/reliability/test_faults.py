"""Issue 14.1 and 14.6: every output is written atomically, and a write that fails (disk full, read-only folder,
file-size limit, I/O error) is one `mmvae CMD: error: cannot write PATH: REASON` line with exit code 2 that leaves
the previous file as it was and no temporary file behind.

Disk full is made real where the machine allows it (a tmpfs of a few MiB, mounted as root) and by a
fault-injecting file object otherwise; each case prints which. A file-size limit is real everywhere
(RLIMIT_FSIZE in a subprocess); an I/O error is injected.
"""
from __future__ import annotations

import errno
import json
import resource
import subprocess

import numpy as np
import pytest
from fault_helpers import (
    TRAIN,
    can_mount,
    copy_run,
    fill,
    inject,
    note_method,
    one_error_line,
    remount_readonly,
    run_cli,
    temporaries,
    tmpfs,
    train_run,
)
from reliability_helpers import count, driver_command, subprocess_env

from mmvae import cli
from mmvae.cli.commands import COMMANDS, Command

MOUNT, WHY_NOT = can_mount()
METHOD = ["tmpfs", "injected"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_run(tmp_path_factory.mktemp("faults") / "run", epochs=1)


@pytest.fixture
def run(trained, tmp_path):
    return copy_run(trained, tmp_path / "run")


def _method(method: str, kind: str) -> str:
    """The method a case uses here: a real tmpfs when asked and possible, else fault injection (saying why)."""
    if method == "tmpfs" and not MOUNT:
        note_method(kind, f"fault-injecting file object (no tmpfs: {WHY_NOT})")
        return "injected"
    note_method(kind, "real tmpfs mount" if method == "tmpfs" else "fault-injecting file object")
    return method


def _impute_input(tmp_path):
    x = np.random.default_rng(0).normal(size=(8, 6)).astype(np.float32)
    path = tmp_path / "in.npz"
    np.savez(path, m0=x, m1=np.full_like(x, np.nan), m2=x)
    return path


@pytest.mark.parametrize("method", METHOD)
def test_impute_on_full_disk_keeps_previous_output(run, tmp_path, capsys, monkeypatch, method):
    method = _method(method, "disk full")
    src = _impute_input(tmp_path)
    disk = tmp_path / "disk"
    with (tmpfs(disk, "2m") if method == "tmpfs" else _plain(disk)):
        out = disk / "filled.npz"
        assert run_cli(capsys, "impute", run, "--input", src, "--out", out)[0] == 0
        before = out.read_bytes()
        if method == "tmpfs":
            fill(disk)
        else:
            inject(monkeypatch, errno.ENOSPC, budget=1000)
        code, _, err = run_cli(capsys, "impute", run, "--input", src, "--out", out)
        line = one_error_line(err, "impute")
        assert code == 2 and f"cannot write {out}: No space left on device" in line, err
        assert out.read_bytes() == before and not temporaries(disk)
        np.load(out)  # still a good archive
    count("disk_full")


@pytest.mark.parametrize("method", METHOD)
def test_train_checkpoint_on_full_disk(trained, tmp_path, capsys, monkeypatch, method):
    method = _method(method, "disk full")
    disk = tmp_path / "disk"
    with (tmpfs(disk, "16m") if method == "tmpfs" else _plain(disk)):
        run = copy_run(trained, disk / "run")
        before = (run / "last.pt").read_bytes()
        if method == "tmpfs":
            fill(disk)
        else:
            inject(monkeypatch, errno.ENOSPC, budget=4096, only="last.pt")
        code, _, err = run_cli(capsys, *TRAIN, "--epochs", "2", "--out", run, "--resume", run)
        line = one_error_line(err, "train")
        assert code == 2 and "cannot write" in line and "No space left on device" in line, err
        assert "unexpected pos" not in err and "enforce fail" not in err
        assert (run / "last.pt").read_bytes() == before and not temporaries(run)
    count("disk_full")


def _plain(folder):
    import contextlib

    folder.mkdir(parents=True, exist_ok=True)
    return contextlib.nullcontext(folder)


def test_evaluate_on_full_disk_keeps_metrics_and_report(run, tmp_path, capsys, monkeypatch):
    note_method("disk full", "fault-injecting file object")
    args = ["evaluate", run, "--quick", "--metrics", "imputation", "--device", "cpu", "--set", "plot_tuples=2"]
    assert run_cli(capsys, *args)[0] == 0
    metrics, report = (run / "metrics.json").read_bytes(), (run / "report.md").read_bytes()
    inject(monkeypatch, errno.ENOSPC, budget=100)
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and "cannot write" in one_error_line(err, "evaluate") and "No space left" in err
    assert (run / "metrics.json").read_bytes() == metrics and (run / "report.md").read_bytes() == report
    json.loads(metrics)
    monkeypatch.undo()
    code, _, err = run_cli(capsys, "compare", run, "--out", tmp_path / "cmp", "--device", "cpu")
    assert code == 0, err
    count("disk_full")


@pytest.mark.parametrize("err,reason", [(errno.EIO, "Input/output error"), (errno.EROFS, "Read-only file system"),
                                        (errno.EFBIG, "File too large"), (errno.EDQUOT, "Disk quota exceeded")])
def test_injected_write_faults_are_one_line(run, tmp_path, capsys, monkeypatch, err, reason):
    before = (run / "last.pt").read_bytes()
    inject(monkeypatch, err, budget=0)
    code, _, stderr = run_cli(capsys, *TRAIN, "--epochs", "2", "--out", run, "--resume", run)
    assert code == 2 and reason in one_error_line(stderr, "train"), stderr
    assert (run / "last.pt").read_bytes() == before and not temporaries(run)
    count("write_faults")


def test_read_only_run_folder(trained, tmp_path, capsys, monkeypatch):
    disk = tmp_path / "ro"
    if MOUNT:
        note_method("read-only", "real tmpfs remounted read-only")
        ctx = tmpfs(disk, "16m")
    else:
        note_method("read-only", f"fault-injecting file object raising EROFS (no tmpfs: {WHY_NOT})")
        ctx = _plain(disk)
    with ctx:
        run = copy_run(trained, disk / "run")
        before = (run / "last.pt").read_bytes()
        if MOUNT:
            remount_readonly(disk)
        else:
            inject(monkeypatch, errno.EROFS)
        code, _, err = run_cli(capsys, *TRAIN, "--epochs", "2", "--out", run, "--resume", run)
        assert code == 2 and "Read-only file system" in one_error_line(err, "train"), err
        assert (run / "last.pt").read_bytes() == before
    count("write_faults")


def test_file_size_limit_is_one_line(tmp_path):
    """A real RLIMIT_FSIZE (any user): the checkpoint write gets EFBIG (Python ignores SIGXFSZ)."""
    limit = 1 << 20  # the tiny run's checkpoints are ~5 MB; config.json and the metrics fit

    def cap():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    out = tmp_path / "run"
    proc = subprocess.run(driver_command(*TRAIN, "--epochs", "1", "--out", str(out)), env=subprocess_env(),
                          capture_output=True, text=True, timeout=300, preexec_fn=cap)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and f"cannot write {out / 'last.pt'}: File too large" in proc.stderr
    assert not temporaries(out) and not (out / "last.pt").exists()
    count("write_faults")


def test_unexpected_errors_are_one_line_with_debug_hint(capsys, monkeypatch):
    def boom(args):
        raise RuntimeError("something no check foresaw\nsecond line")

    monkeypatch.setitem(COMMANDS, "compare", Command("x", COMMANDS["compare"].add_arguments, boom))
    code = cli.main(["compare", "somewhere"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "RuntimeError: something no check foresaw" in err
    assert "rerun with --debug" in err and "Traceback" not in err
    for argv in (["--debug", "compare", "somewhere"], ["compare", "somewhere", "--debug"]):
        with pytest.raises(RuntimeError, match="no check foresaw"):
            cli.main(argv)
