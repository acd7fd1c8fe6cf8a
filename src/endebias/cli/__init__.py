"""The command line: thin subcommands over the library (``endebias.cli.main``)."""

from endebias.cli.main import main

__all__ = ["main"]
