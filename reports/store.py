"""Where the MLflow tracking store lives: one place for the sweeps, the report and the UI to agree on."""

from __future__ import annotations

import os
from pathlib import Path


def default_tracking_uri() -> str:
    """The tracking URI: ``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<abs cwd>/mlflow.db``.

    The default is absolute because Ray trials change their working directory; a relative
    ``sqlite:///mlflow.db`` would give every trial its own empty store.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if uri:
        return uri
    return f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, or None for any other kind of store."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return None
    # sqlite:////abs/path keeps the leading slash of the absolute path after the prefix.
    return Path(uri[len(prefix) :])
