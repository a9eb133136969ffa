"""The trial params a report reads, as MLflow stores them (strings): names, parsing, recipe defaults.

A trial's params are its resolved config flattened with dots (docs/config.md); these are
the keys the report itself reads. (harness.contract names the metrics and tags; the config keys are
the trial config's own contract.)
"""

from __future__ import annotations

TOPOLOGY_PARAM = "collab.topology"
HEADS_PARAM = "collab.heads"
METHOD_PARAM = "collab.method"  # cl (collaborative learning), dml, coteaching, coteaching_plus, jocor
SEED_PARAM = "run.seed"
WORKERS_PARAM = "run.workers"  # data-parallel processes, where the run has no world-size tag
NOISE_KIND_PARAM = "noise.kind"
NOISE_RATE_PARAM = "noise.rate"
NOISE_LABEL_SET_PARAM = "noise.label_set"
LABEL_LOSS_PARAM = "optim.label_loss"
LABEL_SMOOTHING_PARAM = "optim.label_smoothing"
ARCH_PARAM = "model.arch"
DATA_NAME_PARAM = "data.name"

# The training recipe: how the heads learn from each other and the label loss. A run logged before
# these keys existed trained with the default (collaborative learning, cross-entropy, no smoothing).
# A method that changes them is another method, named ``dml instances-2``, ``<topology>+gce``,
# ``<topology>+ls0.1`` (label smoothing 0.1) by ``reports.methods``.
RECIPE_DEFAULTS = {METHOD_PARAM: "cl", LABEL_LOSS_PARAM: "ce", LABEL_SMOOTHING_PARAM: "0.0"}


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
