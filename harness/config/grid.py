"""A sweep file's grid: its axes (`grid:`), the cross product of their values (every grid point
built and checked as a trial config), and the trials of grid points x seeds, each with a readable
name and a stable key. Problems are named by their place in the file (`grid.collab[1].heads`).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import config as C

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


class Problems:
    """Problems (place in the file, message), in the order found, each once."""

    def __init__(self) -> None:
        self.items: dict[C.Problem, None] = {}

    def add(self, place: str, message: str) -> None:
        self.items[C.Problem(place, message)] = None

    def __bool__(self) -> bool:
        return bool(self.items)

    def __iter__(self):
        return iter(self.items)


def grid_points(
    axes: list[list[Choice]], base: dict[str, Any], places: dict[str, str], problems: Problems
) -> list[tuple[dict[str, Any], dict[str, Any], list[tuple[str, str]], C.TrialConfig]]:
    """Every grid point as (its dotted keys, what the grid set, its name parts, its checked config);
    a point whose config has problems adds them, by their places in the file, and is left out."""
    points = []
    for point in itertools.product(*axes) if axes else [()]:
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
        points.append((flat, grid_values, [part for choice in point for part in choice.name_parts], cfg))
    return points


def _build_point(flat: dict[str, Any], places: dict[str, str], problems: Problems) -> C.TrialConfig | None:
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
class Choice:
    """One value of one grid axis: the dotted keys it sets, where each came from, its name parts."""

    place: str  # e.g. 'grid.collab[1]'
    values: dict[str, Any]
    places: dict[str, str]
    name_parts: list[tuple[str, str]]  # (section, text) pairs for the trial name


def parse_grid(grid: Any, problems: Problems) -> list[list[Choice]]:
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
            choices.append(Choice(item_place, flat, item_places, parts))
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


def _absolute_paths(flat: dict[str, Any]) -> dict[str, Any]:
    out = dict(flat)
    for key in PATH_KEYS:
        value = out.get(key)
        if isinstance(value, str) and value and not value.startswith("~") and not Path(value).is_absolute():
            with contextlib.suppress(OSError, ValueError):  # a name no system takes: validation says why
                out[key] = str(Path(value).resolve())
    return out


def expand(
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


PATH_KEYS = ("data.root", "noise.label_file")
