"""What tells a sweep's methods apart and what the report calls them.

A *method* is the combination of the params that vary across the sweep's trials, other than
``noise.*``, ``run.*`` and bookkeeping keys; `method_label` names it, `method_sort_key` orders it.
"""

from __future__ import annotations

from collections.abc import Iterable

from reports.params import (
    ARCH_PARAM,
    DATA_NAME_PARAM,
    HEADS_PARAM,
    LABEL_LOSS_PARAM,
    LABEL_SMOOTHING_PARAM,
    RECIPE_DEFAULTS,
    TOPOLOGY_PARAM,
    method_param,
    parse_value,
)
from reports.runs import Trial

# Params that never define a method: the noise condition, the seed and run bookkeeping.
NON_METHOD_PREFIXES = ("noise.", "run.", "sweep.", "tune.", "harness.")


NON_METHOD_KEYS = frozenset({"data.root", "data.download", "data.num_workers"})


TOPOLOGY_ORDER = {"individual": 0, "instances": 1, "simple": 2, "hierarchical": 3}


def _fmt_value(value: object) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value).lower() if isinstance(value, bool) else str(value)


def method_keys(trials: Iterable[Trial]) -> list[str]:
    """Params that tell the sweep's methods apart: topology and heads first, then sorted by name.

    A param counts if its value differs between trials (a missing param counts as a value) and it
    splits the trials further than the keys before it: a setting derived from others (e.g. the
    default ``collab.split`` of each topology) adds nothing and is left out. Trials without any params
    (failed before logging their config) are ignored here.
    """
    trials = [t for t in trials if t.params]
    names = {k for t in trials for k in t.params}
    candidates = [
        k
        for k in sorted(names, key=lambda k: ({TOPOLOGY_PARAM: 0, HEADS_PARAM: 1}.get(k, 2), k))
        if not k.startswith(NON_METHOD_PREFIXES) and k not in NON_METHOD_KEYS
    ]
    keys: list[str] = []
    groups = 1
    for key in candidates:
        split = len({tuple(method_param(t.params, k) for k in (*keys, key)) for t in trials})
        if split > groups:
            keys.append(key)
            groups = split
    return sorted(keys)


def method_label(params: dict[str, str], keys: list[str]) -> str:
    """A readable name for one method: ``individual``, ``hierarchical-4``, ``hierarchical-4 T=2``, ``T=4``,
    ``individual+gce``, ``individual+ls0.1``.

    Topology and heads read as one token; a label loss other than cross-entropy and label smoothing
    are appended to it (``+gce``, ``+sce``, ``+ls<eps>``: a cheap baseline is a method of its own);
    ``model.arch`` and ``data.name`` read as their value; other keys as ``<last dotted part>=<value>``.
    """
    topo = params.get(TOPOLOGY_PARAM, "individual")
    token = topo if topo == "individual" else f"{topo}-{params.get(HEADS_PARAM, '?')}"
    recipe = ""
    if LABEL_LOSS_PARAM in keys and (loss := method_param(params, LABEL_LOSS_PARAM)) != "ce":
        recipe += f"+{loss}"
    smoothing = parse_value(method_param(params, LABEL_SMOOTHING_PARAM))
    if LABEL_SMOOTHING_PARAM in keys and isinstance(smoothing, int | float) and smoothing > 0:
        recipe += f"+ls{smoothing:g}"
    parts = []
    if {TOPOLOGY_PARAM, HEADS_PARAM, *RECIPE_DEFAULTS} & set(keys):
        parts.append(token + recipe)
    for key in keys:
        if key in (TOPOLOGY_PARAM, HEADS_PARAM, *RECIPE_DEFAULTS):
            continue
        value = _fmt_value(parse_value(params.get(key)))
        parts.append(value if key in (ARCH_PARAM, DATA_NAME_PARAM) else f"{key.rsplit('.', 1)[-1]}={value}")
    # A single method: name it by its topology so the tables still say what was trained.
    return " ".join(parts) if parts else token


def method_sort_key(params: dict[str, str], keys: list[str]) -> tuple:
    key: list = [TOPOLOGY_ORDER.get(params.get(TOPOLOGY_PARAM, "individual"), 9)]
    for k in keys:
        v = parse_value(method_param(params, k))
        # Numbers before strings, both ordered among themselves.
        key.append((0, float(v), "") if isinstance(v, int | float) else (1, 0.0, str(v)))
    return tuple(key)
