"""Label-noise methods in which several heads teach each other, as pure PyTorch objectives.

Each method is a `Method`: built with the number of heads, a per-sample label loss and its knobs, it
turns the heads' logits and the batch's labels into the loss to backpropagate (and, for the methods
that select samples, the mask of what each head trained on). Every call has fixed shapes and no host
sync, so a training step that uses one can be captured in a CUDA graph; schedules live in device
tensors that `Method.set_epoch` refreshes. The rules, knobs and the differences from the papers'
official code are in docs/methods.md.

- ``cl``: collaborative learning (Song & Chai, NeurIPS 2018), H >= 1 heads: the harness's default.
- ``dml``: Deep Mutual Learning (Zhang et al., CVPR 2018), H >= 2 heads.
- ``coteaching``: Co-teaching (Han et al., NeurIPS 2018), two heads.
- ``coteaching_plus``: Co-teaching+ (Yu et al., ICML 2019), two heads.
- ``jocor``: JoCoR (Wei et al., CVPR 2020), two heads.

Imports torch and harness.collab's objective and label losses.
"""

from harness.collab.methods.base import (
    METHODS,
    Method,
    PerSampleLoss,
    build_method,
    cross_entropy_per_sample,
    register_method,
)

# isort: off
# registers the methods, in the order their names are listed to users (choose from ...)
from harness.collab.methods.cl import CollaborativeLearning
from harness.collab.methods.dml import DeepMutualLearning
from harness.collab.methods.coteaching import CoTeaching
from harness.collab.methods.coteaching_plus import CoTeachingPlus
from harness.collab.methods.jocor import JoCoR

# isort: on
from harness.collab.methods.selection import (
    SelectingMethod,
    forget_rate,
    keep_count,
    masked_mean,
    small_loss_mask,
)

__all__ = [
    "METHODS",
    "CollaborativeLearning",
    "CoTeaching",
    "CoTeachingPlus",
    "DeepMutualLearning",
    "JoCoR",
    "Method",
    "PerSampleLoss",
    "SelectingMethod",
    "build_method",
    "cross_entropy_per_sample",
    "forget_rate",
    "keep_count",
    "masked_mean",
    "register_method",
    "small_loss_mask",
]
