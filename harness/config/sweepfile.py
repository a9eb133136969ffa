"""Sweep files: parsing, grid x seeds expansion and complete validation, into a `Sweep` of `Trial`s.

The commands that read them are harness.cli.sweep (`harness sweep`, `harness validate`); the
runners take the `Sweep` (harness.cluster.tune under Ray, harness.run.export for `harness run`).

A sweep file (DESIGN.md, "Trial config and sweep files"):

    name: cifar10-symmetric        # Ray experiment folder; MLflow parent run name
    experiment: cifar10-noise      # MLflow experiment [name]
    metric: test/acc               # what Tune ranks by [test/acc]
    mode: max                      # max|min [max, min for train/loss and time/*]
    base: {data: {name: cifar10, root: ~/data}, optim: {epochs: 200}}
    grid:                          # cross product of the listed values, first axis slowest
      noise.rate: [0.2, 0.4]       # a dotted key and its values
      collab:                      # a section and a list of mappings: several keys set together
        - {topology: individual, heads: 1}
        - {topology: hierarchical, heads: 4}
    seeds: [0, 1, 2]               # every grid point once per seed (sets run.seed) [[0]]
    resources: {cpu: 1, gpu: 0.25} # per trial; fractional GPUs share a card [cpu 1, gpu 0]
                                   # {workers: 8, cpu: 8, gpu: 1}: each trial as 8 data-parallel
                                   # processes (Ray Train DDP; sets run.workers), cpu/gpu per worker
    max_concurrent: 4              # at most this many trials at once [as resources allow]
    max_failures: 1                # retries of a failed trial from its last checkpoint [1]
    pack: 4                        # up to 4 compatible trials train as one step on one device
                                   # (harness.config.packs says which); resources are then per pack [1]

Validation is complete before anything starts: every problem is collected and named by its
place in the file (`grid.noise.rate[2]`, `grid.collab[1].heads`, `base.model.arch`), and
each grid point is built with `harness.config.schema.build_config`, so a sweep that validates only
holds trials that the trial config accepts. Trials are ordered seed by seed: the first
len(grid) trials give a complete comparison for the first seed.

Relative paths (data.root, noise.label_file) are made absolute against the working
directory, because Ray trials run in their own folders; `~` stays as written and is expanded
where the trial runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import config as C
from harness.config.packs import Pack, plan_packs
from harness.contract import EPOCH_METRICS, HEAD_ACC, TEST_ACC, TRAIN_MEMORIZED, lower_is_better

TOP_KEYS = (
    "name",
    "experiment",
    "metric",
    "mode",
    "base",
    "grid",
    "seeds",
    "resources",
    "max_concurrent",
    "max_failures",
    "pack",
)
RESOURCE_KEYS = ("cpu", "gpu", "workers")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*$")
PATH_KEYS = ("data.root", "noise.label_file")
# Values shown bare in trial names: 'symmetric-0.4 hierarchical-4 seed1'. Others read 'T=4.0'.
_BARE_KEYS = ("noise.rate", "collab.heads")


@dataclass(frozen=True)
class Trial:
    """One trial of a sweep: a grid point with one seed."""

    index: int
    name: str  # readable and unique within the sweep, e.g. 'symmetric-0.4 hierarchical-4 seed1'
    key: str  # digest of the resolved config: the MLflow tag harness.trial_key, stable across resumes
    overrides: dict[str, Any]  # the dotted keys the grid and the seed set
    config: C.TrialConfig

    @property
    def dirname(self) -> str:
        """A folder name for the trial: index first, so folders sort in run order."""
        safe = re.sub(r"[^A-Za-z0-9._=-]+", "_", self.name).strip("_")
        return f"{self.index:03d}_{safe}"[:120]


@dataclass
class Sweep:
    """A validated sweep file: its settings and the expanded trials."""

    name: str
    experiment: str
    metric: str
    mode: str
    source: str
    trials: list[Trial]
    grid_points: int
    seeds: list[int]
    resources: dict[str, float] = field(default_factory=lambda: {"cpu": 1.0, "gpu": 0.0})
    max_concurrent: int | None = None
    max_failures: int = 1
    workers: int = 1  # resources.workers: data-parallel processes per trial (resources are per worker)
    pack: int = 1  # at most this many compatible trials train as one step (harness.config.packs)

    @property
    def packs(self) -> list[Pack]:
        """The packs the trials train in (a pack of one trains alone); positions index `trials`."""
        return plan_packs([t.config for t in self.trials], self.pack)


class _Problems:
    """Problems (place in the file, message), in the order found, each once."""

    def __init__(self) -> None:
        self.items: dict[C.Problem, None] = {}

    def add(self, place: str, message: str) -> None:
        self.items[C.Problem(place, message)] = None

    def __bool__(self) -> bool:
        return bool(self.items)

    def __iter__(self):
        return iter(self.items)


def load_sweep(path: str | Path, overrides: Mapping[str, Any] | None = None) -> Sweep:
    """Read, validate and expand a sweep file.

    `overrides` are dotted keys applied to every trial on top of `base` (`--set`); a key the
    grid varies cannot be overridden. Raises FileNotFoundError for a missing file and
    ConfigError listing every problem (place, message) otherwise.
    """
    tree = C.load_yaml(path)
    return parse_sweep(tree, source=str(path), overrides=overrides)


def parse_sweep(tree: Mapping[str, Any], *, source: str, overrides: Mapping[str, Any] | None = None) -> Sweep:
    """The Sweep for a parsed sweep file; ConfigError lists every problem by its place."""
    problems = _Problems()
    for key in tree:
        if key not in TOP_KEYS:
            hint = C.did_you_mean(str(key), list(TOP_KEYS))
            if not hint and key in C.SECTIONS:
                hint = f"; config sections go under base (or grid), e.g. base.{key}"
            problems.add(C.key_text(key), f"unknown key{hint}")

    name = tree.get("name")
    if name is None:
        problems.add("name", "missing; every sweep needs a name (its Ray folder and MLflow parent run)")
    elif not isinstance(name, str) or not _NAME.match(name):
        problems.add("name", f"must be a folder-safe name (letters, digits, '.', '_', '-'), got {name!r}")
    experiment = tree.get("experiment", name)
    if experiment is not None and (not isinstance(experiment, str) or not experiment.strip()):
        problems.add("experiment", f"must be a non-empty string, got {experiment!r}")
    metric = tree.get("metric", TEST_ACC)
    if not isinstance(metric, str) or not (metric in EPOCH_METRICS or HEAD_ACC.match(metric)):
        hint = C.did_you_mean(str(metric), list(EPOCH_METRICS))
        problems.add(
            "metric",
            f"unknown metric {metric!r}; choose from {', '.join(EPOCH_METRICS)}, test/acc_head<h>{hint}",
        )
    default_mode = "min" if isinstance(metric, str) and lower_is_better(metric) else "max"
    mode = tree.get("mode", default_mode)
    if mode not in ("max", "min"):
        problems.add("mode", f"must be max or min, got {mode!r}")

    base, base_places = _parse_base(tree.get("base"), problems)
    set_places = {}
    for key, value in (overrides or {}).items():
        base[key] = value
        set_places[key] = f"--set {key}"
    places = {**base_places, **set_places}
    axes = _parse_grid(tree.get("grid"), problems)
    seeds = _parse_seeds(tree.get("seeds"), base, places, problems)
    resources = _parse_resources(tree.get("resources"), problems)
    workers = resources.pop("workers", 1)
    max_concurrent = _parse_count(tree, "max_concurrent", None, minimum=1, problems=problems)
    max_failures = _parse_count(tree, "max_failures", 1, minimum=0, problems=problems)
    pack = _parse_count(tree, "pack", 1, minimum=1, problems=problems)
    if pack > 1 and workers > 1:
        problems.add(
            "pack",
            f"packs train one-process trials together; resources.workers is {workers} (drop one of them)",
        )

    varied: dict[str, str] = {}  # dotted key -> where the grid first sets it
    for axis in axes:
        for choice in axis:
            for key, place in choice.places.items():
                varied.setdefault(key, place)
    for key in set_places:
        if key in varied:
            problems.add(
                f"--set {key}", f"the grid varies this key ({varied[key]}); edit the sweep file instead"
            )
    if "run.seed" in varied:
        problems.add(varied["run.seed"], "set seeds with the top-level seeds list, not in the grid")
    for place in [varied.get("run.workers"), places.get("run.workers")]:
        if place:
            problems.add(
                place, "set a trial's data-parallel processes with resources.workers (for every trial)"
            )
    if workers > 1:
        base["run.workers"] = workers
        places["run.workers"] = "resources.workers"
        if resources["gpu"] not in (0.0, 1.0):
            problems.add(
                "resources.gpu",
                f"with workers > 1 each worker takes 0 or 1 whole GPU (NCCL needs a card per process), "
                f"got {resources['gpu']:g}",
            )

    points = list(itertools.product(*axes)) if axes else [()]
    configs: list[tuple[dict[str, Any], dict[str, Any], list[tuple[str, str]], C.TrialConfig]] = []
    for point in points:
        flat = dict(base)
        point_places = dict(places)
        for choice in point:
            flat.update(choice.values)
            point_places.update(choice.places)
        flat.pop("run.seed", None)
        flat = _absolute_paths(flat)
        cfg = _build_point(flat, point_places, problems)
        if cfg is None:
            continue
        grid_values = {key: value for choice in point for key, value in choice.values.items()}
        configs.append((flat, grid_values, [part for choice in point for part in choice.name_parts], cfg))
    if metric and (m := HEAD_ACC.match(str(metric))):
        fewest = min((cfg.collab.heads for *_, cfg in configs), default=None)
        if fewest is not None and int(m.group(1)) >= fewest:
            problems.add(
                "metric", f"{metric} needs heads > {m.group(1)} in every trial; some trials have {fewest}"
            )
    if metric == TRAIN_MEMORIZED:
        clean = next((cfg.noise for *_, cfg in configs if not _flips_labels(cfg.noise)), None)
        if clean is not None:  # Tune would fail those trials: they never report the metric
            problems.add(
                "metric",
                f"{metric} is logged only where labels are flipped; some trials have noise.kind {clean.kind}, "
                f"rate {clean.rate:g} (rank by test/acc, or give every trial noise)",
            )
    if problems:
        raise C.ConfigError(list(problems), source)

    trials = _expand(configs, seeds)
    seen: dict[str, Trial] = {}
    for trial in trials:
        if trial.key in seen:
            problems.add(
                "grid", f"trials {seen[trial.key].name!r} and {trial.name!r} resolve to the same config"
            )
        seen.setdefault(trial.key, trial)
    if problems:
        raise C.ConfigError(list(problems), source)
    return Sweep(
        name=name,
        experiment=experiment or name,
        metric=metric,
        mode=mode,
        source=source,
        trials=trials,
        grid_points=len(configs),
        seeds=seeds,
        resources=resources,
        max_concurrent=max_concurrent,
        max_failures=max_failures,
        workers=workers,
        pack=pack,
    )


def _flips_labels(noise: C.NoiseConfig) -> bool:
    """Whether a noise config can flip a label (human and matrix noise: as their labels or matrix say)."""
    return noise.kind != "none" and (noise.kind in ("human", "matrix") or noise.rate > 0)


def _build_point(flat: dict[str, Any], places: dict[str, str], problems: _Problems) -> C.TrialConfig | None:
    """build_config for one grid point, its problems mapped to their places in the file.

    build_config stops at bad values before the checks that involve several keys; those run
    again without the bad values, so one pass shows every problem.
    """
    try:
        return C.build_config(None, flat)
    except C.ConfigError as exc:
        bad = set()
        for key, message in exc.problems:
            problems.add(places.get(key, f"base.{key}"), message)
            bad.add(key)
    try:
        C.build_config(None, {k: v for k, v in flat.items() if k not in bad})
    except C.ConfigError as exc:
        for key, message in exc.problems:
            if key not in bad:  # not 'data.root: needs data.root' after 'data.root: does not exist'
                problems.add(places.get(key, f"base.{key}"), message)
    return None


@dataclass
class _Choice:
    """One value of one grid axis: the dotted keys it sets, where each came from, its name parts."""

    place: str  # e.g. 'grid.collab[1]'
    values: dict[str, Any]
    places: dict[str, str]
    name_parts: list[tuple[str, str]]  # (section, text) pairs for the trial name


def _parse_base(base: Any, problems: _Problems) -> tuple[dict[str, Any], dict[str, str]]:
    if base is None:
        return {}, {}
    if not isinstance(base, dict):
        problems.add("base", f"must be a mapping of config sections, got {type(base).__name__} {base!r}")
        return {}, {}
    flat = C.flatten(base)
    return flat, {key: f"base.{key}" for key in flat}


def _parse_grid(grid: Any, problems: _Problems) -> list[list[_Choice]]:
    if grid is None:
        return []
    if not isinstance(grid, dict):
        problems.add(
            "grid", f"must be a mapping of keys to lists of values, got {type(grid).__name__} {grid!r}"
        )
        return []
    axes = []
    owner: dict[str, str] = {}  # dotted key -> the axis that sets it
    for axis, values in grid.items():
        axis = C.key_text(axis)
        place = f"grid.{axis}"
        is_section = axis in C.SECTIONS
        if not is_section and (problem := C.check_key(axis)) is not None:
            if axis.split(".")[0] not in C.SECTIONS:
                problem = f"unknown key{C.did_you_mean(axis, [*C.all_keys(), *C.SECTIONS])}"
            problems.add(place, problem)
            continue
        if not isinstance(values, list) or not values:
            got = f"{type(values).__name__} {values!r}"
            hint = f"; write [{values}] for a single value" if not isinstance(values, (list, dict)) else ""
            problems.add(place, f"must be a non-empty list of values, got {got}{hint}")
            continue
        choices = []
        for i, item in enumerate(values):
            item_place = f"{place}[{i}]"
            if is_section:
                if not isinstance(item, dict) or not item:
                    problems.add(
                        item_place,
                        f"must be a mapping of {axis} keys, e.g. {{topology: simple, heads: 2}}, got {item!r}",
                    )
                    continue
                flat = {f"{axis}.{k}": v for k, v in C.flatten(item).items()}
                item_places = {key: f"{item_place}.{key[len(axis) + 1 :]}" for key in flat}
            else:
                if isinstance(item, dict):
                    problems.add(item_place, f"must be a value of {axis}, got a mapping {item!r}")
                    continue
                flat, item_places = {axis: item}, {axis: item_place}
            parts = [(key.split(".")[0], _name_part(key, value, i)) for key, value in flat.items()]
            choices.append(_Choice(item_place, flat, item_places, parts))
        for key in {key for choice in choices for key in choice.values}:
            if key in owner:
                first = next(c.places[key] for c in choices if key in c.values)
                problems.add(first, f"also set by {owner[key]}; set each key in one grid axis")
            owner.setdefault(key, place)
        for i, choice in enumerate(choices):
            for earlier in choices[:i]:
                if _same(choice.values, earlier.values):
                    problems.add(choice.place, f"repeats {earlier.place} ({_show(choice.values, axis)})")
                    break
        axes.append(choices)
    return axes


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def _show(values: dict[str, Any], axis: str) -> str:
    return repr(values[axis]) if axis in values else repr({k.split(".", 1)[1]: v for k, v in values.items()})


def _name_part(key: str, value: Any, index: int) -> str:
    last = key.split(".")[-1]
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return f"{last}={str(value).lower()}"
    if isinstance(value, (int, float)) and key in _BARE_KEYS:
        return f"{value:g}" if isinstance(value, float) else str(value)
    if isinstance(value, (int, float)) or value is None:
        return f"{last}={'null' if value is None else value}"
    return f"{last}[{index}]"


def _parse_seeds(seeds: Any, base: dict[str, Any], places: dict[str, str], problems: _Problems) -> list[int]:
    """The seeds list; without one, the run.seed of base (or --set), else [0]."""
    if seeds is None:
        seed = base.get("run.seed", 0)
        if isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed < 2**32:
            return [seed]
        problems.add(
            places.get("run.seed", "base.run.seed"), f"must be an integer in [0, 2**32), got {C.shown(seed)}"
        )
        return [0]
    if "run.seed" in base:
        problems.add(places.get("run.seed", "base.run.seed"), "the seeds list sets run.seed; remove it here")
    if not isinstance(seeds, list) or not seeds:
        problems.add("seeds", f"must be a non-empty list of integers >= 0, got {seeds!r}")
        return [0]
    out = []
    for i, seed in enumerate(seeds):
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
            problems.add(f"seeds[{i}]", f"must be an integer in [0, 2**32), got {C.shown(seed)}")
        elif seed in out:
            problems.add(f"seeds[{i}]", f"repeats seed {seed}")
        else:
            out.append(seed)
    return out or [0]


def _parse_resources(resources: Any, problems: _Problems) -> dict[str, float]:
    out = {"cpu": 1.0, "gpu": 0.0}
    if resources is None:
        return out
    if not isinstance(resources, dict):
        problems.add("resources", f"must be a mapping like {{cpu: 1, gpu: 0.25}}, got {resources!r}")
        return out
    for key, value in resources.items():
        place = f"resources.{C.key_text(key)}"
        if key not in RESOURCE_KEYS:
            hint = C.did_you_mean(str(key), list(RESOURCE_KEYS)) or "; choose from cpu, gpu, workers"
            problems.add(place, f"unknown key{hint}")
            continue
        if key == "workers":
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                problems.add(place, f"must be a positive integer (processes per trial), got {value!r}")
            else:
                out[key] = value
        elif not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            problems.add(place, f"must be a finite number, got {C.shown(value)}")
        elif key == "cpu" and value <= 0:
            problems.add(place, f"must be > 0, got {value}")
        elif key == "gpu" and (value < 0 or (value > 1 and value != int(value))):
            problems.add(place, f"must be >= 0, a fraction below 1 or a whole number, got {value}")
        else:
            out[key] = float(value)
    return out


def _parse_count(
    tree: Mapping[str, Any], key: str, default: int | None, *, minimum: int, problems: _Problems
) -> int | None:
    value = tree.get(key, default)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        problems.add(key, f"must be an integer >= {minimum}, got {value!r}")
        return default
    return value


def _absolute_paths(flat: dict[str, Any]) -> dict[str, Any]:
    out = dict(flat)
    for key in PATH_KEYS:
        value = out.get(key)
        if isinstance(value, str) and value and not value.startswith("~") and not Path(value).is_absolute():
            with contextlib.suppress(OSError, ValueError):  # a name no system takes: validation says why
                out[key] = str(Path(value).resolve())
    return out


def _expand(
    configs: list[tuple[dict[str, Any], dict[str, Any], list[tuple[str, str]], C.TrialConfig]],
    seeds: list[int],
) -> list[Trial]:
    """Grid points x seeds, seed by seed; names unique within the sweep."""
    trials: list[Trial] = []
    names: set[str] = set()
    for seed in seeds:
        for flat, grid_values, parts, _ in configs:
            cfg = C.build_config(None, {**flat, "run.seed": seed})
            name = _trial_name(parts, seed)
            if name in names:
                name = f"{name} #{len(trials)}"
            names.add(name)
            full = C.to_flat(cfg)
            key = hashlib.sha1(json.dumps(full, sort_keys=True, default=str).encode()).hexdigest()[:12]
            trials.append(Trial(len(trials), name, key, {**grid_values, "run.seed": seed}, cfg))
    return trials


def _trial_name(parts: list[tuple[str, str]], seed: int) -> str:
    """Parts of one section joined by '-', sections by ' ': 'symmetric-0.4 hierarchical-4 seed1'."""
    groups: list[tuple[str, list[str]]] = []
    for section, text in parts:
        if groups and groups[-1][0] == section:
            groups[-1][1].append(text)
        else:
            groups.append((section, [text]))
    return " ".join(["-".join(texts) for _, texts in groups] + [f"seed{seed}"])
