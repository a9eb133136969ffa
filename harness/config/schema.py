"""The trial config: one typed tree of six sections, each declared with the code that reads it.

    data    harness.data.config.DataConfig      what a trial trains on
    noise   harness.data.config.NoiseConfig     how its labels are corrupted
    model   harness.models.config.ModelConfig   the backbone
    collab  harness.collab.config.CollabConfig  the heads, how they share layers, their objective
    optim   harness.train.config.OptimConfig    SGD, schedule, label loss
    run     harness.train.config.RunConfig      seed, device, precision, checkpoints, workers

Every key is declared once (harness.keys: type, default, help, allowed values, whether a pack's
trials may differ in it); this module looks the declarations up by dotted key, for validation
(harness.config.validate), pack planning (harness.config.packs) and the reference (docs/config.md).
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass, field
from typing import Any

from harness.collab.config import CollabConfig
from harness.data.config import DataConfig, NoiseConfig
from harness.keys import Key, declared
from harness.models.config import ModelConfig
from harness.train.config import OptimConfig, RunConfig


@dataclass
class TrialConfig:
    data: DataConfig = field(default_factory=DataConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    collab: CollabConfig = field(default_factory=CollabConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)


SECTIONS: dict[str, type] = typing.get_type_hints(TrialConfig)


def all_keys() -> list[str]:
    """Every dotted key of a trial config, e.g. 'noise.rate', in declaration order."""
    return [f"{section}.{f.name}" for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)]


@functools.cache
def known_keys() -> frozenset[str]:
    return frozenset(all_keys())


@functools.cache
def declaration(key: str) -> Key:
    """What the dotted key's declaration says (KeyError for an unknown key)."""
    section, name = key.split(".", 1)
    return declared(SECTIONS[section])[name]


@functools.cache  # get_type_hints evaluates the annotations anew each call: 3/4 of a sweep's validation
def field_type(key: str) -> Any:
    """The declared type of a dotted key, e.g. float, or int | None."""
    section, name = key.split(".", 1)
    return typing.get_type_hints(SECTIONS[section])[name]


def default(key: str) -> Any:
    """The declared default of a dotted key."""
    section, name = key.split(".", 1)
    f = next(f for f in dataclasses.fields(SECTIONS[section]) if f.name == name)
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def may_differ(key: str) -> bool:
    """Whether the trials of one pack may differ in this dotted key (its declaration's `packs`)."""
    return key in known_keys() and declaration(key).packs
