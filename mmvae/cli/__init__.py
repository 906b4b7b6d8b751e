"""The `mmvae` command: train, evaluate, compare, impute, and `demo` (all of it on the bundled PolyDigits).

`options.py` holds the table of train settings (flags, config keys, defaults, checks, help); `commands.py` the
subcommands; here is the parser and the mapping of errors to exit codes: 2 for bad input or an unusable checkpoint,
3 when training stops on non-finite losses, 130 when interrupted.
"""
from __future__ import annotations

import argparse
import sys

from ..errors import CheckpointError, InputError, NonFiniteLossError
from .commands import COMMANDS
from .options import OPTIONS, Option, check_settings, defaults, read_config, settings

__all__ = ["OPTIONS", "Option", "build_parser", "check_settings", "defaults", "main", "read_config", "settings"]


def build_parser() -> argparse.ArgumentParser:
    """The `mmvae` parser, one subparser per entry of `COMMANDS`."""
    parser = argparse.ArgumentParser(prog="mmvae", description="Multimodal VAEs with shared and private latents.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, command in COMMANDS.items():
        command.add_arguments(sub.add_parser(name, help=command.help, description=command.help[0].upper()
                                             + command.help[1:] + "."))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run `mmvae ARGV` (default: sys.argv[1:]) and return its exit code; errors become one line on stderr."""
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command].run(args)
    except (InputError, CheckpointError) as e:
        print(f"mmvae {args.command}: error: {e}", file=sys.stderr)
        return 2
    except NonFiniteLossError as e:
        print(f"mmvae {args.command}: training stopped on non-finite losses: {e}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print(f"mmvae {args.command}: interrupted", file=sys.stderr)
        return 130
