"""Property-based fuzzing of what a user types: sweep files and `--set` overrides.

Every input ends in exit 0 or in exit 2 with a message that names a place (`file: key: ...`), never in
a traceback. The shipped sweep files get random values put at random places (huge, infinite and NaN
numbers, empty lists, wrong types, 5,000-character strings, unicode); `--set` gets values as typed in
a shell, malformed YAML included, for `validate`, `sweep --dry-run` and `train` (its refusal path: a
last `--set optim.epochs=0` makes every config invalid, so nothing trains). The CLI runs in-process.
Hypothesis runs derandomized (the same examples every run), so CI is reproducible.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_sweep_validate import SWEEPS, _paths_in, cifar_n_file

from harness import cli
from harness import config as C

FUZZ = settings(
    derandomize=True,
    deadline=None,
    max_examples=300,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

ODD_NUMBERS = [float("inf"), float("-inf"), float("nan"), 1e308, -1e308, 10**30, -(10**30), 0, -1, 0.5, 2**63]
ODD_STRINGS = [
    "",
    " ",
    "x" * 5000,
    "/" + "d" * 5000,
    "~/" + "é" * 300,
    "数据/训练",
    "🙂",
    "nul\x00byte",
    "../../etc",
    "none",
    "null",
    "cuda:99",
]
odd_values = st.recursive(
    st.sampled_from(ODD_NUMBERS)
    | st.sampled_from(ODD_STRINGS)
    | st.text(max_size=20)
    | st.booleans()
    | st.none()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=6,
)


def _places(tree, prefix=()):
    """Every (path, value) in a parsed YAML tree: mapping keys and list positions."""
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else []
    for key, value in items:
        yield (*prefix, key)
        yield from _places(value, (*prefix, key))


def _put(tree, path, value):
    node = tree
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A home folder holding the data folders and CIFAR-N label files the shipped sweeps name, so
    each shipped file validates as it is (and a mutation is what makes it fail)."""
    root = tmp_path_factory.mktemp("home")
    for path in SWEEPS:
        for key, value in _paths_in(yaml.safe_load(path.read_text())):
            target = root / value[2:]
            if key == "noise.label_file":
                target.parent.mkdir(parents=True, exist_ok=True)
                if not target.exists():
                    torch.save(cifar_n_file(), target)
            else:
                target.mkdir(parents=True, exist_ok=True)
    return root


@pytest.fixture
def at_home(home, monkeypatch):
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(home)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return home


def _run(argv: list[str]) -> tuple[int, str, str]:
    """`harness ARGV` in this process: (exit status, stdout, stderr). An exception fails the test
    with the input that raised it (hypothesis shrinks it)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(argv)
        except SystemExit as exc:  # argparse's own refusals exit 2 with a usage line
            code = exc.code
    return code, out.getvalue(), err.getvalue()


# A problem line names its place: `<file>: <place>: <message>` (validate, sweep), `  <place>: <message>`
# under `harness train: N problem(s):`, or `harness train: <place>: <message>`; a place is a dotted key
# with list positions (`grid.noise.rate[2]`), `--set KEY` or a quoted key (`'': unknown key`).
PLACE = r"""(?:--set (?:'[^']*'|"[^"]*"|\S+)|(?:[^\s':]|'[^']*')+)"""
PROBLEM_LINE = re.compile(rf"^(?:\S+: |\s+)(?!\d+ problem)({PLACE}): \S")


def _named_places(err: str) -> list[str]:
    return [m.group(1) for line in err.splitlines() if (m := PROBLEM_LINE.match(line))]


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_every_shipped_sweep_validates_at_home(path, at_home):
    code, out, err = _run(["validate", str(path)])
    assert code == 0, err


@pytest.mark.slow
@FUZZ
@given(data=st.data())
def test_odd_values_anywhere_in_a_sweep_file_end_in_a_message_not_a_traceback(data, at_home, tmp_path):
    source = data.draw(st.sampled_from(SWEEPS), label="sweep file")
    tree = yaml.safe_load(source.read_text())
    place = data.draw(st.sampled_from(list(_places(tree))), label="place")
    if data.draw(st.booleans(), label="add a key there instead"):
        parent = tree
        for key in place[:-1]:
            parent = parent[key]
        if isinstance(parent, dict):
            place = (
                *place[:-1],
                data.draw(st.sampled_from(["rte", "", "数据", "x" * 5000, 3]), label="new key"),
            )
    value = data.draw(odd_values, label="value")
    _put(tree, place, value)
    path = tmp_path / "fuzzed.yaml"
    path.write_text(yaml.safe_dump(tree, allow_unicode=True))
    code, out, err = _run(["validate", str(path)])
    assert code in (0, 2), (code, out, err)
    assert "Traceback" not in err
    if code == 2:
        assert _named_places(err), err
        assert "nothing was started" in err or "not valid YAML" in err, err
    else:
        assert out.startswith(f"{path}: ok: sweep"), out


SET_KEYS = [*C.all_keys(), "optim", "noise.rte", "", "data..root", ".x", "x" * 300, "数据.键"]
SET_VALUES = [
    "[100,150",
    "{a: 1",
    "'unterminated",
    '"unterminated',
    ": :",
    "- - -",
    "!!python/object/apply:os.system ['true']",
    "!!binary aGk=",
    "*alias",
    "&a [1, *a]",
    "[1, 2]",
    "{x: 1}",
    ".inf",
    "-.inf",
    ".nan",
    "1e999",
    "1" * 400,
    "0x10",
    "null",
    "~",
    "yes",
    "\t1",
    "x" * 5000,
    "🙂",
    "a=b=c",
    "%YAML 1.2",
    "---\n---",
    "@",
    "`",
]
set_items = st.tuples(
    st.sampled_from(SET_KEYS),
    st.sampled_from(SET_VALUES) | st.text(max_size=12),
).map(lambda kv: f"{kv[0]}={kv[1]}") | st.sampled_from(["noequals", "=1", "=", "a.b"])


@FUZZ
@given(
    items=st.lists(set_items, min_size=1, max_size=3),
    command=st.sampled_from(["validate", "dry-run", "train"]),
)
def test_set_overrides_as_typed_in_a_shell_end_in_a_message_not_a_traceback(items, command, at_home):
    quickstart = str(next(p for p in SWEEPS if p.stem == "quickstart"))
    sets = [arg for item in items for arg in ("--set", item)]
    argv = {
        "validate": ["validate", quickstart, *sets],
        "dry-run": ["sweep", quickstart, "--dry-run", *sets],
        # the refusal path only: the last --set wins and is always refused, so nothing trains
        "train": ["train", *sets, "--set", "optim.epochs=0", "--no-mlflow", "--out", "never"],
    }[command]
    before = sorted(os.listdir("."))
    code, out, err = _run(argv)
    assert code in (0, 2), (code, out, err)
    assert "Traceback" not in err
    if code == 2:
        assert _named_places(err), err
    assert command != "train" or code == 2, "train must refuse (optim.epochs=0)"
    assert sorted(os.listdir(".")) == before, "nothing is written"


def test_the_issue_examples_name_their_key(at_home, tmp_path):
    """The crashes this test found first, each now a message that names the key."""
    quickstart = next(p for p in SWEEPS if p.stem == "quickstart")
    cases = {
        "resources: {gpu: .inf}": ("resources.gpu", "resources:\n  cpu: 1\n  gpu: .inf\n"),
        "5,000-character data.root": (
            "base.data.root",
            f"base:\n  data: {{name: cifar10, root: /{'d' * 5000}}}\n",
        ),
    }
    for what, (key, text) in cases.items():
        path = tmp_path / "x.yaml"
        tree = yaml.safe_load(quickstart.read_text())
        tree.update(yaml.safe_load(text))
        path.write_text(yaml.safe_dump(tree))
        code, _, err = _run(["validate", str(path)])
        assert code == 2 and f"{path}: {key}: " in err, (what, err)
    for command in (["validate", str(quickstart)], ["sweep", str(quickstart), "--dry-run"], ["train"]):
        code, _, err = _run([*command, "--set", "optim.milestones=[100,150"])
        assert code == 2 and "--set optim.milestones" in err and "Traceback" not in err, (command, err)
    assert not Path("never").exists()
