"""(moved: see the package docstring to come)"""

from harness.collab.graph import *  # noqa: F403
