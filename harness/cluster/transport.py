"""What a Tune trial carries from the driver to its worker and into Ray's experiment state: the
identity and config of the trials it trains (`TrialSpec`, `PackSpec`), as plain mappings under
SPEC_KEY of its Tune config (`tune_units`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from harness import config as C
from harness.config.packs import Pack, pack_tag
from harness.config.sweepfile import Sweep, Trial

SPEC_KEY = "trial"  # where a Tune trial's config holds its TrialSpec (as a plain mapping)


@dataclass(frozen=True)
class TrialSpec:
    """What a Tune trial carries in its config, from the driver to its worker and into Ray's
    experiment state: the trial's identity, its config as a plain tree, and the function that
    trains it. `TrialSpec.of` builds it; readers take it from a Tune config with `from_config`.

    It travels as a plain mapping (`to_config`): Tune swaps any other object in a config for an
    object-store placeholder that it resolves only when the trial runs, and keeps plain data
    readable in its experiment state.
    """

    index: int
    key: str
    name: str
    dirname: str
    config: dict[str, Any]  # C.to_dict(trial.config); C.build_config(spec.config) gives it back
    fn: str  # 'module:function', called like harness.run.trial.run_trial

    @classmethod
    def of(cls, trial: Trial, fn: str) -> TrialSpec:
        return cls(trial.index, trial.key, trial.name, trial.dirname, C.to_dict(trial.config), fn)

    def to_config(self) -> dict[str, Any]:
        """The spec as the value of SPEC_KEY in a Tune config."""
        return dataclasses.asdict(self)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> TrialSpec:
        """The spec in a Tune trial's config (`trial.config`, `result.config`, the trainable's argument)."""
        return cls(**config[SPEC_KEY])


@dataclass(frozen=True)
class PackSpec:
    """What a Tune trial that trains a pack carries (`pack:` in a sweep file): the pack's id and its
    members' TrialSpecs. Its value under SPEC_KEY has the index, name and dirname a lone trial's has
    (the progress table and Ray's folders read the same), and the members."""

    id: int
    members: tuple[TrialSpec, ...]

    @property
    def index(self) -> int:
        return self.members[0].index

    @property
    def name(self) -> str:
        return f"pack {self.id} ({len(self.members)} trials)"

    @property
    def dirname(self) -> str:
        return f"{self.index:03d}_pack{self.id}"

    @property
    def tag(self) -> str:
        """The harness.pack tag of its members' runs."""
        return pack_tag(self.id, len(self.members))

    def to_config(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "name": self.name,
            "dirname": self.dirname,
            "pack": self.id,
            "members": [m.to_config() for m in self.members],
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> PackSpec:
        value = config[SPEC_KEY]
        return cls(value["pack"], tuple(TrialSpec(**m) for m in value["members"]))


def is_pack(config: Mapping[str, Any]) -> bool:
    """Whether a Tune trial's config is of a pack (else of one trial)."""
    return "members" in config[SPEC_KEY]


def trial_specs(config: Mapping[str, Any]) -> list[TrialSpec]:
    """The trials a Tune trial trains: its pack's members, or itself."""
    return list(PackSpec.from_config(config).members) if is_pack(config) else [TrialSpec.from_config(config)]


def tune_units(sweep: Sweep, fn: str, *, packed: bool = True) -> list[dict[str, Any]]:
    """The Tune trials of a sweep, as SPEC_KEY values: a pack of several trials is one (PackSpec), a
    trial alone another (TrialSpec). `packed` False: every trial alone (`fn` is not the harness's own
    trial function, which packs need)."""
    specs = [TrialSpec.of(t, fn) for t in sweep.trials]
    packs = sweep.packs if packed else [Pack(i, (i,)) for i in range(len(specs))]
    return [
        PackSpec(p.id, tuple(specs[i] for i in p.positions)).to_config()
        if p.size > 1
        else specs[p.positions[0]].to_config()
        for p in packs
    ]
