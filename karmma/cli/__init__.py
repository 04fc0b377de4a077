"""The ``karmma`` command line (the app: it prints; the library logs)."""

from karmma.cli.main import main

__all__ = ["main"]
