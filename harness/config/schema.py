"""The trial config: one typed tree, strict.

A trial config is a nested mapping with the sections below; sweep files and
`harness train --set a.b=v` address it with the same dotted keys. Unknown keys and
wrong types are errors that name the key (with a did-you-mean); range checks name the
value and what is allowed. Every problem is collected, so a user sees all of them at once.

This module needs only the standard library, PyYAML and (for the lists of valid names)
the project's registries, so it runs where only torch is installed.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import sys
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Union

import yaml


@dataclass
class DataConfig:
    name: str = "digits"
    root: str | None = None  # folder holding the data set in its usual layout
    download: bool = False  # CIFAR only: let torchvision fetch the archive into root
    train_subset: int | None = None  # images per class kept from the training set
    val_fraction: float = 0.0
    augment: bool = True
    num_workers: int = 4  # DataLoader workers for ImageFolder data
    # where ImageFolder JPEGs are decoded and augmented: workers (PIL in the DataLoader workers), device
    # (a batch at once on the trial's device: nvJPEG on CUDA), auto (device on CUDA, else workers)
    decode: str = "auto"
    # the side of the square images a data set that can choose its size trains and tests on, e.g. 64 for a
    # folder of 64x64 images: imagefolder (train: a random resized crop to image_size; eval: the short
    # side resized to image_size * 256 / 224, then the central image_size crop) and synthetic (the size
    # it draws). null: the data set's own (imagefolder 224, synthetic 32). Refused elsewhere: digits and
    # CIFAR keep their 8x8 and 32x32 images.
    image_size: int | None = None


@dataclass
class NoiseConfig:
    kind: str = "none"
    rate: float = 0.0
    label_set: str | None = None  # human noise: aggre|worse|random1..3 (CIFAR-10N), noisy (CIFAR-100N)
    label_file: str | None = None  # human noise: the official CIFAR-N .pt file
    matrix: list | None = None  # matrix noise: K x K row-stochastic, row = true class


@dataclass
class ModelConfig:
    arch: str = "cnn_small"
    # start every residual block as the identity (harness.models); false is the plain He init, whose
    # CIFAR ResNets can collapse in their first steps at lr 0.1
    zero_init_residual: bool = True


@dataclass
class CollabConfig:
    topology: str = "individual"
    heads: int = 1
    # backprop: backpropagation rescaling (the paper), loss: the loss scaled by 1/H instead, none
    rescale: str | bool = "backprop"
    split: int | list | None = None  # None: the arch's default split points
    T: float = 2.0
    beta: float = 0.5
    # the soft target's weight grows linearly from 0 (plain cross-entropy per head) to the paper's
    # objective over these first epochs; 0: the paper's objective from the first step
    soft_rampup_epochs: int = 0
    kept_head: int = 0
    update: str = "simultaneous"


@dataclass
class OptimConfig:
    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    milestones: list | None = None  # epochs at which a step schedule multiplies lr by gamma
    gamma: float = 0.1
    warmup_epochs: int = 0
    # the label term of every head's objective (harness.losses; the soft-target term is unchanged):
    # ce (cross-entropy), gce (generalized CE, Zhang & Sabuncu 2018), sce (symmetric CE, Wang et al. 2019)
    label_loss: str = "ce"
    label_smoothing: float = 0.0  # eps of smoothed cross-entropy (label_loss ce only)
    gce_q: float = 0.7  # GCE's q (the paper's value)
    sce_alpha: float = 0.1  # SCE's weights of CE and reverse CE (the paper's CIFAR-10 setting)
    sce_beta: float = 1.0


@dataclass
class RunConfig:
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # bf16 autocast on CUDA; ignored on the CPU
    cuda_graph: bool = True  # capture the training step in a CUDA graph on CUDA
    channels_last: bool = True  # on CUDA
    # on CUDA with a captured step: the sibling branches below each fork of a collaborative graph on
    # streams of their own (graph branches the GPU may run at once); off until a GPU run decides
    branch_streams: bool = False
    checkpoint_every: int = 1
    # end a trial whose kept head has been collapsed (train/collapsed) for this many epochs in a row;
    # 0: never. The run finishes (tagged harness.collapsed=true), so Ray does not retry it.
    stop_on_collapse: int = 0
    # data-parallel processes of one trial (PyTorch DDP launched by Ray Train, harness.cluster.raytrain);
    # 1: a single process. optim.batch_size stays the global batch.
    workers: int = 1
    sync_bn: bool = False  # with workers > 1: BatchNorm statistics over the global batch (SyncBatchNorm)


@dataclass
class TrialConfig:
    data: DataConfig = field(default_factory=DataConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    collab: CollabConfig = field(default_factory=CollabConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)


SECTIONS: dict[str, type] = typing.get_type_hints(TrialConfig)


class Problem(NamedTuple):
    """One thing wrong with a config: where (a dotted key, or a place in a sweep file) and what."""

    place: str
    message: str

    def __str__(self) -> str:
        return f"{self.place}: {self.message}" if self.place else self.message


class ConfigError(ValueError):
    """Bad config; `problems` lists every one as a `Problem` (place, message)."""

    def __init__(self, problems: list[Problem], source: str | None = None):
        self.problems = list(problems)
        self.source = source
        where = f" in {source}" if source else ""
        super().__init__(f"{len(problems)} problem(s){where}:\n" + "\n".join(f"  {p}" for p in self.problems))


def all_keys() -> list[str]:
    """Every dotted key of a trial config, e.g. 'noise.rate'."""
    return [f"{section}.{f.name}" for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)]


@functools.cache
def _known_keys() -> frozenset[str]:
    return frozenset(all_keys())


def did_you_mean(key: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(key, choices, n=1, cutoff=0.6)
    if not close and "." in key:  # 'grid.noise.rte' -> compare the last part too
        tails = {c.split(".")[-1]: c for c in choices}
        close = [tails[m] for m in difflib.get_close_matches(key.split(".")[-1], list(tails), n=1)]
    return f"; did you mean {close[0]}?" if close else ""


@functools.cache  # get_type_hints evaluates the annotations anew each call: 3/4 of a sweep's validation
def _field_type(key: str) -> Any:
    section, name = key.split(".", 1)
    return typing.get_type_hints(SECTIONS[section])[name]


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


def shown(value: Any, limit: int = 80) -> str:
    """repr(value), cut to `limit` characters: a message quotes a 5,000-character value by its start."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}... ({len(text)} characters)"


def check_key(key: str) -> str | None:
    """None when `key` is a known dotted key, else the message (with a did-you-mean)."""
    if key in _known_keys():
        return None
    return f"unknown key{did_you_mean(key, all_keys())}"


def _choice(value: Any, allowed: typing.Iterable[str], what: str) -> str | None:
    allowed = list(allowed)
    if value in allowed:
        return None
    hint = did_you_mean(str(value), allowed)
    return f"unknown {what} {value!r}; choose from {', '.join(allowed)}{hint}"


def _in_range(
    value: float, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False
) -> str | None:
    below = value <= lo if lo_open else value < lo
    above = value >= hi if hi_open else value > hi
    if below or above or (isinstance(value, float) and math.isnan(value)):
        left, right = "(" if lo_open else "[", ")" if hi_open else "]"
        return f"must be in {left}{lo}, {hi}{right}, got {value}"
    return None


def _registries() -> dict[str, list[str]]:
    # Imported lazily: the registries pull in torch, which plain YAML checks do not need.
    # Live views: an arch, dataset or noise kind registered after import is accepted too.
    from harness.collab import RESCALE_MODES, TOPOLOGIES
    from harness.collab.losses import LABEL_LOSSES
    from harness.data import DATASETS
    from harness.models import ARCHS
    from noise import kind_names

    return {
        "arch": list(ARCHS),
        "dataset": list(DATASETS),
        "kind": list(kind_names()),
        "topology": list(TOPOLOGIES),
        "rescale": list(RESCALE_MODES),
        "label_loss": list(LABEL_LOSSES),
    }


def check_value(key: str, value: Any) -> str | None:
    """Type and range check of one value; None when fine, else a message naming what is allowed."""
    if (problem := check_key(key)) is not None:
        return problem
    tp = _field_type(key)
    if not _type_ok(value, tp):
        return f"must be {_type_name(tp)}, got {type(value).__name__} {shown(value)}"
    if value is None:
        return None
    if tp is float and isinstance(value, int) and abs(value) > sys.float_info.max:
        return f"must be a float (at most {sys.float_info.max:.4g}), got {shown(value)}"
    names = _registries()
    checks: dict[str, typing.Callable[[Any], str | None]] = {
        "data.name": lambda v: _choice(v, names["dataset"], "dataset"),
        "data.num_workers": lambda v: None if v >= 0 else f"must be >= 0, got {v}",
        "data.decode": lambda v: _choice(v, ["auto", "workers", "device"], "decode mode"),
        "data.image_size": lambda v: (
            None if v >= 1 else f"must be a positive integer (pixels) or null, got {v}"
        ),
        "noise.kind": lambda v: _choice(v, names["kind"], "noise kind"),
        "noise.rate": lambda v: _in_range(v, 0, 1),
        "model.arch": lambda v: _choice(v, names["arch"], "arch"),
        "collab.topology": lambda v: _choice(v, names["topology"], "topology"),
        "collab.heads": lambda v: None if v >= 1 else f"must be >= 1, got {v}",
        "collab.rescale": lambda v: (
            None if isinstance(v, bool) else _choice(v, names["rescale"], "rescale mode")
        ),
        "collab.T": lambda v: _in_range(v, 0, math.inf, lo_open=True),
        "collab.beta": lambda v: _in_range(v, 0, 1),
        "collab.kept_head": lambda v: None if v >= 0 else f"must be >= 0, got {v}",
        "collab.soft_rampup_epochs": lambda v: (
            None if v >= 0 else f"must be >= 0 epochs (0: no ramp), got {v}"
        ),
        "collab.update": lambda v: _choice(v, ["simultaneous", "alternating"], "update mode"),
        "optim.epochs": lambda v: None if v >= 1 else f"must be >= 1, got {v}",
        "optim.batch_size": lambda v: None if v >= 1 else f"must be >= 1, got {v}",
        "optim.lr": lambda v: _in_range(v, 0, math.inf, lo_open=True),
        "optim.momentum": lambda v: _in_range(v, 0, 1, hi_open=True),
        "optim.weight_decay": lambda v: None if v >= 0 else f"must be >= 0, got {v}",
        "optim.schedule": lambda v: _choice(v, ["cosine", "step"], "schedule"),
        "optim.gamma": lambda v: _in_range(v, 0, 1, lo_open=True),
        "optim.warmup_epochs": lambda v: None if v >= 0 else f"must be >= 0, got {v}",
        "optim.label_loss": lambda v: _choice(v, names["label_loss"], "label loss"),
        "optim.label_smoothing": lambda v: _in_range(v, 0, 1, hi_open=True),
        "optim.gce_q": lambda v: _in_range(v, 0, 1, lo_open=True),
        "optim.sce_alpha": lambda v: None if v >= 0 else f"must be >= 0, got {v}",
        "optim.sce_beta": lambda v: None if v >= 0 else f"must be >= 0, got {v}",
        "optim.milestones": lambda v: (
            None
            if all(isinstance(m, int) and m >= 1 for m in v)
            else f"must be a list of epochs >= 1, got {v!r}"
        ),
        "run.device": lambda v: (
            None
            if v in ("auto", "cpu", "cuda") or v.startswith("cuda:")
            else f"must be auto, cpu, cuda or cuda:N, got {v!r}"
        ),
        # numpy's legacy seeding (third-party code's RNG, seed_everything) takes 32 bits
        "run.seed": lambda v: None if 0 <= v < 2**32 else f"must be an integer in [0, 2**32), got {shown(v)}",
        "run.checkpoint_every": lambda v: None if v >= 0 else f"must be >= 0 (0: never), got {v}",
        "run.stop_on_collapse": lambda v: None if v >= 0 else f"must be >= 0 epochs (0: never), got {v}",
        "run.workers": lambda v: None if v >= 1 else f"must be a positive integer (1: one process), got {v}",
    }
    check = checks.get(key)
    return check(value) if check else None


def check_config(cfg: TrialConfig) -> list[tuple[str, str]]:
    """Checks that involve several keys; returns (key, message) pairs."""
    problems: list[tuple[str, str]] = []
    c, d, n = cfg.collab, cfg.data, cfg.noise
    from harness.collab import graph_problems  # the training graph's own rules (heads, split, ...)

    graph = dict(rescale=c.rescale, split=c.split, kept_head=c.kept_head)
    problems += [
        (f"collab.{key}", message)
        for key, message in graph_problems(cfg.model.arch, c.topology, c.heads, **graph)
    ]
    from harness.data import config_problems  # the data sets' own rules (root, download, subsets)

    given = dict(
        root=d.root,
        download=d.download,
        train_subset=d.train_subset,
        val_fraction=d.val_fraction,
        image_size=d.image_size,
    )
    problems += [
        (f"data.{key}", message) for key, message in config_problems(d.name, **given) if key != "name"
    ]
    if n.kind == "human":
        from harness.data import path_problem

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
    if n.kind == "asymmetric" and d.name not in ("cifar10", "cifar100"):
        problems.append(("noise.kind", f"asymmetric noise is defined for cifar10 and cifar100, not {d.name}"))
    if cfg.optim.schedule == "step" and not cfg.optim.milestones:
        problems.append(("optim.milestones", "a step schedule needs milestones (epochs)"))
    if cfg.run.workers > 1 and cfg.run.device.startswith("cuda:"):
        problems.append(
            (
                "run.device",
                f"{cfg.run.device} names one card, but each of the {cfg.run.workers} workers takes a card of "
                "its own: use cuda or auto",
            )
        )
    if cfg.run.workers > 1 and cfg.collab.update == "alternating":
        problems.append(
            (
                "collab.update",
                "alternating updates are one process only: under DDP a step's unused heads get zero "
                "gradients, which momentum and weight decay would turn into updates (use simultaneous, "
                "or run.workers: 1)",
            )
        )
    if cfg.optim.batch_size < cfg.run.workers:
        problems.append(
            (
                "optim.batch_size",
                f"the global batch ({cfg.optim.batch_size}) is smaller than run.workers ({cfg.run.workers}): "
                "every worker needs at least one sample of each batch",
            )
        )
    o = cfg.optim
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
    if cfg.optim.warmup_epochs >= cfg.optim.epochs:
        problems.append(
            ("optim.warmup_epochs", f"must be < epochs ({cfg.optim.epochs}), got {cfg.optim.warmup_epochs}")
        )
    return problems


def key_text(key: Any) -> str:
    """A key of a user's mapping as a message shows it: quoted where it would not be seen ('', ' x')."""
    text = str(key)
    plain = text and text.isprintable() and not any(c.isspace() or c in ":'" for c in text)
    return text if plain else repr(text)


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists stay values."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key_text(key)}"
        if isinstance(value, dict):
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def set_dotted(tree: dict, key: str, value: Any) -> None:
    node = tree
    *parents, last = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError([Problem(key, f"{part} is not a section")])
    node[last] = value


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
        if _field_type(key) is float and isinstance(value, int):
            value = float(value)
        sections[section][name] = value
    cfg = TrialConfig(**{name: SECTIONS[name](**values) for name, values in sections.items()})
    if isinstance(cfg.collab.rescale, bool):
        from harness.collab import RESCALE_MODES, rescale_mode

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


def to_dict(cfg: TrialConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def to_flat(cfg: TrialConfig) -> dict[str, Any]:
    """The resolved config flattened with dots (the MLflow params)."""
    return flatten(to_dict(cfg))


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError([Problem("", f"not valid YAML: {exc}")], str(path)) from exc
    if not isinstance(tree, dict):
        raise ConfigError([Problem("", f"top level must be a mapping, got {type(tree).__name__}")], str(path))
    return tree


def add_overrides_option(parser, help: str) -> None:
    """The `--set KEY=VALUE` option (repeatable) of an argparse parser, read by `parse_overrides(args.overrides)`."""
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help
    )


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """['optim.lr=0.05', 'collab.split=[1,2]'] -> {'optim.lr': 0.05, 'collab.split': [1, 2]} (values read as YAML).

    ConfigError lists every item that is not key=value or whose value is not YAML (as a shell passes
    `--set optim.milestones=[100,150`), each placed at its `--set`.
    """
    out, problems = {}, []
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            problems.append(Problem(f"--set {item!r}", "expected key=value, e.g. optim.lr=0.05"))
            continue
        try:
            out[key] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            reason = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            shown = raw if len(raw) <= 60 else raw[:60] + "..."
            problems.append(
                Problem(
                    f"--set {key}",
                    f"value {shown!r} is not valid YAML ({reason}); close its brackets and quotes, "
                    "e.g. --set 'optim.milestones=[100, 150]'",
                )
            )
    if problems:
        raise ConfigError(problems)
    return out


def dump_yaml(cfg: TrialConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
