"""(moved: see the package docstring to come)"""

from harness.models.backbones import *  # noqa: F403
