"""Issue 14.4: everything read is validated first. A run folder's own files (config.json, metrics.jsonl,
metrics.json, checkpoints) are checked against what mmvae writes, with sizes capped before anything is allocated;
an `.npz`'s array sizes come from its headers before decompressing; counts below 1 are refused; a text file given
as `--input` is called text; `evaluate`/`compare` on a missing folder say so and create nothing; `impute --out`
writes exactly the path it reports."""
from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
from fault_helpers import copy_run, one_error_line, run_cli, train_run
from reliability_helpers import count

from mmvae.checkpoint import read_checkpoint, save_checkpoint

EVAL = ["--quick", "--metrics", "imputation", "--device", "cpu"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_run(tmp_path_factory.mktemp("runfiles") / "run", 1)


@pytest.fixture
def run(trained, tmp_path):
    return copy_run(trained, tmp_path / "run")


def _config(run):
    return json.loads((run / "config.json").read_text())


CONFIGS = {
    "truncated": lambda c: json.dumps(c)[:200],
    "not an object": lambda c: "[1, 2, 3]",
    "empty": lambda c: "",
    "binary": lambda c: "\udcff",
    "dataset a number": lambda c: json.dumps({**c, "dataset": 5}),
    "dataset without name": lambda c: json.dumps({**c, "dataset": {"seed": 0}}),
    "n = 1e11": lambda c: json.dumps({**c, "dataset": {**c["dataset"], "n_train": 1e11}}),
    "n = 10**11": lambda c: json.dumps({**c, "dataset": {**c["dataset"], "n_train": 10**11}}),
    "option a list": lambda c: json.dumps({**c, "dataset": {**c["dataset"], "seed": [1]}}),
    "no dataset": lambda c: json.dumps({k: v for k, v in c.items() if k != "dataset"}),
}


@pytest.mark.parametrize("case", sorted(CONFIGS))
def test_damaged_config_json(run, capsys, case):
    text = CONFIGS[case](_config(run))
    (run / "config.json").write_bytes(text.encode("utf-8", errors="surrogateescape"))
    code, _, err = run_cli(capsys, "evaluate", run, *EVAL)
    line = one_error_line(err, "evaluate")
    assert code == 2 and ("config.json" in line or "dataset" in line), err
    assert not (run / "metrics.json").exists()
    count("corrupt_file")


HISTORIES = {"garbage line": b'{"epoch": 1, "train/loss": 3.0}\n{"epo', "a list": b"[1, 2]\n",
             "no epoch": b'{"train/loss": 1.0}\n', "a nested value": b'{"epoch": 1, "x": {"a": 1}}\n',
             "not utf-8": b"\xff\xfe\x00"}


@pytest.mark.parametrize("case", sorted(HISTORIES))
def test_damaged_metrics_jsonl(run, capsys, case):
    (run / "metrics.jsonl").write_bytes(HISTORIES[case])
    code, _, err = run_cli(capsys, "evaluate", run, *EVAL)
    assert code == 2 and "metrics.jsonl" in one_error_line(err, "evaluate"), err
    count("corrupt_file")


@pytest.mark.parametrize("text", ['{"run": "x", "sett', "[]", '{"settings": 3}', "{}"])
def test_damaged_metrics_json_in_compare(run, tmp_path, capsys, text):
    (run / "metrics.json").write_text(text)
    code, _, err = run_cli(capsys, "compare", run, "--out", tmp_path / "cmp", "--device", "cpu")
    line = one_error_line(err, "compare")
    assert code == 2 and "metrics.json" in line and "rerun `mmvae evaluate" in line, err
    assert not (tmp_path / "cmp").exists()
    count("corrupt_file")


def test_checkpoint_config_asking_for_a_huge_layer_is_refused(run, tmp_path, capsys):
    state = read_checkpoint(run)
    cfg = json.loads(state["config"])
    cfg["modalities"]["m0"]["encoder"]["hidden"] = [200_000, 200_000]  # 160 GB of float32 if built
    state["config"] = json.dumps(cfg)
    save_checkpoint(run / "last.pt", state)
    (run / "best.pt").unlink()
    code, _, err = run_cli(capsys, "evaluate", run, *EVAL)
    assert code == 2 and "asks for" in one_error_line(err, "evaluate") and "not built" in err, err
    count("corrupt_file")


def _crafted_npz(path, shape, payload=b"\0" * 100):
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": shape})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("m0.npy", header.getvalue() + payload)
    return path


def test_npz_headers_checked_before_decompressing(run, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out.npz"
    lying = _crafted_npz(tmp_path / "lying.npz", (1 << 16, 1 << 16))  # says 16 GiB, holds 100 bytes
    code, _, err = run_cli(capsys, "impute", run, "--input", lying, "--out", out)
    assert code == 2 and "16.00 GiB" in one_error_line(err, "impute") and "damaged" in err, err
    bomb = tmp_path / "bomb.npz"  # a true one: 64 MiB of zeros in ~64 KiB
    np.savez_compressed(bomb, m0=np.zeros((1 << 14, 1 << 10), dtype=np.float32))
    monkeypatch.setenv("MMVAE_MAX_INPUT_BYTES", str(32 << 20))
    code, _, err = run_cli(capsys, "impute", run, "--input", bomb, "--out", out)
    assert code == 2 and "more than the limit" in one_error_line(err, "impute") and "not decompressing" in err
    assert not out.exists()
    count("corrupt_file", 2)


@pytest.mark.parametrize("content,what", [(b"m0,m1\n1,2\n3,4\n", "a text file"), (b"\x93NUMPY\x01\x00", ".npy"),
                                          (b"\x80\x04K\x01.", "pickle")])
def test_not_an_npz_input_is_named_without_the_allow_pickle_hint(run, tmp_path, capsys, content, what):
    src = tmp_path / "data.csv"
    src.write_bytes(content)
    code, _, err = run_cli(capsys, "impute", run, "--input", src, "--out", tmp_path / "o.npz")
    line = one_error_line(err, "impute")
    assert code == 2 and what in line and "allow_pickle" not in err, err
    count("corrupt_file")


def _input(tmp_path, n=6):
    x = np.random.default_rng(0).normal(size=(n, 6)).astype(np.float32)
    np.savez(tmp_path / "in.npz", m0=x, m1=np.full_like(x, np.nan), m2=x)
    return tmp_path / "in.npz"


def test_impute_writes_exactly_the_path_it_reports(run, tmp_path, capsys):
    code, out, err = run_cli(capsys, "impute", run, "--input", _input(tmp_path), "--out", tmp_path / "filled")
    assert code == 0 and f"wrote {tmp_path / 'filled'}:" in out, err
    assert (tmp_path / "filled").is_file() and not (tmp_path / "filled.npz").exists()
    assert set(np.load(tmp_path / "filled")) == {"m0", "m1", "m2"}


def test_impute_refuses_before_working(run, tmp_path, capsys):
    code, _, err = run_cli(capsys, "impute", run, "--input", _input(tmp_path), "--out", tmp_path / "no" / "x.npz")
    assert code == 2 and "does not exist" in one_error_line(err, "impute")
    code, _, err = run_cli(capsys, "impute", run, "--input", _input(tmp_path, 0), "--out", tmp_path / "x.npz")
    assert code == 2 and "no rows" in one_error_line(err, "impute")
    code, _, err = run_cli(capsys, "impute", run, "--input", _input(tmp_path), "--out", tmp_path / "x.npz",
                           "--n-samples", "0")
    assert code == 2 and "--n-samples must be >= 1" in one_error_line(err, "impute")
    count("bad_input_cases", 3)


@pytest.mark.parametrize("args", [["--n-test", "-5"], ["--n-test", "0"], ["--set", "loglik_K=0"],
                                  ["--set", "probe_n_train=-1"], ["--set", "imputation_samples=2.5"],
                                  ["--set", "min_accuracy=NaN"]])
def test_evaluate_counts_below_one_refused(run, capsys, args):
    code, _, err = run_cli(capsys, "evaluate", run, *EVAL, *args)
    assert code == 2 and one_error_line(err, "evaluate").startswith("mmvae evaluate: error: "), err
    assert not (run / "metrics.json").exists()
    count("bad_input_cases")


def test_missing_run_folder_is_named_and_nothing_created(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    code, _, err = run_cli(capsys, "evaluate", missing)
    assert code == 2 and f"run folder {missing} does not exist" in one_error_line(err, "evaluate")
    code, _, err = run_cli(capsys, "compare", missing, "--out", tmp_path / "cmp")
    assert code == 2 and f"run folder {missing} does not exist" in one_error_line(err, "compare")
    assert not missing.exists() and not (tmp_path / "cmp").exists()
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(capsys, "evaluate", tmp_path / "empty")
    assert code == 2 and "not a run folder" in err and not list((tmp_path / "empty").iterdir())
    count("bad_input_cases", 3)
