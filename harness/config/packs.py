"""Which trials may train together as one pack (`pack: N` in a sweep file), and the packs of a sweep.

A pack trains its members in lockstep on one device, one step of all of them at a time
(harness.run.pack, harness.train.engine.fit_pack), so its members must agree on everything that shapes the
computation: the data set (loaded once for all), the arch and training graph, batch size,
epochs and schedule, augmentation, device, precision. They may differ in what is only a number
in the update or the loss, or only their own data: `MAY_DIFFER`.

Packs are formed in trial order: the trials that agree form a group, cut into packs of at most
`size` members in order (10 trials at pack 4: 4, 4 and 2). A trial that agrees with no other, or
that cannot be packed (`unpackable`), trains alone. Standard library only (it runs where the
sweep is read: harness.config.sweepfile's users, harness.run.export's `harness run`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from harness import config as C

# Dotted keys (or whole sections, ending in '.') in which the members of one pack may differ.
MAY_DIFFER = (
    "run.seed",  # init, data order, augmentation draws, noise draw: all the member's own
    "noise.",  # its labels: kind, rate, label set
    "optim.lr",
    "optim.weight_decay",
    "optim.momentum",
    "optim.label_loss",  # a member's own loss function, in its own step
    "optim.label_smoothing",
    "optim.gce_q",
    "optim.sce_alpha",
    "optim.sce_beta",
    "collab.T",
    "collab.beta",
    "collab.soft_rampup_epochs",
    "collab.kept_head",
    "run.checkpoint_every",
    "run.stop_on_collapse",
)
IN_MEMORY_DATA = ("digits", "synthetic", "cifar10", "cifar100")  # data sets a pack shares on its device


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


def may_differ(key: str) -> bool:
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in MAY_DIFFER)


def unpackable(cfg: C.TrialConfig) -> str | None:
    """Why a trial cannot share a pack with any other, or None."""
    if cfg.run.workers > 1:
        return f"a data-parallel trial ({cfg.run.workers} workers) fills its devices alone"
    if cfg.data.name not in IN_MEMORY_DATA:
        return f"data set {cfg.data.name} is read from files per trial (packs share in-memory data sets)"
    return None


def pack_key(cfg: C.TrialConfig) -> str:
    """What members of one pack share: the config without the keys that may differ, as text."""
    shared = {k: v for k, v in C.to_flat(cfg).items() if not may_differ(k)}
    return json.dumps(shared, sort_keys=True, default=str)


def plan_packs(configs: Sequence[C.TrialConfig], size: int) -> list[Pack]:
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


def differences(configs: Sequence[C.TrialConfig]) -> list[str]:
    """The dotted keys whose values differ among these configs (for listing a pack)."""
    flats = [C.to_flat(cfg) for cfg in configs]
    keys = sorted({k for flat in flats for k in flat})
    return [k for k in keys if len({json.dumps(f.get(k), sort_keys=True, default=str) for f in flats}) > 1]
