"""The config reference (docs/config.md), written from the keys' declarations (harness.keys): every
key's type, default, allowed values, whether the trials of one pack may differ in it, and its help.

`harness validate --keys` prints it; a test keeps docs/config.md equal to it.
"""

from __future__ import annotations

import dataclasses
import typing

from harness.config.schema import SECTIONS, declaration, default, field_type

SECTION_HELP = {
    "data": "what a trial trains on",
    "noise": "how its training labels (and its held-out split's) are corrupted",
    "model": "the backbone every head is built from",
    "collab": "the heads, how they share layers, and the objective they learn from",
    "optim": "SGD, its schedule and the label loss",
    "run": "seed, device, precision, checkpoints, data-parallel workers",
}


def _type_text(tp: typing.Any) -> str:
    args = typing.get_args(tp)
    if args:
        return " or ".join("null" if a is type(None) else _type_text(a) for a in args)
    return getattr(tp, "__name__", str(tp))


def _value_text(value: typing.Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def reference() -> str:
    """The config reference as Markdown."""
    lines = [
        "# Config reference",
        "",
        "Every key of a trial config, as sweep files (`base:`, `grid:`) and `harness train --set a.b=v`",
        "address it. Generated from the declarations in the code (`harness validate --keys` prints it;",
        "a test keeps this file current). *Packs*: whether the trials of one pack (`pack: N`) may",
        "differ in the key; trials that agree on every other key train as one step.",
    ]
    for section, cls in SECTIONS.items():
        lines += ["", f"## `{section}`: {SECTION_HELP[section]}", ""]
        lines += ["| key | type | default | allowed | packs | what it is |", "|---|---|---|---|---|---|"]
        for f in dataclasses.fields(cls):
            key = f"{section}.{f.name}"
            d = declaration(key)
            cells = [
                f"`{key}`",
                _type_text(field_type(key)),
                f"`{_value_text(default(key))}`",
                d.allowed_text().replace("|", "\\|"),
                "may differ" if d.packs else "",
                d.help.replace("|", "\\|"),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
