"""The `mmvae` command: train, evaluate, compare, impute, and `demo` (all of it on the bundled PolyDigits).

`options.py` holds the table of train settings (flags, config keys, defaults, checks, help); `commands.py` the
subcommands; `imports.py` the `--import MODULE` that registers your own parts; here is the parser and the mapping of
errors to exit codes: 2 for bad input, an unusable checkpoint, a run folder in use or an output that cannot be
written, 3 when training stops on non-finite numbers, 130 when interrupted, 1 for anything unexpected (one line,
and the traceback with `--debug`).
"""
from __future__ import annotations

import argparse
import sys

from ..devices import oversubscribed, use_threads
from ..errors import CheckpointError, InputError, NonFiniteLossError, WriteError
from .commands import COMMANDS
from .imports import IMPORT_HELP, import_module
from .options import OPTIONS, Option, check_settings, defaults, read_config, settings

__all__ = ["OPTIONS", "Option", "build_parser", "check_settings", "defaults", "main", "read_config", "settings"]


def build_parser() -> argparse.ArgumentParser:
    """The `mmvae` parser, one subparser per entry of `COMMANDS`."""
    parser = argparse.ArgumentParser(prog="mmvae", description="Multimodal VAEs with shared and private latents.")
    debug = "show the Python traceback of an unexpected error instead of one line"
    threads = ("torch's CPU threads (default: torch's own count, capped at the CPUs this process may use; use 1 when "
               "other jobs share the CPUs: more threads than free cores make each step many times slower)")
    parser.add_argument("--debug", action="store_true", help=debug)
    parser.add_argument("--threads", type=_threads, metavar="N", help=threads)
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE", help=IMPORT_HELP)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, command in COMMANDS.items():
        p = sub.add_parser(name, help=command.help, description=command.help[0].upper() + command.help[1:] + ".")
        command.add_arguments(p)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug)
        p.add_argument("--threads", type=_threads, metavar="N", default=argparse.SUPPRESS, help=threads)
        p.add_argument("--import", dest="imports_here", action="append", default=[], metavar="MODULE",
                       help=IMPORT_HELP)
    return parser


def _threads(text: str) -> int:
    """`--threads N`: an integer >= 1."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expects an integer >= 1, got {text!r}")
    return n


def _os_error(e: OSError) -> str:
    """An OSError as one line: what failed on which file, and why."""
    if isinstance(e, WriteError):
        return str(e)
    where = f" {e.filename}" if e.filename else ""
    return f"cannot access{where}: {e.strerror or e}"


def main(argv: list[str] | None = None) -> int:
    """Run `mmvae ARGV` (default: sys.argv[1:]) and return its exit code; errors become one line on stderr."""
    args = build_parser().parse_args(argv)
    say = lambda text: print(f"mmvae {args.command}: {text}", file=sys.stderr)  # noqa: E731
    try:
        threads, _ = use_threads(args.threads)  # the trainer and the evaluators run on these threads
        if args.threads is None and sys.stderr.isatty() and (note := oversubscribed(threads)):
            say(f"note: {note}")
        for module in args.imports + args.imports_here:  # before the command: their registrations take effect
            import_module(module, debug=args.debug)
        return COMMANDS[args.command].run(args)
    except (InputError, CheckpointError) as e:
        say(f"error: {e}")
        return 2
    except NonFiniteLossError as e:
        say(f"training stopped on non-finite losses or weights: {e}")
        return 3
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    except OSError as e:  # a disk full, a read-only folder, a file-size limit, a vanished file
        if args.debug:
            raise
        say(f"error: {_os_error(e)}")
        return 2
    except MemoryError:
        if args.debug:
            raise
        say("error: out of memory; try a smaller batch_size, fewer evaluation samples or a smaller model")
        return 2
    except Exception as e:  # a bug or an input no check foresaw: one line, the traceback on request
        if args.debug:
            raise
        say(f"unexpected error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
            f"(rerun with --debug for the traceback)")
        return 1
