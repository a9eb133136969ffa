"""Which trials may train together as one pack (`pack: N` in a sweep file), and the packs of a sweep.

A pack trains its members in lockstep on one device, one step of all of them at a time
(harness.run.lifecycle.train_trials, harness.train.loop.fit), so its members must agree on everything that shapes the
computation: the data set (loaded once for all), the arch and training graph, batch size,
epochs and schedule, augmentation, device, precision. They may differ in what is only a number
in the update or the loss, or only their own data: the keys declared with `packs=True`
(harness.keys; `may_differ`).

Packs are formed in trial order: the trials that agree form a group, cut into packs of at most
`size` members in order (10 trials at pack 4: 4, 4 and 2). A trial that agrees with no other, or
that cannot be packed (`unpackable`), trains alone. It runs where the sweep is read
(harness.config.sweepfile) and where `harness run` groups an export's trials.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from harness.config.schema import TrialConfig, may_differ
from harness.config.tree import to_flat
from harness.data import DATASETS


@dataclass(frozen=True)
class Pack:
    """Trials that train together: `positions` index the list of configs the plan was made from."""

    id: int
    positions: tuple[int, ...]

    @property
    def size(self) -> int:
        return len(self.positions)

    @property
    def tag(self) -> str:
        """The MLflow tag harness.pack of its members' runs: '<pack id>:<pack size>'."""
        return pack_tag(self.id, self.size)


def pack_tag(pack_id: int, size: int) -> str:
    return f"{pack_id}:{size}"


def unpackable(cfg: TrialConfig) -> str | None:
    """Why a trial cannot share a pack with any other, or None."""
    if cfg.run.workers > 1:
        return f"a data-parallel trial ({cfg.run.workers} workers) fills its devices alone"
    if not DATASETS[cfg.data.name].in_memory:
        return f"data set {cfg.data.name} is read from files per trial (packs share in-memory data sets)"
    return None


def pack_key(cfg: TrialConfig) -> str:
    """What members of one pack share: the config without the keys that may differ, as text."""
    shared = {k: v for k, v in to_flat(cfg).items() if not may_differ(k)}
    return json.dumps(shared, sort_keys=True, default=str)


def plan_packs(configs: Sequence[TrialConfig], size: int) -> list[Pack]:
    """The packs of these trials (in their order) at most `size` members each; a pack of one
    is a trial that trains alone. Packs are numbered by their first member's position."""
    groups: dict[str, list[int]] = {}
    alone: list[list[int]] = []
    for position, cfg in enumerate(configs):
        if size <= 1 or unpackable(cfg):
            alone.append([position])
        else:
            groups.setdefault(pack_key(cfg), []).append(position)
    chunks = alone + [g[i : i + size] for g in groups.values() for i in range(0, len(g), size)]
    chunks.sort(key=lambda chunk: chunk[0])
    return [Pack(i, tuple(chunk)) for i, chunk in enumerate(chunks)]


def differences(configs: Sequence[TrialConfig]) -> list[str]:
    """The dotted keys whose values differ among these configs (for listing a pack)."""
    flats = [to_flat(cfg) for cfg in configs]
    keys = sorted({k for flat in flats for k in flat})
    return [k for k in keys if len({json.dumps(f.get(k), sort_keys=True, default=str) for f in flats}) > 1]
