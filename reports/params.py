"""The trial params a report reads, as MLflow stores them (strings): parsing and recipe defaults."""

from __future__ import annotations

# The training recipe's label loss: a run logged before these keys existed trained with the default.
# A method that changes them is another method, named ``<topology>+gce``, ``<topology>+ls0.1`` (label
# smoothing 0.1) by `method_label`.
RECIPE_DEFAULTS = {"optim.label_loss": "ce", "optim.label_smoothing": "0.0"}


def method_param(params: dict[str, str], key: str) -> str | None:
    """A run's param ``key``, or its recipe default (RECIPE_DEFAULTS) when the run did not log it."""
    return params.get(key, RECIPE_DEFAULTS.get(key) if params else None)


def parse_value(text: str | None) -> object:
    """An MLflow param string as int, float, bool or the string itself (None stays None)."""
    if text is None:
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    return text
