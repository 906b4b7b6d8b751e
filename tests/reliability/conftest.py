"""Prints the reliability summary (bad inputs tried, kills survived, fuzz examples run) after the session."""
from reliability_helpers import COUNTS


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
