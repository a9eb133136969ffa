"""Instance-dependent label noise (Xia et al., NeurIPS 2020, "Part-dependent label noise").

The generation follows the authors' ``get_instance_noisy_label``: each sample i draws a flip
rate q_i from a normal around ``rate`` with std 0.1 truncated to [0, 1]; each true class c has a
random projection W_c of shape (d, K) drawn from the seeded generator; the sample's flip
distribution is softmax(x_i W_c) with the true class masked out, scaled by q_i; the true
class keeps probability 1 - q_i. Nearby images therefore tend to flip to the same class.
"""

from __future__ import annotations

import numpy as np

from noise.registry import register_kind
from noise.spec import NoiseSpec
from noise.transition import class_indices

FLIP_RATE_STD = 0.1


def truncated_normal(rng: np.random.Generator, mean: float, std: float, size: int) -> np.ndarray:
    """``size`` draws from N(mean, std^2) truncated to [0, 1], by rejection.

    With mean in [0, 1] at least about half of the draws land inside, so this ends quickly.
    """
    out = np.empty(size)
    todo = np.arange(size)
    while todo.size:
        draw = rng.normal(mean, std, size=todo.size)
        ok = (draw >= 0.0) & (draw <= 1.0)
        out[todo[ok]] = draw[ok]
        todo = todo[~ok]
    return out


def as_features(features: object, n: int) -> np.ndarray:
    """``features`` as an array of shape (N, ...) for N labels; ValueError otherwise."""
    if features is None:
        raise ValueError(
            "noise kind 'instance' needs features: pass features= to corrupt, an (N, d) array "
            "(e.g. the flattened training images scaled to [0, 1]), got None"
        )
    arr = np.asarray(features)
    if arr.ndim < 1 or arr.shape[0] != n:
        raise ValueError(
            f"features must have one row per label: {n} labels but features of shape {arr.shape}"
        )
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"features must be numeric, got dtype {arr.dtype}")
    return arr


def instance_flip_probabilities(
    labels: np.ndarray, features: np.ndarray, rate: float, num_classes: int, rng: np.random.Generator
) -> np.ndarray:
    """Per-sample label distributions P of shape (N, K); row i sums to 1.

    P[i, labels[i]] = 1 - q_i with q_i ~ N(rate, 0.1^2) truncated to [0, 1]; the other entries
    are q_i * softmax(x_i W_{labels[i]}) over the other classes. ``features`` has shape
    (N, ...) and is flattened to (N, d); it is used as given, like the authors' code, which feeds
    images scaled to [0, 1].
    """
    k = num_classes
    n = labels.size
    flip_rate = truncated_normal(rng, rate, FLIP_RATE_STD, n)
    d = int(np.prod(features.shape[1:], dtype=np.int64))
    probs = np.zeros((n, k))
    for c, idx in enumerate(class_indices(labels, k)):
        # Draw W_c even for an absent class so that each class's projection depends only on the seed.
        w = rng.standard_normal((d, k))
        if idx.size == 0:
            continue
        x = features[idx].reshape(idx.size, d).astype(np.float64)
        if not np.isfinite(x).all():
            raise ValueError("features must be finite, got NaN or inf")
        logits = x @ w
        logits[:, c] = -np.inf
        logits -= logits.max(axis=1, keepdims=True)
        soft = np.exp(logits)
        soft /= soft.sum(axis=1, keepdims=True)
        probs[idx] = flip_rate[idx, None] * soft
        probs[idx, c] = 1.0 - flip_rate[idx]
    return probs


@register_kind("instance")
def instance(
    labels: np.ndarray,
    spec: NoiseSpec,
    *,
    num_classes: int,
    rng: np.random.Generator,
    features: object = None,
    **_,
) -> np.ndarray:
    """Draw each sample's label from its instance-dependent distribution.

    rate 0 returns the clean labels: the truncated normal around 0 would still flip about 8 %.
    """
    features = as_features(features, labels.size)
    if spec.rate == 0.0:
        return labels.copy()
    probs = instance_flip_probabilities(labels, features, spec.rate, num_classes, rng)
    cdf = np.cumsum(probs, axis=1)
    u = rng.random(labels.size)
    # Inverse-CDF sampling, one categorical draw per row; the clip guards cdf[-1] < u by rounding.
    return np.minimum((cdf < u[:, None]).sum(axis=1), num_classes - 1).astype(np.int64)
