"""(moved: see the package docstring to come)"""

from harness.tracking.mlflow import *  # noqa: F403
