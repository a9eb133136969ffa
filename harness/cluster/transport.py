"""What a Tune trial carries from the driver to its worker and into Ray's experiment state: the trials
it trains (`PackSpec`: a pack of them, or one alone) with each one's identity and config (`TrialSpec`),
as a plain mapping under SPEC_KEY of its Tune config (`tune_units`).

Every Tune trial has this one shape, so everything that reads Ray's trials (the trainable, the
MLflow callback, the outcomes) reads one shape: a lone trial is a pack of one. Plain mappings,
because Tune swaps any other object in a config for an object-store placeholder that it resolves
only when the trial runs, and keeps plain data readable in its experiment state.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from harness import config as C
from harness.config.grid import Trial
from harness.config.packs import pack_tag
from harness.config.sweepfile import Sweep

SPEC_KEY = "trial"  # where a Tune trial's config holds its PackSpec (as a plain mapping)


@dataclass(frozen=True)
class TrialSpec:
    """One trial as a Tune trial carries it: its identity and its config as a plain tree."""

    index: int
    key: str  # the MLflow tag harness.trial_key
    name: str
    dirname: str  # its folder in the Tune trial's folder and checkpoint (harness.run.layout)
    config: dict[str, Any]  # C.to_dict(trial.config); C.build_config(spec.config) gives it back

    @classmethod
    def of(cls, trial: Trial) -> TrialSpec:
        return cls(trial.index, trial.key, trial.name, trial.dirname, C.to_dict(trial.config))


@dataclass(frozen=True)
class PackSpec:
    """The trials one Tune trial trains: a pack (`pack:` in a sweep file) or one trial alone. A lone
    trial's Tune trial has its name and folder; a pack's is named by the pack."""

    id: int
    members: tuple[TrialSpec, ...]

    @property
    def packed(self) -> bool:
        return len(self.members) > 1

    @property
    def index(self) -> int:
        return self.members[0].index

    @property
    def name(self) -> str:
        return f"pack {self.id} ({len(self.members)} trials)" if self.packed else self.members[0].name

    @property
    def dirname(self) -> str:
        return f"{self.index:03d}_pack{self.id}" if self.packed else self.members[0].dirname

    @property
    def tag(self) -> str | None:
        """The harness.pack tag of its members' runs; None for a trial alone."""
        return pack_tag(self.id, len(self.members)) if self.packed else None

    def to_config(self) -> dict[str, Any]:
        """The spec as the value of SPEC_KEY in a Tune config: the index, name and dirname Ray's
        progress table and folders read, and the members."""
        return {
            "index": self.index,
            "name": self.name,
            "dirname": self.dirname,
            "pack": self.id,
            "members": [dataclasses.asdict(m) for m in self.members],
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> PackSpec:
        """The spec in a Tune trial's config (`trial.config`, `result.config`, the trainable's argument)."""
        value = config[SPEC_KEY]
        return cls(value["pack"], tuple(TrialSpec(**m) for m in value["members"]))


def tune_units(sweep: Sweep) -> list[dict[str, Any]]:
    """The Tune trials of a sweep, as SPEC_KEY values: one per pack, a trial alone being a pack of one."""
    specs = [TrialSpec.of(t) for t in sweep.trials]
    return [PackSpec(p.id, tuple(specs[i] for i in p.positions)).to_config() for p in sweep.packs]
