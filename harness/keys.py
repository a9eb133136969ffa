"""How a config key is declared: once, beside the code that reads it.

A trial config has six sections (data, noise, model, collab, optim, run). Each is a dataclass that
lives with the code that reads it (`harness.data.config`, `harness.models.config`,
`harness.collab.config`, `harness.train.config`), and each of its fields is declared with `key`:

    lr: float = key(0.1, "base learning rate (before warm-up and schedule)",
                    check=in_range(0, math.inf, lo_open=True), packs=True)

The annotation is the key's type, then its default, one line of help, what it allows beyond its
type (`choices`, a tuple of names or a callable giving a registry's names; or a `check`) and whether
the trials of one pack may differ in it (`packs`). harness.config reads everything else from these
declarations: validation, the pack rule, the config reference (docs/config.md), and the engine
reads the sections themselves. Standard library only.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

Check = Callable[[Any], "str | None"]  # a value -> why it is not allowed, or None


@dataclass(frozen=True)
class Key:
    """What a key's declaration says besides its type and default (`key`)."""

    help: str
    choices: tuple[str, ...] | Callable[[], Iterable[str]] | None = None
    what: str = ""  # what one of the choices is called: "unknown <what> 'x'; choose from ..."
    check: Check | None = None
    allowed: str = ""  # the allowed values in words, for the reference (else from choices or check)
    packs: bool = False  # the trials of one pack may differ in it

    def names(self) -> list[str]:
        """The choices as a list (a registry's as it is now: a name registered later counts)."""
        if self.choices is None:
            return []
        return list(self.choices() if callable(self.choices) else self.choices)

    def problem(self, value: Any) -> str | None:
        """Why a value of the right type is not allowed, or None."""
        if self.choices is not None:
            return choice_problem(value, self.names(), self.what)
        return self.check(value) if self.check is not None else None

    def allowed_text(self) -> str:
        """The allowed values in words, e.g. 'one of cosine, step' or 'in (0, 1]'."""
        if self.allowed:
            return self.allowed
        if self.choices is not None:
            return "one of " + ", ".join(self.names())
        return getattr(self.check, "text", "")


def key(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    default_factory: Any = dataclasses.MISSING,
    choices: tuple[str, ...] | Callable[[], Iterable[str]] | None = None,
    what: str = "",
    check: Check | None = None,
    allowed: str = "",
    packs: bool = False,
) -> Any:
    """A dataclass field declared as a config key (see the module docstring)."""
    if not help:
        raise ValueError("every config key says what it is for (help)")
    declared = Key(help, choices, what, check, allowed, packs)
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"key": declared})


def declared(section: type) -> dict[str, Key]:
    """The keys of a section dataclass by field name, as declared."""
    return {f.name: f.metadata["key"] for f in dataclasses.fields(section)}


# --- checks: each a value -> message function with its words for the reference (`text`) ----------


def _with_text(check: Check, text: str) -> Check:
    check.text = text  # type: ignore[attr-defined]
    return check


def at_least(lo: float, note: str = "") -> Check:
    """>= lo; the message reads 'must be >= lo<note>, got v' (note: e.g. ' (0: never)')."""
    return _with_text(lambda v: None if v >= lo else f"must be >= {lo}{note}, got {v}", f">= {lo}{note}")


def in_range(lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> Check:
    """lo <= v <= hi, either end open; NaN is outside."""
    left, right = "(" if lo_open else "[", ")" if hi_open else "]"
    text = f"in {left}{lo}, {hi}{right}"

    def check(value: float) -> str | None:
        below = value <= lo if lo_open else value < lo
        above = value >= hi if hi_open else value > hi
        if below or above or (isinstance(value, float) and math.isnan(value)):
            return f"must be {text}, got {value}"
        return None

    return _with_text(check, text)


def described(check: Check, text: str) -> Check:
    """A check of its own, with its words for the reference."""
    return _with_text(check, text)


def choice_problem(value: Any, allowed: list[str], what: str) -> str | None:
    """None when `value` is one of `allowed`, else 'unknown <what> ...; choose from ...' (did you mean?)."""
    if value in allowed:
        return None
    return f"unknown {what} {value!r}; choose from {', '.join(allowed)}{did_you_mean(str(value), allowed)}"


def did_you_mean(word: str, choices: list[str]) -> str:
    """'; did you mean X?' for the closest of `choices` (the last dotted part too), else ''."""
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if not close and "." in word:  # 'grid.noise.rte' -> compare the last part too
        tails = {c.split(".")[-1]: c for c in choices}
        close = [tails[m] for m in difflib.get_close_matches(word.split(".")[-1], list(tails), n=1)]
    return f"; did you mean {close[0]}?" if close else ""


def shown(value: Any, limit: int = 80) -> str:
    """repr(value), cut to `limit` characters: a message quotes a 5,000-character value by its start."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}... ({len(text)} characters)"
