"""An exported sweep on disk: what `harness sweep FILE --export DIR` writes, `harness run DIR` fills
and `harness sync DIR` reads.

    DIR/export.json              the export: its id, sweep name, MLflow experiment, metric, CPUs per trial,
                                 pack size (`harness run` trains compatible trials as packs of it)
    DIR/sweep.yaml               the sweep file as resolved (--set applied, defaults written out)
    DIR/<NNN>_<trial-name>/      one folder per trial, index first (folders sort in run order)
        trial.json               its identity: index, name, key (the MLflow tag harness.trial_key)
        config.yaml              the full trial config
        status                   running | finished | failed | collapsed; a failure's error on line 2
        history.jsonl            one JSON object of metrics per epoch, appended as the epoch ends
        metrics.json             the final metrics (finished or collapsed)
        runtime.json             where it ran (device, versions, host, commit) and --device/--data-root
        error.txt                a failure's traceback
        checkpoint/state.pt      the last checkpoint, to resume from
        checkpoint/artifacts/    config.yaml, noise_transition.csv, metrics.json, inference_head.pt

No status file: not started. `running` is a trial that started and has not ended: it runs now,
or its process was stopped (Ctrl-C, SIGKILL, a node's time limit) and `harness run` resumes it.

An export travels to machines we do not control and back, so everything in it is read as data:
YAML with safe_load, JSON, and checkpoints only through harness.train.checkpoint.load_checkpoint (never unpickled).
Every problem names the folder and the file. Needs the standard library and PyYAML only.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness import config as C
from harness.config.grid import PATH_KEYS
from harness.config.sweepfile import Sweep
from harness.contract import TRAIN_COLLAPSED
from harness.run.layout import (
    CONFIG_FILE,
    ERROR_FILE,
    HISTORY_FILE,
    METRICS_FILE,
    RUNTIME_FILE,
    STATUS_FILE,
    TRIAL_FILE,
)
from harness.run.state import TrialState

FORMAT = 1
EXPORT_FILE = "export.json"
SWEEP_FILE = "sweep.yaml"
# the states a status file may hold (no status file: pending)
STATES = (TrialState.RUNNING, TrialState.FINISHED, TrialState.FAILED, TrialState.COLLAPSED)
RUN_OVERRIDES = ("run.device", "data.root")  # what `harness run --device/--data-root` may change


class ExportError(ValueError):
    """Unusable input: the message names the folder and the file."""


@dataclass
class Export:
    """An export folder: what export.json says, and its trial folders in run order."""

    root: Path
    id: str
    sweep: str
    experiment: str
    metric: str
    mode: str
    cpu: float  # resources.cpu of the sweep: the CPU threads each Ray trial would get
    trial_dirs: list[Path]
    pack: int = 1  # the sweep's pack: at most this many compatible trials train as one step

    @property
    def sweep_file(self) -> Path:
        return self.root / SWEEP_FILE


@dataclass
class TrialDir:
    """One trial folder as read: identity, config tree, state, history and final metrics."""

    path: Path
    index: int
    name: str
    key: str
    config: dict[str, Any]  # config.yaml as written (validate with `trial_config`)
    state: TrialState = TrialState.PENDING  # pending (no status file) or one of STATES
    error: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)  # epochs 1..n, in order
    final: dict[str, Any] | None = None  # metrics.json
    runtime: dict[str, Any] = field(default_factory=dict)

    @property
    def last_epoch(self) -> int:
        return self.history[-1]["epoch"] if self.history else 0


# --- writing an export -------------------------------------------------------------------------


def write_export(
    sweep: Sweep, tree: Mapping[str, Any], overrides: Mapping[str, Any], root: Path
) -> tuple[list, list]:
    """Write the trials of a validated sweep into `root`; return the trials (added, already there).

    Exporting again adds the trials that are missing and leaves every existing trial folder as it
    is (results included); trials are matched by key. `tree` and `overrides` are the sweep file as
    read and its --set options, for sweep.yaml. Raises ExportError, before writing anything, for a
    folder that holds something else or an export of another sweep.
    """
    root = Path(root).resolve()
    old = open_export(root) if (root / EXPORT_FILE).is_file() else None
    if old is None and root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise ExportError(
            f"{root}: not empty and not an export (no {EXPORT_FILE}); choose a new or empty folder"
        )
    if old is not None and old.sweep != sweep.name:
        raise ExportError(
            f"{root / EXPORT_FILE}: this folder holds an export of sweep {old.sweep!r}, not "
            f"{sweep.name!r}; export into another folder"
        )
    have = {_identity(path, old)[2] for path in old.trial_dirs} if old is not None else set()
    added = [t for t in sweep.trials if t.key not in have]
    for trial in added:
        if (root / trial.dirname).exists():
            raise ExportError(
                f"{root / trial.dirname}: holds another trial than {trial.name!r} (key {trial.key}); "
                "the sweep's trials have changed: export into another folder"
            )
    export_id = old.id if old is not None else uuid.uuid4().hex
    created = _read_json(root / EXPORT_FILE, root).get("created") if old is not None else None
    root.mkdir(parents=True, exist_ok=True)
    _write_json(
        root / EXPORT_FILE,
        {
            "format": FORMAT,
            "id": export_id,
            "sweep": sweep.name,
            "experiment": sweep.experiment,
            "metric": sweep.metric,
            "mode": sweep.mode,
            "cpu": sweep.resources["cpu"],
            "pack": sweep.pack,
            "source": str(Path(sweep.source).resolve()),
            "created": created or time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    )
    header = (
        f"# {sweep.name}: exported by `harness sweep {sweep.source} --export` ({len(sweep.trials)} trials).\n"
        "# The sweep file as resolved: --set options in base, defaults written out, paths absolute.\n"
    )
    _write_text(
        root / SWEEP_FILE, header + yaml.safe_dump(resolved_tree(sweep, tree, overrides), sort_keys=False)
    )
    for trial in added:
        tmp = root / f".{trial.dirname}.tmp"  # a whole folder or none: a killed export leaves no half trial
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        identity = {
            "index": trial.index,
            "name": trial.name,
            "key": trial.key,
            "overrides": trial.overrides,
            "export": export_id,
        }
        _write_json(tmp / TRIAL_FILE, identity)
        _write_text(tmp / CONFIG_FILE, C.dump_yaml(trial.config))
        tmp.replace(root / trial.dirname)
    return added, [t for t in sweep.trials if t.key in have]


def resolved_tree(sweep, tree: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The sweep file that expands to the same trials: --set in base, defaults explicit, paths absolute."""

    def absolute(value: Any) -> Any:
        if isinstance(value, str) and value and not value.startswith("~") and not Path(value).is_absolute():
            return str(Path(value).resolve())
        return value

    base = copy.deepcopy(dict(tree.get("base") or {}))
    for key, value in overrides.items():
        C.set_dotted(base, key, value)
    flat = C.flatten(base)
    flat.pop("run.seed", None)  # the seeds list below sets it
    base = {}
    for key, value in flat.items():
        C.set_dotted(base, key, absolute(value) if key in PATH_KEYS else value)
    grid = copy.deepcopy(dict(tree.get("grid") or {}))
    for axis, values in grid.items():
        if axis in PATH_KEYS:
            grid[axis] = [absolute(v) for v in values]
        elif axis in C.SECTIONS:
            for item in values:
                for name in item:
                    if f"{axis}.{name}" in PATH_KEYS:
                        item[name] = absolute(item[name])
    out: dict[str, Any] = {
        "name": sweep.name,
        "experiment": sweep.experiment,
        "metric": sweep.metric,
        "mode": sweep.mode,
        "base": base,
    }
    if grid:
        out["grid"] = grid
    out |= {
        "seeds": list(sweep.seeds),
        "resources": dict(sweep.resources),
        "max_failures": sweep.max_failures,
    }
    if sweep.max_concurrent is not None:
        out["max_concurrent"] = sweep.max_concurrent
    if sweep.pack > 1:
        out["pack"] = sweep.pack
    return out


# --- reading an export -------------------------------------------------------------------------


def open_export(root: Path) -> Export:
    """The export in `root`; ExportError when `root` is not one."""
    root = Path(root).resolve()
    if not (root / EXPORT_FILE).is_file():
        what = "does not exist" if not root.exists() else f"is not an export (no {EXPORT_FILE})"
        raise ExportError(f"{root}: {what}; make one with `harness sweep FILE --export {root}`")
    meta = _read_json(root / EXPORT_FILE, root)
    need = {
        "format": int,
        "id": str,
        "sweep": str,
        "experiment": str,
        "metric": str,
        "mode": str,
        "cpu": (int, float),
    }
    for key, kind in need.items():
        if not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool):
            raise ExportError(
                f"{root / EXPORT_FILE}: {key} missing or not a {getattr(kind, '__name__', 'number')}"
            )
    pack = meta.get("pack", 1)  # exports made before packs have none
    if not isinstance(pack, int) or isinstance(pack, bool) or pack < 1:
        raise ExportError(f"{root / EXPORT_FILE}: pack must be an integer >= 1, got {pack!r}")
    if meta["format"] != FORMAT:
        raise ExportError(
            f"{root / EXPORT_FILE}: export format {meta['format']}; this harness reads format {FORMAT}"
        )
    return Export(
        root=root,
        id=meta["id"],
        sweep=meta["sweep"],
        experiment=meta["experiment"],
        metric=meta["metric"],
        mode=meta["mode"],
        cpu=float(meta["cpu"]),
        trial_dirs=_trial_dirs(root),
        pack=pack,
    )


def _trial_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and (p / TRIAL_FILE).is_file())


def read_trial(path: Path, export: Export) -> TrialDir:
    """Read one trial folder completely; ExportError names the folder and the file of the first problem."""
    index, name, key = _identity(path, export)
    if not (path / CONFIG_FILE).is_file():
        raise ExportError(f"{path / CONFIG_FILE}: missing")
    try:
        tree = C.load_yaml(path / CONFIG_FILE)
    except C.ConfigError as exc:
        raise ExportError(f"{path / CONFIG_FILE}: {'; '.join(map(str, exc.problems))}") from exc
    trial = TrialDir(path, index, name, key, tree)
    if (path / RUNTIME_FILE).is_file():
        trial.runtime = _read_runtime(path)
    if not (path / STATUS_FILE).is_file():
        return trial
    lines = (path / STATUS_FILE).read_text(errors="replace").splitlines() or [""]
    if lines[0].strip() not in STATES:
        raise ExportError(
            f"{path / STATUS_FILE}: unknown state {lines[0].strip()!r}; expected {', '.join(map(str, STATES))}"
        )
    trial.state = TrialState(lines[0].strip())
    trial.error = "\n".join(lines[1:]).strip() or None
    trial.history = read_history(path)
    if trial.state.ok:
        trial.final = _read_metrics(path)
        epoch = trial.final.get("epoch")
        if epoch != trial.last_epoch:
            raise ExportError(
                f"{path / HISTORY_FILE}: holds epochs 1..{trial.last_epoch}, but {METRICS_FILE} is of epoch {epoch}"
            )
        if TrialState.of_end(trial.final) is not trial.state:
            raise ExportError(
                f"{path / STATUS_FILE}: says {trial.state}, but {METRICS_FILE} has "
                f"{TRAIN_COLLAPSED} = {trial.final.get(TRAIN_COLLAPSED)}"
            )
    return trial


def _identity(path: Path, export: Export) -> tuple[int, str, str]:
    """trial.json: (index, name, key) of a trial of this export."""
    identity = _read_json(path / TRIAL_FILE, path)
    index, name, key = identity.get("index"), identity.get("name"), identity.get("key")
    if not (isinstance(index, int) and isinstance(name, str) and isinstance(key, str)):
        raise ExportError(f"{path / TRIAL_FILE}: needs index (integer), name and key (strings)")
    if identity.get("export") != export.id:
        raise ExportError(
            f"{path / TRIAL_FILE}: this trial belongs to export {identity.get('export')}, not to "
            f"{export.root} ({export.id}); was it copied in from another export?"
        )
    return index, name, key


def read_history(path: Path) -> list[dict[str, Any]]:
    """history.jsonl: epochs 1..n in order. A last line without its newline (the process died while
    writing it) is left out; any other line that is not a metrics object is an ExportError."""
    file = path / HISTORY_FILE
    if not file.is_file():
        return []
    lines = file.read_text(errors="replace").split("\n")
    lines.pop()  # what follows the last newline: '' or a torn line
    history = []
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except ValueError:
            raise ExportError(f"{file}: line {number} is not JSON: {line[:80]!r}") from None
        problem = _metrics_problem(row)
        if problem is None and row.get("epoch") != number:
            problem = f"is epoch {row.get('epoch')!r}, expected {number} (epochs 1, 2, ... in order)"
        if problem:
            raise ExportError(f"{file}: line {number}: {problem}")
        history.append(row)
    return history


def _read_metrics(path: Path) -> dict[str, Any]:
    file = path / METRICS_FILE
    if not file.is_file():
        raise ExportError(f"{file}: missing, but {path / STATUS_FILE} says the trial ended")
    row = _read_json(file, path)
    problem = _metrics_problem(row)
    if problem:
        raise ExportError(f"{file}: {problem}")
    return row


def _read_runtime(path: Path) -> dict[str, Any]:
    """runtime.json: {"overrides": {run.device, data.root: value}, "tags": {name: text}}."""
    runtime = _read_json(path / RUNTIME_FILE, path)
    overrides, tags = runtime.get("overrides", {}), runtime.get("tags", {})
    if not isinstance(overrides, dict) or set(overrides) - set(RUN_OVERRIDES):
        raise ExportError(f"{path / RUNTIME_FILE}: overrides may set {' and '.join(RUN_OVERRIDES)} only")
    if not isinstance(tags, dict) or not all(isinstance(v, str) for v in tags.values()):
        raise ExportError(f"{path / RUNTIME_FILE}: tags must map names to strings")
    return {"overrides": overrides, "tags": tags}


def _metrics_problem(row: Any) -> str | None:
    if not isinstance(row, dict):
        return f"must be a JSON object of metrics, got {type(row).__name__}"
    if not (isinstance(row.get("epoch"), int) and row["epoch"] >= 1):
        return f"needs an epoch (integer >= 1), got {row.get('epoch')!r}"
    for key, value in row.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return f"{key}: must be a number, got {value!r}"
    return None


def trial_config(
    trial: TrialDir, overrides: Mapping[str, Any] | None = None, *, need_data: bool = True
) -> C.TrialConfig:
    """The trial's config.yaml, checked by this version of the harness (plus run-time overrides).

    need_data=False (`harness sync`): the data and label files need not be on this machine; only
    their paths are kept, everything else is checked as usual.
    """
    source = str(trial.path / CONFIG_FILE)
    flat = {**C.flatten(trial.config), **(overrides or {})}
    elsewhere = {}
    if not need_data:
        # Stand-ins that exist pass the existence checks; the real paths go back in afterwards.
        elsewhere = {k: flat[k] for k in ("data.root", "noise.label_file") if isinstance(flat.get(k), str)}
        flat |= {k: str(trial.path) for k in elsewhere}
    try:
        cfg = C.build_config(None, flat, source=source)
    except C.ConfigError as exc:
        raise ExportError(f"{source}: " + "; ".join(map(str, exc.problems))) from exc
    if "data.root" in elsewhere:
        cfg.data.root = elsewhere["data.root"]
    if "noise.label_file" in elsewhere:
        cfg.noise.label_file = elsewhere["noise.label_file"]
    return cfg


# --- writing a trial's results (harness run) ------------------------------------------------------


def set_status(path: Path, state: TrialState, error: str | None = None) -> None:
    assert state in STATES, state
    _write_text(path / STATUS_FILE, state + "\n" + (error.strip() + "\n" if error else ""))


def append_history(path: Path, metrics: Mapping[str, Any]) -> None:
    """One line, written with one call and flushed to disk: a killed process leaves at most a torn last line."""
    line = json.dumps(_plain_numbers(metrics), sort_keys=True) + "\n"
    with open(path / HISTORY_FILE, "a") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def rewind_history(path: Path, epoch: int, checkpoint_history: list[dict[str, Any]]) -> None:
    """history.jsonl as of the checkpoint at `epoch`: its lines 1..epoch, any that are missing (the
    process died between the checkpoint and the line) taken from the checkpoint's own history."""
    lines = {row["epoch"]: row for row in read_history(path) if row["epoch"] <= epoch}
    for row in checkpoint_history[:epoch]:
        lines.setdefault(int(row["epoch"]), dict(row))
    text = "".join(json.dumps(_plain_numbers(lines[e]), sort_keys=True) + "\n" for e in sorted(lines))
    _write_text(path / HISTORY_FILE, text)


def write_final(path: Path, metrics: Mapping[str, Any]) -> None:
    _write_json(path / METRICS_FILE, _plain_numbers(metrics))


def write_runtime(path: Path, runtime: Mapping[str, Any]) -> None:
    _write_json(path / RUNTIME_FILE, dict(runtime))


def write_error(path: Path, text: str) -> None:
    _write_text(path / ERROR_FILE, text)


def clear_results(path: Path) -> None:
    """Forget an attempt that left no checkpoint to resume from: the next one starts at epoch 1."""
    for name in (HISTORY_FILE, METRICS_FILE):
        (path / name).unlink(missing_ok=True)


# --- small file helpers --------------------------------------------------------------------------


def _plain_numbers(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The numbers among `metrics` as Python numbers (numpy and torch scalars unwrapped)."""
    out = {}
    for key, value in metrics.items():
        value = value.item() if hasattr(value, "item") else value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = value
    return out


def _read_json(file: Path, folder: Path) -> dict[str, Any]:
    try:
        value = json.loads(file.read_text())
    except FileNotFoundError:
        raise ExportError(f"{file}: missing") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ExportError(f"{file}: not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ExportError(f"{file}: must be a JSON object, got {type(value).__name__}")
    return value


def _write_text(file: Path, text: str) -> None:
    """Atomically: a killed process leaves the old file or the new one, never half of one."""
    tmp = file.with_name(f".{file.name}.tmp")
    tmp.write_text(text)
    tmp.replace(file)


def _write_json(file: Path, value: Any) -> None:
    _write_text(file, json.dumps(value, indent=2, sort_keys=True) + "\n")
