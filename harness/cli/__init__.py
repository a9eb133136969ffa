"""(moved: see the package docstring to come)"""

from harness.cli.main import main

__all__ = ["main"]
