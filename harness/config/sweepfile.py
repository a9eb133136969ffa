"""Sweep files: parsing and complete validation into a `Sweep` of `Trial`s (the grid's points x the
seeds: harness.config.grid).

The commands that read them are harness.cli.sweep (`harness sweep`, `harness validate`); the
runners take the `Sweep` (harness.cluster.tune under Ray, harness.run.export for `harness run`).

A sweep file (docs/sweep-files.md says more):

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
each grid point is built with `harness.config.build_config`, so a sweep that validates only
holds trials that the trial config accepts. Trials are ordered seed by seed: the first
len(grid) trials give a complete comparison for the first seed.

Relative paths (data.root, noise.label_file) are made absolute against the working
directory, because Ray trials run in their own folders; `~` stays as written and is expanded
where the trial runs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import config as C
from harness.config.grid import Choice, Problems, Trial, expand, grid_points, parse_grid
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
    problems = Problems()
    _check_top_keys(tree, problems)
    name, experiment, metric, mode = _parse_identity(tree, problems)
    base, places, set_places = _parse_base(tree.get("base"), overrides or {}, problems)
    axes = parse_grid(tree.get("grid"), problems)
    seeds = _parse_seeds(tree.get("seeds"), base, places, problems)
    launch = _parse_launch(tree, problems)
    _check_varied(axes, places, set_places, launch.workers, problems)
    if launch.workers > 1:
        base["run.workers"] = launch.workers
        places["run.workers"] = "resources.workers"
    points = grid_points(axes, base, places, problems)
    _check_metric(metric, [cfg for *_, cfg in points], problems)
    if problems:
        raise C.ConfigError(list(problems), source)
    trials = expand(points, seeds)
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
        grid_points=len(points),
        seeds=seeds,
        resources=launch.resources,
        max_concurrent=launch.max_concurrent,
        max_failures=launch.max_failures,
        workers=launch.workers,
        pack=launch.pack,
    )


def _check_top_keys(tree: Mapping[str, Any], problems: Problems) -> None:
    for key in tree:
        if key not in TOP_KEYS:
            hint = C.did_you_mean(str(key), list(TOP_KEYS))
            if not hint and key in C.SECTIONS:
                hint = f"; config sections go under base (or grid), e.g. base.{key}"
            problems.add(C.key_text(key), f"unknown key{hint}")


def _parse_identity(tree: Mapping[str, Any], problems: Problems) -> tuple[Any, Any, Any, Any]:
    """name, experiment, metric and mode, each checked."""
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
    return name, experiment, metric, mode


@dataclass
class _Launch:
    """How a sweep's trials are launched: resources per trial (or pack), concurrency, retries, packs."""

    resources: dict[str, float]
    workers: int
    max_concurrent: int | None
    max_failures: int
    pack: int


def _parse_launch(tree: Mapping[str, Any], problems: Problems) -> _Launch:
    resources = _parse_resources(tree.get("resources"), problems)
    workers = resources.pop("workers", 1)
    launch = _Launch(
        resources,
        workers,
        _parse_count(tree, "max_concurrent", None, minimum=1, problems=problems),
        _parse_count(tree, "max_failures", 1, minimum=0, problems=problems),
        _parse_count(tree, "pack", 1, minimum=1, problems=problems),
    )
    if launch.pack > 1 and workers > 1:
        problems.add(
            "pack",
            f"packs train one-process trials together; resources.workers is {workers} (drop one of them)",
        )
    if workers > 1 and resources["gpu"] not in (0.0, 1.0):
        problems.add(
            "resources.gpu",
            f"with workers > 1 each worker takes 0 or 1 whole GPU (NCCL needs a card per process), "
            f"got {resources['gpu']:g}",
        )
    return launch


def _check_varied(
    axes: list[list[Choice]],
    places: dict[str, str],
    set_places: dict[str, str],
    workers: int,
    problems: Problems,
) -> None:
    """Keys the grid varies that --set, the seeds list or resources.workers set instead."""
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


def _check_metric(metric: Any, configs: list[C.TrialConfig], problems: Problems) -> None:
    """A metric some trials would never report: Tune would fail them."""
    if metric and (m := HEAD_ACC.match(str(metric))):
        fewest = min((cfg.collab.heads for cfg in configs), default=None)
        if fewest is not None and int(m.group(1)) >= fewest:
            problems.add(
                "metric", f"{metric} needs heads > {m.group(1)} in every trial; some trials have {fewest}"
            )
    if metric == TRAIN_MEMORIZED:
        clean = next((cfg.noise for cfg in configs if not _flips_labels(cfg.noise)), None)
        if clean is not None:
            problems.add(
                "metric",
                f"{metric} is logged only where labels are flipped; some trials have noise.kind {clean.kind}, "
                f"rate {clean.rate:g} (rank by test/acc, or give every trial noise)",
            )


def _flips_labels(noise: C.NoiseConfig) -> bool:
    """Whether a noise config can flip a label (human and matrix noise: as their labels or matrix say)."""
    return noise.kind != "none" and (noise.kind in ("human", "matrix") or noise.rate > 0)


def _parse_base(
    base: Any, overrides: Mapping[str, Any], problems: Problems
) -> tuple[dict[str, Any], dict[str, str], dict[str, str]]:
    """base's dotted keys with --set's over them, each key's place, and the places of --set's keys."""
    flat: dict[str, Any] = {}
    if base is not None and not isinstance(base, dict):
        problems.add("base", f"must be a mapping of config sections, got {type(base).__name__} {base!r}")
    elif base is not None:
        flat = C.flatten(base)
    places = {key: f"base.{key}" for key in flat}
    set_places = {}
    for key, value in overrides.items():
        flat[key] = value
        set_places[key] = f"--set {key}"
    return flat, {**places, **set_places}, set_places


def _parse_seeds(seeds: Any, base: dict[str, Any], places: dict[str, str], problems: Problems) -> list[int]:
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


def _parse_resources(resources: Any, problems: Problems) -> dict[str, float]:
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
    tree: Mapping[str, Any], key: str, default: int | None, *, minimum: int, problems: Problems
) -> int | None:
    value = tree.get(key, default)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        problems.add(key, f"must be an integer >= {minimum}, got {value!r}")
        return default
    return value
