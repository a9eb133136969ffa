"""Validation of a trial config: every key's type and allowed values from its declaration
(harness.keys), then the rules that involve several keys, each problem named by its dotted key.

`build_config(tree, overrides)` is the one way a checked `TrialConfig` is made: every problem is
collected and raised at once as a `ConfigError`, so a user sees all of them.
"""

from __future__ import annotations

import os
import sys
import types
import typing
import warnings
from typing import Any, Union

import noise
from harness.collab.graph import graph_problems
from harness.collab.methods.rules import method_problems
from harness.collab.rescale import RESCALE_MODES, rescale_mode
from harness.config.schema import SECTIONS, TrialConfig, all_keys, declaration, field_type, known_keys
from harness.config.tree import ConfigError, Problem, flatten
from harness.data.datasets import DATASETS, config_problems, path_problem
from harness.keys import did_you_mean, shown


def check_key(key: str) -> str | None:
    """None when `key` is a known dotted key, else the message (with a did-you-mean)."""
    if key in known_keys():
        return None
    return f"unknown key{did_you_mean(key, all_keys())}"


def check_value(key: str, value: Any) -> str | None:
    """Type and allowed values of one value; None when fine, else a message naming what is allowed."""
    if (problem := check_key(key)) is not None:
        return problem
    tp = field_type(key)
    if not _type_ok(value, tp):
        return f"must be {_type_name(tp)}, got {type(value).__name__} {shown(value)}"
    if value is None:
        return None
    if tp is float and isinstance(value, int) and abs(value) > sys.float_info.max:
        return f"must be a float (at most {sys.float_info.max:.4g}), got {shown(value)}"
    return declaration(key).problem(value)


def _type_ok(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return any(_type_ok(value, arg) for arg in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is list or origin is list:
        return isinstance(value, list)
    return isinstance(value, tp)


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def build_config(
    tree: dict | None = None, overrides: dict[str, Any] | None = None, *, source: str | None = None
) -> TrialConfig:
    """A checked TrialConfig from a nested mapping plus dotted overrides; ConfigError lists every problem."""
    flat = flatten(tree or {})
    flat.update(overrides or {})
    problems = []
    for key, value in flat.items():
        if key.split(".")[0] not in SECTIONS:
            hint = did_you_mean(key, all_keys())
            problems.append(Problem(key, f"unknown section {key.split('.')[0]!r}{hint}"))
        elif (msg := check_value(key, value)) is not None:
            problems.append(Problem(key, msg))
    if problems:
        raise ConfigError(problems, source)
    sections = {name: {} for name in SECTIONS}
    for key, value in flat.items():
        section, name = key.split(".", 1)
        # ints are fine where floats are expected; store them as floats so params read the same
        if field_type(key) is float and isinstance(value, int):
            value = float(value)
        sections[section][name] = value
    cfg = TrialConfig(**{name: SECTIONS[name](**values) for name, values in sections.items()})
    if isinstance(cfg.collab.rescale, bool):
        mode = rescale_mode(cfg.collab.rescale)
        warnings.warn(
            f"collab.rescale: {str(cfg.collab.rescale).lower()} is the old spelling of {mode}; write "
            f"collab.rescale: {mode} (one of {', '.join(RESCALE_MODES)})"
            + (f" in {source}" if source else ""),
            FutureWarning,
            stacklevel=2,
        )
        cfg.collab.rescale = mode
    cross = check_config(cfg)
    if cross:
        raise ConfigError([Problem(key, msg) for key, msg in cross], source)
    return cfg


def check_config(cfg: TrialConfig) -> list[tuple[str, str]]:
    """The rules that involve several keys, as (dotted key, message) pairs."""
    return [
        *_graph_problems(cfg),
        *method_problems(cfg.collab, cfg.noise),
        *_data_problems(cfg),
        *_noise_problems(cfg),
        *_optim_problems(cfg),
        *_run_problems(cfg),
    ]


def _graph_problems(cfg: TrialConfig) -> list[tuple[str, str]]:
    """The training graph's own rules (heads, split, kept head: harness.collab.graph_problems)."""
    c = cfg.collab
    graph = dict(rescale=c.rescale, split=c.split, kept_head=c.kept_head)
    return [
        (f"collab.{key}", message)
        for key, message in graph_problems(cfg.model.arch, c.topology, c.heads, **graph)
    ]


def _data_problems(cfg: TrialConfig) -> list[tuple[str, str]]:
    """The data sets' own rules (root, download, subsets: harness.data.config_problems)."""
    d = cfg.data
    given = dict(
        root=d.root,
        download=d.download,
        train_subset=d.train_subset,
        val_fraction=d.val_fraction,
        image_size=d.image_size,
    )
    return [(f"data.{key}", message) for key, message in config_problems(d.name, **given) if key != "name"]


def _noise_problems(cfg: TrialConfig) -> list[tuple[str, str]]:
    n, problems = cfg.noise, []
    if n.kind == "human":
        if not n.label_file:
            problems.append(("noise.label_file", "human noise needs the CIFAR-N .pt file"))
        elif why := path_problem(n.label_file):
            problems.append(("noise.label_file", f"file {why}"))
        if not n.label_set:
            problems.append(
                ("noise.label_set", "human noise needs a label set (aggre, worse, random1..3, noisy)")
            )
    if n.kind == "none" and n.rate > 0:
        problems.append(
            (
                "noise.rate",
                f"noise kind none trains on the clean labels, so rate {n.rate:g} would be ignored; "
                "set noise.kind (e.g. symmetric, pairflip, asymmetric) or leave rate at 0",
            )
        )
    if n.kind == "matrix" and n.matrix is None:
        problems.append(("noise.matrix", "matrix noise needs noise.matrix (K x K, rows sum to 1)"))
    if n.kind == "asymmetric" and cfg.data.name not in ("cifar10", "cifar100"):
        problems.append(
            ("noise.kind", f"asymmetric noise is defined for cifar10 and cifar100, not {cfg.data.name}")
        )
    return problems


def _optim_problems(cfg: TrialConfig) -> list[tuple[str, str]]:
    o, problems = cfg.optim, []
    if o.schedule == "step" and not o.milestones:
        problems.append(("optim.milestones", "a step schedule needs milestones (epochs)"))
    if o.label_smoothing > 0 and o.label_loss != "ce":
        problems.append(
            (
                "optim.label_smoothing",
                f"label smoothing ({o.label_smoothing:g}) applies to cross-entropy, but optim.label_loss is "
                f"{o.label_loss}; set label_smoothing to 0 or label_loss to ce",
            )
        )
    if o.label_loss == "sce" and o.sce_alpha == 0 and o.sce_beta == 0:
        problems.append(("optim.sce_beta", "sce_alpha and sce_beta are both 0: the label loss would be 0"))
    if o.warmup_epochs >= o.epochs:
        problems.append(("optim.warmup_epochs", f"must be < epochs ({o.epochs}), got {o.warmup_epochs}"))
    return problems


def _run_problems(cfg: TrialConfig) -> list[tuple[str, str]]:
    r, problems = cfg.run, []
    if r.workers > 1 and r.device.startswith("cuda:"):
        problems.append(
            (
                "run.device",
                f"{r.device} names one card, but each of the {r.workers} workers takes a card of "
                "its own: use cuda or auto",
            )
        )
    if r.workers > 1 and cfg.collab.update == "alternating":
        problems.append(
            (
                "collab.update",
                "alternating updates are one process only: under DDP a step's unused heads get zero "
                "gradients, which momentum and weight decay would turn into updates (use simultaneous, "
                "or run.workers: 1)",
            )
        )
    if cfg.optim.batch_size < r.workers:
        problems.append(
            (
                "optim.batch_size",
                f"the global batch ({cfg.optim.batch_size}) is smaller than run.workers ({r.workers}): "
                "every worker needs at least one sample of each batch",
            )
        )
    return problems


def label_file_problems(configs: list[TrialConfig]) -> list[Problem]:
    """Human-label files that a trial would refuse, read once each before any trial starts: a file
    that could run code, lacks the label set, belongs to another data set or labels another number
    of images. They are small; checking them here turns a failure of every trial into one message."""
    problems, seen = [], set()
    for cfg in configs:
        n, d = cfg.noise, DATASETS.get(cfg.data.name)
        if n.kind != "human" or (n.label_file, n.label_set, cfg.data.name) in seen:
            continue
        seen.add((n.label_file, n.label_set, cfg.data.name))
        try:
            noise.check_label_file(
                os.path.expanduser(n.label_file),
                n.label_set,
                num_classes=d.num_classes if d else None,
                num_train=d.num_train if d else None,
            )
        except (ValueError, FileNotFoundError) as exc:  # UnsafeFileError among them
            problems.append(Problem("noise.label_file", str(exc)))
    return problems
