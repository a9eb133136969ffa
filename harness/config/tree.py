"""A config as a tree of mappings and as dotted keys, read from YAML and `--set`, and what is wrong
with one (`Problem`, `ConfigError`). Standard library and PyYAML only.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, NamedTuple

import yaml


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


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config (dataclasses) as a tree of plain mappings."""
    return dataclasses.asdict(cfg)


def to_flat(cfg: Any) -> dict[str, Any]:
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


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


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
