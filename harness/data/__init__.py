"""(moved: see the package docstring to come)"""

from harness.data.datasets import *  # noqa: F403
