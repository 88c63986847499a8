"""The ``picoalign`` command line: subcommands, the demo and the plots they write."""

from picoalign.cli.commands import build_parser, main

__all__ = ["build_parser", "main"]
