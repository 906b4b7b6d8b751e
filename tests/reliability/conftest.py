"""Prints the reliability summary (bad inputs tried, kills survived, fuzz examples run) after the session."""
from reliability_helpers import COUNTS, METHODS


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not any(COUNTS.values()):
        return
    c = COUNTS
    terminalreporter.write_sep("-", "reliability summary")
    terminalreporter.write_line(f"bad-input cases tried: {c['bad_input_cases']} "
                                f"({c['bad_input_calls']} calls, each raised mmvae.InputError)")
    terminalreporter.write_line(f"SIGKILLs survived: {c['kills']} ({c['kills_mid_write']} while a checkpoint "
                                f"was being written); newest checkpoint loaded every time, resume exact")
    terminalreporter.write_line(f"fuzz examples run: {c['fuzz_examples']}")
    terminalreporter.write_line(f"disk-full cases: {c['disk_full']} (by {'; '.join(sorted(METHODS)) or 'none'}); "
                                f"other write faults (read-only, file-size limit, I/O error): {c['write_faults']}; "
                                "each one error line, exit 2, the previous file intact")
    terminalreporter.write_line(f"run-folder lock cases: {c['lock']} (second writer refused naming it, stale lock "
                                "taken over, live temp files kept)")
    terminalreporter.write_line(f"corrupt-file cases: {c['corrupt_file']} (run files, checkpoints, .npz, data "
                                "folders; each refused with a message naming the file)")
    terminalreporter.write_line(f"non-finite-checkpoint cases: {c['nonfinite_checkpoint']} (never saved, never "
                                "best.pt, never called good, exit non-zero)")
