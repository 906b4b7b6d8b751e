"""DIR/study.json, DIR/study.md and DIR/study.png of a study, from its run folders (`summary.py`) and the runs'
statuses; every file is replaced atomically, so an interrupted study leaves them consistent."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from ..atomic import write_text
from .grid import Grid
from .runner import run_state, write_json_atomic
from .summary import COLUMNS, at_matched_error, render_markdown, render_matched, run_row, study_figure, summarise_rows


def folder_statuses(grid: Grid, out: Path) -> dict:
    """Each grid run's status read from its folder alone: done, or pending with what it needs next."""
    statuses = {}
    for run in grid.runs():
        folder = Path(out) / "runs" / run.name
        state = run_state(folder, grid.epochs)
        statuses[run.name] = {"status": "done" if state == "done" else "pending", "folder": str(folder),
                              "model": run.model, "beta": run.beta, "seed": run.seed, **run.axes}
        if state != "done":
            statuses[run.name]["next"] = state
    return statuses


def _reconstructions(folders: list[Path], n: int, say) -> None:
    """RUN/reconstruction.json for each evaluated run that has a checkpoint (skipped with a note when it fails)."""
    from ..errors import CheckpointError, InputError
    from .reconstruction import FILE, run_reconstruction

    for folder in folders:
        if (folder / "metrics.json").is_file() and (folder / "last.pt").is_file():
            try:
                if not (folder / FILE).is_file():
                    say(f"self-reconstruction of {folder.name}")
                run_reconstruction(folder, n=n)
            except (InputError, CheckpointError, OSError) as e:
                say(f"no self-reconstruction for {folder.name}: {e}")


def write_study(grid: Grid, out: Path, statuses: dict | None = None, reconstruction_n: int = 1000,
                say=print) -> dict:
    """Summarise every run folder under out/runs (the grid's and any other that was put there) into study.json,
    study.md and study.png; returns what study.json holds. reconstruction_n: test tuples of the self-reconstruction
    error (0: do not compute it, use what reconstruction.json files there are)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    statuses = folder_statuses(grid, out) if statuses is None else statuses
    folders = sorted(p for p in (out / "runs").glob("*") if p.is_dir()) if (out / "runs").is_dir() else []
    if reconstruction_n:
        _reconstructions(folders, reconstruction_n, say)
    axes = tuple(grid.axes)
    rows = [r for r in (run_row(f, axes) for f in folders) if r is not None]
    groups = summarise_rows(rows, axes)
    figure = study_figure(groups, out / "study.png") if groups else None
    x = "recon_self" if any(r.get("recon_self") is not None for r in rows) else "imputation_error"
    matched = at_matched_error(groups, x)
    result = {"grid": asdict(grid), "columns": COLUMNS, "runs": statuses, "rows": rows, "summary": groups,
              "matched": matched, "figure": figure.name if figure else None}
    write_json_atomic(out / "study.json", result)
    md = render_markdown(groups, axes, title=f"Study {Path(grid.source).name}: {grid.dataset}, {grid.epochs} "
                         "epochs", statuses=statuses) + render_matched(matched)
    if figure:
        md += f"\n![study]({figure.name})\n"
    write_text(out / "study.md", md)
    return result
