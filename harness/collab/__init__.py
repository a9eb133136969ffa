"""Collaborative learning (Song & Chai, NeurIPS 2018): the training graph of H heads that share
their low layers, backpropagation rescaling at its forks, and the objectives the heads learn from.

- `graph`: `build_training_graph(arch, num_classes, topology, heads, ...)` (topologies individual,
  instances, simple, hierarchical) and `TrainingGraph.export_head(h)`, the original network;
- `rescale`: `GradScale` and the rescale modes;
- `objective`: `collaborative_loss`, the paper's objective;
- `losses`: the label losses every head's objective may use (cross-entropy, GCE, SCE);
- `methods`: the objectives as methods (`collab.method`): cl, dml, coteaching, coteaching_plus, jocor
  (docs/methods.md), one module each in a registry.

Imports torch and harness.models (the backbones); nothing above them.
"""

from harness.collab.graph import (
    TOPOLOGIES,
    Segment,
    TrainingGraph,
    build_training_graph,
    default_split,
    graph_problems,
)
from harness.collab.objective import collaborative_loss
from harness.collab.rescale import (
    RESCALE_MODES,
    BackpropRescale,
    GradScale,
    grad_scale,
    loss_scale,
    rescale_mode,
)

__all__ = [
    "RESCALE_MODES",
    "TOPOLOGIES",
    "BackpropRescale",
    "GradScale",
    "Segment",
    "TrainingGraph",
    "build_training_graph",
    "collaborative_loss",
    "default_split",
    "grad_scale",
    "graph_problems",
    "loss_scale",
    "rescale_mode",
]
