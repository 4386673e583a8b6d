"""The asiarch command line (re-exports ``main``)."""

from asiarch.cli.main import main

__all__ = ["main"]
