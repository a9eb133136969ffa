"""A tiny registry of noise kinds: ``@register_kind("name")`` on a generator function.

A generator has the signature
``fn(labels, spec, *, num_classes, rng, features) -> noisy labels`` where ``labels`` is the
validated int64 array of shape (N,), ``rng`` a seeded ``numpy.random.Generator`` (the only
source of randomness) and ``features`` whatever the caller passed (only some kinds need it).
An optional ``check(spec, num_classes, check_files)`` validates the kind's own spec fields;
``num_classes`` is None when the spec is checked on its own (at construction).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Generate = Callable[..., np.ndarray]
Check = Callable[..., None]


@dataclass(frozen=True)
class Kind:
    """One registered noise kind."""

    name: str
    generate: Generate
    check: Check | None = None


_REGISTRY: dict[str, Kind] = {}


def register_kind(name: str, *, check: Check | None = None) -> Callable[[Generate], Generate]:
    """Register the decorated function as the generator of noise kind ``name``."""

    def decorate(fn: Generate) -> Generate:
        if name in _REGISTRY:
            raise ValueError(f"noise kind {name!r} is registered twice")
        _REGISTRY[name] = Kind(name, fn, check)
        return fn

    return decorate


def kind_names() -> tuple[str, ...]:
    """Names of the registered kinds, in registration order."""
    return tuple(_REGISTRY)


def get_kind(name: object) -> Kind:
    """The registered kind called ``name``; ValueError listing the valid names otherwise."""
    if isinstance(name, str) and name in _REGISTRY:
        return _REGISTRY[name]
    names = kind_names()
    hint = ""
    if isinstance(name, str):
        close = difflib.get_close_matches(name.lower(), names, n=1)
        if close:
            hint = f" (did you mean {close[0]!r}?)"
    raise ValueError(f"noise.kind must be one of {', '.join(names)}; got {name!r}{hint}")
