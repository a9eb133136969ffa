"""(moved: see the package docstring to come)"""

from harness.config.schema import *  # noqa: F403
