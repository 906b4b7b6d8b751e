"""`mmvae study GRID.toml --out DIR`: run a grid of ordinary train + evaluate commands and summarise the run folders
into DIR/study.json, DIR/study.md and DIR/study.png (see `mmvae.study`)."""
from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from ..errors import InputError
from .options import BY_NAME


def add_study_arguments(p: argparse.ArgumentParser) -> None:
    """`mmvae study GRID --out DIR [--jobs N] [--print-commands] [--summarise-only]`."""
    p.add_argument("grid", type=Path, help="TOML grid: [study] dataset, epochs, models, beta, seeds; [train] any "
                   "train option (a list is one more axis); [evaluate] quick, metrics, n_test or any --set KEY")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="study folder: runs/<model>_beta<b>_seed<s>/,"
                   " study.json, study.md, study.png")
    p.add_argument("--jobs", type=int, default=1, metavar="N", help="runs at once, as local processes (one GPU each "
                   "round-robin when several are visible, else shared; 1 CPU thread each) (default: %(default)s)")
    p.add_argument("--print-commands", dest="print_commands", action="store_true",
                   help="print one train && evaluate command line per run (e.g. for a SLURM array); run nothing")
    p.add_argument("--summarise-only", dest="summarise_only", action="store_true",
                   help="only compute the table and figure from the run folders there are")
    p.add_argument("--recon-n", dest="recon_n", type=int, default=1000, metavar="N",
                   help="test tuples of the self-reconstruction error, 0 to skip it (default: %(default)s)")


def _check_dataset(name: str, source: str) -> None:
    """InputError unless `name` is a registered dataset or an existing path (a user's .npz file or folder)."""
    from ..datasets import DATASETS

    if name.lower() not in DATASETS and not Path(name).exists():
        raise InputError(f"{source}: [study] key 'dataset': unknown dataset {name!r}; known: {sorted(DATASETS)}, or "
                         "a path to a .npz file or a folder")


def _print_commands(grid, out: Path) -> None:
    import os

    from ..study import PREFIX_ENV, run_state
    from ..study.runner import evaluate_command, train_command

    prefix = shlex.split(os.environ[PREFIX_ENV]) if os.environ.get(PREFIX_ENV) else ["mmvae"]
    for run in grid.runs():
        folder = out / "runs" / run.name
        resume = run_state(folder, grid.epochs) in ("resume", "evaluate")
        print(shlex.join(train_command(prefix, grid, run, folder, resume)) + " && "
              + shlex.join(evaluate_command(prefix, grid, folder)))


def _previous(path: Path) -> dict:
    """The study.json there is (its summary stays readable while runs proceed), else {}."""
    import json

    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return {}


def study(args: argparse.Namespace) -> int:
    """`mmvae study`: check the whole grid, then run what is not done, then write the summary."""
    from ..models import PRESETS
    from ..study import StudyRunner, read_grid, write_study
    from ..study.runner import write_json_atomic

    if args.jobs < 1:
        raise InputError(f"--jobs must be >= 1, got {args.jobs}")
    grid = read_grid(args.grid, BY_NAME, PRESETS)
    _check_dataset(grid.dataset, str(args.grid))
    if args.print_commands:
        _print_commands(grid, args.out)
        return 0
    code = 0
    statuses = None
    if not args.summarise_only:
        args.out.mkdir(parents=True, exist_ok=True)
        before = _previous(args.out / "study.json")
        runner = StudyRunner(grid, args.out, jobs=args.jobs, on_change=lambda s: write_json_atomic(
            args.out / "study.json", before | {"runs": s, "state": "running"}))
        n = len(runner.runs)
        print(f"study {args.grid}: {n} runs into {args.out / 'runs'}, {args.jobs} at a time")
        code = runner.run()
        statuses = runner.status
    result = write_study(grid, args.out, statuses, reconstruction_n=args.recon_n)
    done = sum(s["status"] == "done" for s in result["runs"].values())
    print(f"wrote {args.out / 'study.md'}, study.json" + (", study.png" if result["figure"] else "")
          + f": {done} of {len(result['runs'])} runs done")
    return code
