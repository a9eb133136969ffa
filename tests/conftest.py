"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The ``shared`` folder beside the checkout (real CIFAR-10 images, CIFAR-N label files).

    ``HARNESS_SHARED`` overrides the location; tests that need it skip when it is absent.
    """
    env = os.environ.get("HARNESS_SHARED")
    path = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared"
    if not path.is_dir():
        pytest.skip(f"../shared not found (set HARNESS_SHARED); looked in {path}")
    return path
