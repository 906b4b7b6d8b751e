"""Time the default `mmvae evaluate` of a small PolyDigits run, metric by metric (issue 9's evaluation target).

Trains a PolyDigits run (`mmvae train`, 5 epochs of MoPoE by default), evaluates it once to train or fetch the
coherence classifiers, then times `--repeats` evaluations with the default (full) settings and prints seconds per
step (the `timings_s` of metrics.json), CPU seconds, and the headline metrics. With `--reference REV` the same
evaluations also run on the package as it was at git revision REV (exported with `git archive` into a temporary
folder), interleaved with the current one, so both columns share the machine's load: a before/after table in one
run, whose metric values must agree within Monte-Carlo error. Everything goes to the JSON file `--out`.

    python bench/evaluate_time.py --out bench/results/evaluate_time.json
    python bench/evaluate_time.py --reference HEAD --out /tmp/evaluate_time.json    # before (HEAD) vs after (tree)

Each evaluate is its own process (`OMP_NUM_THREADS=--threads`), timed by wall clock and by its CPU time
(`resource.getrusage(RUSAGE_CHILDREN)`): on a shared machine the CPU seconds are the steadier number.

It also prints the floor of the conditional log-likelihood, the step that dominates: the decodes its estimator
needs (every conditioning subset S x test tuple x K draws x every modality, since the weights score x_S and the
target x_m from the same draw), times (a) the decoders' own time per row on this machine, measured on 2000-row
batches, and (b) their FLOPs (torch.utils.flop_counter) at this machine's dense-GEMM peak. No implementation of
the same estimator with the same networks can take less than (b), and with these kernels not less than (a).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: headline numbers of metrics.json: (label, path of keys)
HEADLINES = [
    ("coherence mean", ("coherence", "mean")),
    ("coherence |S|=1", ("coherence", "per_size", "1")),
    ("coherence |S|=4", ("coherence", "per_size", "4")),
    ("joint coherence", ("coherence", "joint")),
    ("latent probe mean", ("latent", "mean")),
    ("imputation error (mse/dim)", ("imputation", "error_mean")),
    ("imputation spread", ("imputation", "spread_mean")),
    ("loglik per dim", ("imputation", "conditional_loglik", "loglik_per_dim_mean")),
    ("nll per dim", ("imputation", "conditional_loglik", "nll_per_dim_mean")),
]


def _env(threads: int, pythonpath: Path | None) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if pythonpath is not None:
        env["PYTHONPATH"] = f"{pythonpath}{os.pathsep}{env.get('PYTHONPATH', '')}"
    return env


def _mmvae(args: list[str], env: dict) -> tuple[float, float]:
    """Run `python -m mmvae.cli ARGS`; -> (wall seconds, CPU seconds of the child)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mmvae.cli", *args], env=env, check=True, cwd=tempfile.gettempdir())
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.perf_counter() - t, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _export(rev: str, into: Path) -> Path:
    """The mmvae package at git revision rev, unpacked under `into`.  -> the folder to put on PYTHONPATH"""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "mmvae"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def _get(result: dict, path: tuple[str, ...]):
    for key in path:
        if not isinstance(result, dict) or key not in result:
            return None
        result = result[key]
    return result


def _evaluate(run: Path, out: Path, env: dict, extra: list[str]) -> dict:
    wall, cpu = _mmvae(["evaluate", str(run), "--out", str(out), *extra], env)
    result = json.loads((out / "metrics.json").read_text())
    return {"wall_s": wall, "cpu_s": cpu, "time_s": result["time_s"], "timings_s": result["timings_s"],
            "device": result["settings"]["device"], "classifiers": result.get("classifiers", {}).get("source"),
            "metrics": {label: _get(result, path) for label, path in HEADLINES}}


def loglik_floor(run: Path, threads: int, K: int | None = None, n_test: int | None = None) -> dict:
    """The decodes of the default conditional log-likelihood and their least cost (module docstring)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    sys.path.insert(0, str(ROOT))
    from mmvae import load
    from mmvae.datasets import get_dataset
    from mmvae.evaluation.run_files import dataset_spec, read_run_config
    from mmvae.evaluation.settings import EvalSettings
    from mmvae.evaluation.subset_batches import as_eval_data, conditioning_subsets, subset_batches

    torch.set_num_threads(threads)
    s = EvalSettings.full()
    K = K or s.loglik_K
    model = load(run, map_location="cpu").eval()
    name, kw = dataset_spec(read_run_config(run))
    names = list(model.names)
    test = as_eval_data(get_dataset(name, "test", **kw), names, n=n_test, seed=0)
    test = as_eval_data(test, names, n=s.imputation_n_tuples, seed=0)  # the imputation section's tuples
    rows = sum(len(r) for r, _ in subset_batches(test.avail, conditioning_subsets(len(names)), None))
    per_row, flops = {}, {}
    with torch.no_grad():
        for m in names:
            dec, B = model.modalities[m].decoder, 2000
            z = torch.randn(B, model.shared_dim + model.private_dims[m])
            with FlopCounterMode(display=False) as fc:
                dec(z)
            flops[m] = fc.get_total_flops() / B
            best = float("inf")
            for _ in range(3):
                t = time.perf_counter()
                dec(z)
                best = min(best, time.perf_counter() - t)
            per_row[m] = best / B
        a = torch.randn(4096, 1024)
        b = torch.randn(1024, 1024)
        a @ b
        t = time.perf_counter()
        for _ in range(5):
            a @ b
        peak = 5 * 2 * 4096 * 1024 * 1024 / (time.perf_counter() - t)
    decodes = rows * K  # per modality
    return {"subset_rows": rows, "K": K, "decodes_per_modality": decodes, "decodes": decodes * len(names),
            "flops_per_row": flops, "s_per_row": per_row, "gemm_peak_gflops": peak / 1e9, "threads": threads,
            "decoders_alone_s": decodes * sum(per_row.values()),
            "at_gemm_peak_s": decodes * sum(flops.values()) / peak}


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                     for r in rows)


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def _report(columns: dict[str, list[dict]]) -> str:
    """Per-step seconds (mean over repeats) and the headline metrics of each column."""
    steps: list[str] = []
    for runs in columns.values():
        for r in runs:
            steps += [k for k in r["timings_s"] if k not in steps]
    rows = [["step (s)", *columns]]
    for step in steps:
        rows.append([step, *[_fmt(_mean([r["timings_s"].get(step) for r in runs])) for runs in columns.values()]])
    for key in ("time_s", "wall_s", "cpu_s"):
        rows.append([f"total {key}", *[_fmt(_mean([r[key] for r in runs])) for runs in columns.values()]])
    rows.append(["", *[""] * len(columns)])
    rows.append(["metric (first repeat)", *columns])
    for label, _ in HEADLINES:
        rows.append([label, *[_fmt(runs[0]["metrics"][label]) for runs in columns.values()]])
    return _table(rows)


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="JSON file for the results")
    p.add_argument("--workdir", help="folder for the run (default: a temporary one); an existing run is reused")
    p.add_argument("--model", default="mopoe")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every process (default 1)")
    p.add_argument("--repeats", type=int, default=1, help="timed evaluations per column")
    p.add_argument("--reference", help="git revision to time beside the working tree (e.g. HEAD)")
    p.add_argument("--device", default="auto")
    p.add_argument("--n-test", type=int, help="evaluate on N test tuples (default: all 364)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="passed to mmvae evaluate")
    args = p.parse_args(argv)

    tmp = tempfile.TemporaryDirectory(prefix="mmvae-eval-bench-")
    work = Path(args.workdir) if args.workdir else Path(tmp.name)
    run = work / "run"
    env = _env(args.threads, ROOT)
    if not (run / "config.json").exists():
        wall, cpu = _mmvae(["train", "--dataset", "polydigits", "--model", args.model, "--epochs", str(args.epochs),
                            "--out", str(run), "--quiet", "--device", args.device], env)
        print(f"trained {args.model} ({args.epochs} epochs) in {wall:.1f} s", flush=True)
    extra = ["--device", args.device] + [a for kv in args.set for a in ("--set", kv)]
    extra += ["--n-test", str(args.n_test)] if args.n_test else []
    columns: dict[str, tuple[dict, list[dict]]] = {"current": (env, [])}
    if args.reference:
        ref = _env(args.threads, _export(args.reference, Path(tempfile.mkdtemp(dir=work))))
        columns = {f"ref {args.reference}": (ref, []), "current": (env, [])}
    warm = _evaluate(run, work / "warm", env, [*extra, "--metrics", "coherence"])  # trains or fetches the
    # classifiers, so that the timed evaluations below find them
    print(f"classifiers: {warm['classifiers']} ({_fmt(warm['timings_s'].get('classifiers'))} s)", flush=True)
    for i in range(args.repeats):
        for name, (e, runs) in columns.items():
            runs.append(_evaluate(run, work / f"eval-{name.replace(' ', '_')}-{i}", e, extra))
            print(f"{name} #{i}: {runs[-1]['time_s']:.1f} s", flush=True)
    table = _report({k: v[1] for k, v in columns.items()})
    print(table)
    floor = loglik_floor(run, args.threads, n_test=args.n_test)
    print(f"\nconditional log-likelihood floor: {floor['subset_rows']} (subset, tuple) rows x K={floor['K']} x "
          f"{len(floor['s_per_row'])} modalities = {floor['decodes'] / 1e6:.2f} M decodes "
          f"({sum(floor['flops_per_row'].values()) / len(floor['flops_per_row']) / 1e6:.2f} MFLOP each); "
          f"the decoders alone: {floor['decoders_alone_s']:.0f} s at their measured speed, "
          f"{floor['at_gemm_peak_s']:.0f} s at this machine's GEMM peak ({floor['gemm_peak_gflops']:.0f} GFLOP/s, "
          f"{args.threads} threads)")
    info = {"machine": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
            "threads": args.threads, "model": args.model, "epochs": args.epochs, "reference": args.reference,
            "first_evaluate": warm, "columns": {k: v[1] for k, v in columns.items()}, "table": table,
            "loglik_floor": floor}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(info, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
