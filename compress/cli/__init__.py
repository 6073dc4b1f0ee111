"""The `compress` command: a thin shell over the Python API (compress/api.py)."""

from compress.cli.main import main

__all__ = ["main"]
