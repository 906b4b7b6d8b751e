"""`mmvae study`: the grid's checks, --print-commands, the summary's known answers, and a tiny study that is killed
mid-way and resumed (subprocesses, marked slow)."""
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmvae import cli
from mmvae.cli.options import BY_NAME
from mmvae.models import PRESETS
from mmvae.study import parse_grid, write_study

ROOT = Path(__file__).resolve().parents[1]
DRIVER = ROOT / "tests" / "reliability" / "cli_driver.py"
SMOKE = os.environ.get("MMVAE_SMOKE") == "1"

GRID = """[study]
dataset = "toy"
epochs = 2
models = ["mopoe", "mmvm"]
beta = [0.5, 1.0]
seeds = [0, 1]
[train]
batch_size = 32
[evaluate]
quick = true
loglik_K = 5
"""


def write_grid(tmp_path, text=GRID) -> Path:
    path = tmp_path / "grid.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("old, new, named", [
    ('models = ["mopoe", "mmvm"]', 'models = ["mopoe", "vae"]', "'vae'"),            # unknown model
    ("batch_size = 32", "batch_sise = 32", "'batch_sise'"),                          # unknown [train] key
    ("quick = true", "quikc = true", "'quikc'"),                                      # unknown [evaluate] key
    ("epochs = 2", "epochs = 2\nepoch = 3", "'epoch'"),                               # unknown [study] key
    ("seeds = [0, 1]", "seeds = []", "'seeds'"),                                      # empty axis
    ("beta = [0.5, 1.0]", 'beta = ["high"]', "'beta'"),                               # wrong type
    ("batch_size = 32", "batch_size = 0", "'batch_size'"),                            # out of the option's range
    ("batch_size = 32", "seed = 3", "'seed'"),                                        # owned by [study]
    ('dataset = "toy"', 'dataset = "nope"', "'nope'"),                                # unknown dataset
])
def test_a_bad_grid_names_the_key_and_runs_nothing(tmp_path, capsys, old, new, named):
    assert old in GRID
    grid = write_grid(tmp_path, GRID.replace(old, new))
    code = cli.main(["study", str(grid), "--out", str(tmp_path / "study")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("mmvae study: error: ") and named in err and str(grid) in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "study").exists()  # nothing ran, nothing written


def test_the_grid_check_passes_a_good_grid_with_an_extra_axis():
    import tomllib

    data = tomllib.loads(GRID.replace("batch_size = 32", "batch_size = 32\ndrop_rate = [0.0, 0.5]"))
    grid = parse_grid(data, "g.toml", BY_NAME, PRESETS)
    runs = grid.runs()
    assert len(runs) == 2 * 2 * 2 * 2 and grid.axes == {"drop_rate": [0.0, 0.5]}
    assert runs[0].name == "mopoe_beta0.5_seed0_drop_rate0" and runs[-1].name == "mmvm_beta1_seed1_drop_rate0.5"


def test_print_commands_prints_one_train_and_evaluate_line_per_run(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MMVAE_STUDY_COMMAND", raising=False)  # the lines then start with `mmvae`
    grid = write_grid(tmp_path)
    out = tmp_path / "my study"  # a space, so the lines must be shell-quoted
    assert cli.main(["study", str(grid), "--out", str(out), "--print-commands"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 8 and not out.exists()
    train, evaluate = lines[0].split(" && ")
    folder = str(out / "runs" / "mopoe_beta0.5_seed0")
    assert shlex.split(train) == ["mmvae", "train", "--out", folder, "--quiet", "--dataset", "toy", "--model",
                                  "mopoe", "--epochs", "2", "--beta", "0.5", "--seed", "0", "--batch-size", "32"]
    assert shlex.split(evaluate) == ["mmvae", "evaluate", folder, "--quick", "--set", "loglik_K=5"]
    assert {shlex.split(line)[3].rsplit("/", 1)[1] for line in lines} == {
        f"{m}_beta{b}_seed{s}" for m in ("mopoe", "mmvm") for b in ("0.5", "1") for s in (0, 1)}


def fake_run(root: Path, model: str, beta: float, seed: int, recon: float, probe1: float, probe_joint: float,
             coherence: float):
    """A run folder as a run done elsewhere leaves it: config.json, metrics.json, reconstruction.json."""
    folder = root / "runs" / f"{model}_beta{beta:g}_seed{seed}"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"settings": {"model": model, "beta": beta, "seed": seed}}))
    (folder / "metrics.json").write_text(json.dumps({
        "latent": {"per_size": {"1": probe1, "2": 0.0, "3": probe_joint}},
        "coherence": {"per_size": {"1": coherence, "2": coherence + 0.1}, "mean": coherence, "joint": 0.5},
        "imputation": {"error_mean": 2 * recon}}))
    (folder / "reconstruction.json").write_text(json.dumps({"mean": recon}))


def test_the_summary_of_hand_written_runs_has_the_known_means_and_deviations(tmp_path, capsys):
    grid = write_grid(tmp_path, GRID.replace("[0, 1]", "[0, 1, 2]"))
    out = tmp_path / "study"
    recon = {0: 0.1, 1: 0.2, 2: 0.6}  # mean 0.3, sample std sqrt(((-.2)^2 + (-.1)^2 + .3^2) / 2) = sqrt(0.07)
    for s in (0, 1, 2):
        fake_run(out, "mopoe", 0.5, s, recon[s], probe1=0.5 + 0.1 * s, probe_joint=0.9, coherence=0.4)
    fake_run(out, "mmvm", 1.0, 0, 0.05, probe1=0.8, probe_joint=0.85, coherence=0.7)  # one seed: no std
    assert cli.main(["study", str(grid), "--out", str(out), "--summarise-only"]) == 0
    assert "0 of 12 runs done" in capsys.readouterr().out  # a fake folder (no last.pt) is not a finished grid run
    study = json.loads((out / "study.json").read_text())
    groups = {(g["model"], g["beta"]): g for g in study["summary"]}
    mopoe = groups[("mopoe", 0.5)]["metrics"]
    assert groups[("mopoe", 0.5)]["seeds"] == [0, 1, 2]
    assert mopoe["recon_self"]["mean"] == pytest.approx(0.3) and mopoe["recon_self"]["std"] == pytest.approx(
        math.sqrt(0.07))
    assert mopoe["imputation_error"]["mean"] == pytest.approx(0.6)
    assert mopoe["probe_unimodal"]["mean"] == pytest.approx(0.6) and mopoe["probe_unimodal"]["std"] == \
        pytest.approx(0.1)
    assert mopoe["probe_joint"] == {"mean": pytest.approx(0.9), "std": pytest.approx(0.0), "n": 3}
    assert mopoe["coherence_2"]["mean"] == pytest.approx(0.5) and mopoe["coherence_joint"]["mean"] == 0.5
    mmvm = groups[("mmvm", 1.0)]["metrics"]
    assert mmvm["recon_self"] == {"mean": 0.05, "std": None, "n": 1}
    md = (out / "study.md").read_text()
    assert "| mopoe | 0.5 | 3 | 0.3 ± 0.26 | 0.6 ± 0.53 | 0.6 ± 0.1 | 0.9 ± 0 |" in md
    assert "| mmvm | 1 | 1 | 0.05 | 0.1 |" in md
    assert study["figure"] == "study.png" and (out / "study.png").stat().st_size > 1000
    assert sum(s["status"] == "done" for s in study["runs"].values()) == 0  # no last.pt: not done by the grid


def test_models_are_compared_at_one_matched_reconstruction_error():
    """Known answer: curves a (recon 0.1 -> 0.3, probe 0.9 -> 0.7) and b (0.2 -> 0.4, probe 0.5 -> 0.9) overlap on
    [0.2, 0.3]; at 0.25, a's probe is 0.75 and b's 0.6; c (one beta) does not set the range but is read where its
    one point lies; d's curve never overlaps a's or b's, so the comparison is made without d, and says so."""
    from mmvae.study.summary import at_matched_error, render_matched

    def group(model, beta, recon, probe):
        stat = lambda v: {"mean": v, "std": None, "n": 1}  # noqa: E731
        return {"model": model, "beta": beta, "seeds": [0],
                "metrics": {"recon_self": stat(recon), "probe_unimodal": stat(probe), "coherence_mean": stat(probe)}}

    groups = [group("a", 0.5, 0.1, 0.9), group("a", 2.0, 0.3, 0.7), group("b", 0.5, 0.2, 0.5),
              group("b", 1.0, 0.3, 0.7), group("b", 2.0, 0.4, 0.9), group("c", 1.0, 0.25, 0.8)]
    m = at_matched_error(groups)
    assert m["at"] == pytest.approx(0.25) and m["range"] == pytest.approx([0.2, 0.3])
    assert m["models"]["a"]["probe_unimodal"] == pytest.approx(0.75)
    assert m["models"]["b"]["probe_unimodal"] == pytest.approx(0.6)
    assert m["models"]["c"]["probe_unimodal"] == pytest.approx(0.8)  # its one point lies exactly there
    assert "| c | **0.8** | **0.8** |" in render_matched(m) and "| a | 0.75 | 0.75 |" in render_matched(m)
    assert m["outside"] == []
    apart = at_matched_error(groups + [group("d", 1.0, 0.5, 0.1), group("d", 2.0, 0.6, 0.2)])
    assert apart["at"] == pytest.approx(0.25) and apart["outside"] == ["d"] and "d" not in apart["models"]
    assert "d: no point in that range" in render_matched(apart)
    alone = at_matched_error(groups[:2] + [group("d", 1.0, 0.5, 0.1), group("d", 2.0, 0.6, 0.2)])
    assert alone["outside"] == ["d"] and alone["models"]["a"]["probe_unimodal"] == pytest.approx(0.8)  # at 0.2


def _wait_for(pred, proc, timeout):
    t = time.time()
    while not pred():
        assert proc.poll() is None, "the study ended before it could be killed"
        assert time.time() - t < timeout, "timed out"
        time.sleep(0.05)


@pytest.mark.slow
def test_a_study_killed_mid_way_resumes_and_does_every_run_once(tmp_path):
    """2 models x 2 seeds x 1 epoch on `tiny` (1 seed under MMVAE_SMOKE): SIGKILL the study and its children as
    soon as the first run is evaluated, then run it again (with --jobs 2 outside smoke size)."""
    seeds = "[0]" if SMOKE else "[0, 1]"
    grid = write_grid(tmp_path, GRID.replace('"toy"', '"tiny"').replace("epochs = 2", "epochs = 1")
                      .replace("[0, 1]", seeds).replace("[0.5, 1.0]", "[1.0]")
                      .replace("loglik_K = 5", 'metrics = ["imputation"]'))
    out = tmp_path / "study"
    env = dict(os.environ, MMVAE_STUDY_COMMAND=shlex.join([sys.executable, str(DRIVER)]))
    cmd = [sys.executable, str(DRIVER), "study", str(grid), "--out", str(out), "--recon-n", "100",
           "--jobs", "1" if SMOKE else "2"]
    first = subprocess.Popen(cmd, env=env, cwd=ROOT, start_new_session=True, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for(lambda: any(out.glob("runs/*/report.md")), first, 300)  # written after metrics.json
        os.killpg(first.pid, signal.SIGKILL)  # the study and every child, mid-way
    finally:
        first.wait()
    finished = {f.parent.name: (f.parent / "study.log").read_text() for f in out.glob("runs/*/report.md")}
    killed_statuses = json.loads((out / "study.json").read_text())["runs"]  # atomic: valid JSON
    assert sum(s["status"] == "done" for s in killed_statuses.values()) <= 1
    second = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout + second.stderr
    skipped = [line for line in second.stdout.splitlines() if "runs already done: skipped" in line]
    assert len(skipped) == 1 and 1 <= int(skipped[0].split()[0]) < 2 * len(json.loads(seeds)), second.stdout
    study = json.loads((out / "study.json").read_text())
    n = 2 * len(json.loads(seeds))
    assert len(study["runs"]) == n and all(s["status"] == "done" for s in study["runs"].values())
    for folder in (out / "runs").iterdir():  # a killed train or evaluate starts again; each finishes once
        log = (folder / "study.log").read_text()
        assert log.count("\ntrained ") == 1 and log.count("report.md and metrics.json") == 1, log
        assert len((folder / "metrics.jsonl").read_text().splitlines()) == 1  # one epoch
    assert finished and all((out / "runs" / name / "study.log").read_text() == log  # skipped: no new command
                            for name, log in finished.items())
    assert sorted(g["model"] for g in study["summary"]) == ["mmvm", "mopoe"]
    assert all(g["metrics"]["recon_self"]["n"] == n // 2 for g in study["summary"])
    md = (out / "study.md").read_text()
    assert f"Runs: {n} done" in md and md.count("| mmvm | 1 |") == 1


def test_write_study_with_no_runs_writes_a_consistent_empty_study(tmp_path):
    import tomllib

    grid = parse_grid(tomllib.loads(GRID), "g.toml", BY_NAME, PRESETS)
    result = write_study(grid, tmp_path / "s", reconstruction_n=0, say=lambda _: None)
    assert result["summary"] == [] and result["figure"] is None
    assert json.loads((tmp_path / "s" / "study.json").read_text())["runs"].keys() == {r.name for r in grid.runs()}
    assert "Runs: 8 pending" in (tmp_path / "s" / "study.md").read_text()


def test_the_shipped_example_grid_is_valid(capsys):
    """examples/mmvm_study.toml: the MMVM comparison on PolyFashion, 7 presets x beta {0.25, 1, 4} x 3 seeds."""
    assert cli.main(["study", str(ROOT / "examples" / "mmvm_study.toml"), "--out", "unused", "--print-commands"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 7 * 3 * 3 and not Path("unused").exists()
    assert all("--dataset polyfashion" in line and " evaluate " in line for line in lines)
    assert {shlex.split(line)[8] for line in lines} == {"independent", "avg", "mvae", "mmvae", "mopoe", "mmvaeplus",
                                                            "mmvm"}


def test_run_state_reads_where_a_run_stands_from_its_folder(tmp_path, capsys):
    """No checkpoint: fresh; a shorter one: resume (and --print-commands resumes it); all epochs: evaluate, then
    done once metrics.json is written; more epochs than the grid: too long."""
    from mmvae.checkpoint import TrainingState, save_checkpoint
    from mmvae.study import run_state

    grid = write_grid(tmp_path, GRID.replace("epochs = 2", "epochs = 3").replace('"mopoe", "mmvm"', '"mopoe"')
                      .replace("[0.5, 1.0]", "[1.0]").replace("[0, 1]", "[0]"))
    folder = tmp_path / "study" / "runs" / "mopoe_beta1_seed0"
    assert run_state(folder, 3) == "fresh"
    save_checkpoint(folder / "last.pt", TrainingState(model={}, optimizer={}, epoch=2, global_step=4).to_dict())
    assert run_state(folder, 3) == "resume" and run_state(folder, 1) == "too long"
    assert run_state(folder, 2) == "evaluate"
    (folder / "metrics.json").write_text("{\"cut short")  # a killed evaluation's file is not a finished one
    assert run_state(folder, 2) == "evaluate"
    (folder / "metrics.json").write_text("{}")
    assert run_state(folder, 2) == "done"
    assert cli.main(["study", str(grid), "--out", str(tmp_path / "study"), "--print-commands"]) == 0
    train_line = capsys.readouterr().out.split(" && ")[0]
    assert f"--resume {folder}" in train_line and "--epochs 3" in train_line
