"""`mmvae study`: a grid of runs (models x beta x seeds x options), each one ordinary `mmvae train` + `mmvae
evaluate` command, and the table and figure computed from the run folders afterwards.

`grid.py` reads and checks the grid file, `runner.py` runs (or resumes) the runs as subprocesses, `summary.py` and
`reconstruction.py` compute the table and the figure, `report.py` writes study.json, study.md and study.png.
"""
from .grid import Grid, Run, parse_grid, read_grid
from .report import folder_statuses, write_study
from .runner import PREFIX_ENV, StudyRunner, command_prefix, evaluate_command, run_state, train_command
from .summary import run_row, summarise_rows

__all__ = ["Grid", "Run", "parse_grid", "read_grid", "StudyRunner", "command_prefix", "train_command",
           "evaluate_command", "run_state", "PREFIX_ENV", "write_study", "folder_statuses", "run_row",
           "summarise_rows"]
