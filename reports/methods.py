"""What tells a sweep's methods apart, what the report calls them and in which order it shows them.

A *method* is the combination of the params that vary across the sweep's trials, other than
``noise.*``, ``run.*`` and bookkeeping keys (`method_keys`). Its *family* is how its heads learn:
``individual`` (one network, plain training) or the trial's ``collab.method`` (``cl``, collaborative
learning, the default and what runs logged before the key existed did; ``dml``; ``coteaching``;
``coteaching_plus``; ``jocor``). `method_names` names and orders them: individual first, then
collaborative learning, then the peer methods.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from reports.params import (
    ARCH_PARAM,
    DATA_NAME_PARAM,
    HEADS_PARAM,
    LABEL_LOSS_PARAM,
    LABEL_SMOOTHING_PARAM,
    METHOD_PARAM,
    RECIPE_DEFAULTS,
    TOPOLOGY_PARAM,
    method_param,
    parse_value,
)
from reports.runs import Trial

# Params that never define a method: the noise condition, the seed and run bookkeeping.
NON_METHOD_PREFIXES = ("noise.", "run.", "sweep.", "tune.", "harness.")
NON_METHOD_KEYS = frozenset({"data.root", "data.download", "data.num_workers"})
# The params a method's first token is made of (collab.method among the recipe's): ``coteaching instances-2+gce``.
TOKEN_KEYS = (TOPOLOGY_PARAM, HEADS_PARAM, *RECIPE_DEFAULTS)
TOPOLOGY_ORDER = {"individual": 0, "instances": 1, "simple": 2, "hierarchical": 3}
# Individual training first, then collaborative learning, then the peer methods (by publication)
FAMILY_ORDER = {"individual": 0, "cl": 1, "dml": 2, "coteaching": 3, "coteaching_plus": 4, "jocor": 5}
# Families named by their topology alone (as before collab.method existed)
UNNAMED_FAMILIES = ("individual", "cl")


def family(params: dict[str, str]) -> str:
    """``individual`` for one-network training, else the trial's ``collab.method`` (default ``cl``)."""
    if params.get(TOPOLOGY_PARAM, "individual") == "individual":
        return "individual"
    return str(method_param(params, METHOD_PARAM))


def method_keys(trials: Iterable[Trial]) -> list[str]:
    """Params that tell the sweep's methods apart, sorted by name.

    A param counts if its value differs between trials (a missing param counts as its recipe
    default, or as a value of its own) and it splits the trials further than the keys before it
    (topology, heads and ``collab.method`` are tried first): a setting derived from others (e.g.
    the default ``collab.split`` of each topology) adds nothing and is left out. A method's own
    setting (any other ``collab.*`` key) must split the trials within a noise condition: a knob that
    follows the noise (a forget rate set to each condition's noise rate) does not make a method of its
    own. Trials without any params (failed before logging their config) are ignored here.
    """
    trials = [t for t in trials if t.params]
    names = {k for t in trials for k in t.params}
    first = {TOPOLOGY_PARAM: 0, HEADS_PARAM: 1, METHOD_PARAM: 2}
    candidates = [
        k
        for k in sorted(names, key=lambda k: (first.get(k, 3), k))
        if not k.startswith(NON_METHOD_PREFIXES) and k not in NON_METHOD_KEYS
    ]
    keys: list[str] = []
    for key in candidates:
        within = key.startswith("collab.") and key not in TOKEN_KEYS
        if _groups(trials, [*keys, key], within) > _groups(trials, keys, within):
            keys.append(key)
    return sorted(keys)


def _groups(trials: list[Trial], keys: list[str], within_condition: bool) -> int:
    """How many groups ``keys`` split ``trials`` into (within each noise condition, if asked)."""

    def noise(params: dict[str, str]) -> tuple:
        return (
            tuple(sorted((k, v) for k, v in params.items() if k.startswith("noise.")))
            if within_condition
            else ()
        )

    return len({(noise(t.params), *(method_param(t.params, k) for k in keys)) for t in trials})


@dataclass(frozen=True)
class MethodNames:
    """How the report names and orders the methods of one sweep (`method_names`).

    ``keys``: the params that tell the methods apart (`method_keys`). ``shown``: per family, the keys
    beyond the first token that its names show: those whose value varies among the family's trials
    (a forget rate swept for Co-teaching names Co-teaching's methods only; ``T`` swept for
    collaborative learning does not rename individual training).
    """

    keys: list[str]
    shown: dict[str, list[str]]

    def label(self, params: dict[str, str]) -> str:
        """A readable name: ``individual``, ``hierarchical-4``, ``dml instances-2``, ``coteaching
        simple-2``, ``hierarchical-4 T=2``, ``individual+gce``, ``individual+ls0.1``, ``T=4``.

        Family, topology and heads read as one token (collaborative learning, the default, is named
        by its topology alone); a label loss other than cross-entropy and label smoothing are appended
        to it (``+gce``, ``+sce``, ``+ls<eps>``: a cheap baseline is a method of its own); ``model.arch``
        and ``data.name`` read as their value; other keys as ``<last dotted part>=<value>``.
        """
        fam = family(params)
        token = _topology_token(params)
        if fam not in UNNAMED_FAMILIES:
            token = f"{fam} {token}"
        parts = [token + _recipe_suffix(params, self.keys)] if set(TOKEN_KEYS) & set(self.keys) else []
        for key in self.shown.get(fam, []):
            value = _fmt_value(parse_value(params.get(key)))
            parts.append(
                value if key in (ARCH_PARAM, DATA_NAME_PARAM) else f"{key.rsplit('.', 1)[-1]}={value}"
            )
        # A single method: name it by its family and topology so the tables still say what was trained.
        return " ".join(parts) if parts else token

    def sort_key(self, params: dict[str, str]) -> tuple:
        """Family (FAMILY_ORDER), topology (TOPOLOGY_ORDER), then the value of each key."""
        fam = family(params)
        key: list = [
            FAMILY_ORDER.get(fam, len(FAMILY_ORDER)),
            fam,
            TOPOLOGY_ORDER.get(params.get(TOPOLOGY_PARAM, "individual"), 9),
        ]
        for k in self.keys:
            v = parse_value(method_param(params, k))
            # Numbers before strings, both ordered among themselves.
            key.append((0, float(v), "") if isinstance(v, int | float) else (1, 0.0, str(v)))
        return tuple(key)


def method_names(trials: Iterable[Trial]) -> MethodNames:
    """The naming of ``trials``' methods: their keys, and the keys each family's names show."""
    trials = [t for t in trials if t.params]
    keys = method_keys(trials)
    shown: dict[str, list[str]] = {}
    for fam in dict.fromkeys(family(t.params) for t in trials):
        mine = [t for t in trials if family(t.params) == fam]
        shown[fam] = [
            k for k in keys if k not in TOKEN_KEYS and len({method_param(t.params, k) for t in mine}) > 1
        ]
    return MethodNames(keys=keys, shown=shown)


def _topology_token(params: dict[str, str]) -> str:
    topo = params.get(TOPOLOGY_PARAM, "individual")
    return topo if topo == "individual" else f"{topo}-{params.get(HEADS_PARAM, '?')}"


def _recipe_suffix(params: dict[str, str], keys: list[str]) -> str:
    """``+gce``, ``+ls0.1``: the label loss and smoothing, where they tell methods apart."""
    suffix = ""
    if LABEL_LOSS_PARAM in keys and (loss := method_param(params, LABEL_LOSS_PARAM)) != "ce":
        suffix += f"+{loss}"
    smoothing = parse_value(method_param(params, LABEL_SMOOTHING_PARAM))
    if LABEL_SMOOTHING_PARAM in keys and isinstance(smoothing, int | float) and smoothing > 0:
        suffix += f"+ls{smoothing:g}"
    return suffix


def _fmt_value(value: object) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value).lower() if isinstance(value, bool) else str(value)
