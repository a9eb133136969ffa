"""The modules import one way. A static walk (ast) of every module in harness/, reports/ and noise/,
imports inside functions included: no cycle, and each layer imports only what lies below it."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from harness.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("harness", "noise", "reports")


def _name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def _imported(path: Path, module: str) -> set[str]:
    """Every name `module` imports (absolute, relative ones resolved), at any depth of the file."""
    names = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _ours(name: str) -> str | None:
    """The module of ours that an imported name lies in (`harness.contract.TEST_ACC` -> `harness.contract`)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in MODULES:
            return ".".join(parts[:end])
    return None


IMPORTS = {
    module: {o for name in _imported(path, module) if (o := _ours(name)) is not None and o != module}
    for module, path in MODULES.items()
}
# The command line: harness.cli and the modules it runs commands from.
COMMAND_LAYER = {"harness.cli"} | {module for module, _ in COMMANDS.values()}


def _cycle() -> list[str] | None:
    """One import cycle among our modules, as a path that ends where it starts, or None."""
    state: dict[str, str] = {}  # module -> "open" while on the path, "done" after
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = "open"
        path.append(module)
        for dep in sorted(IMPORTS[module]):
            if state.get(dep) == "open":
                return [*path[path.index(dep) :], dep]
            if dep not in state and (found := visit(dep)):
                return found
        path.pop()
        state[module] = "done"
        return None

    for module in sorted(MODULES):
        if module not in state and (found := visit(module)):
            return found
    return None


def test_the_walk_sees_the_modules_and_their_imports():
    assert {"harness.tracking", "harness.sweepfile", "reports.runs", "noise.corruption"} <= set(MODULES)
    assert "harness.sweepfile" in IMPORTS["harness.tune_runner"]
    assert "harness.contract" in IMPORTS["reports.runs"]
    assert {"noise.kinds", "noise.registry"} <= IMPORTS[
        "noise"
    ]  # `from noise import kinds`, from the package
    assert {"harness.collab", "noise"} <= IMPORTS["harness.config"], "imports inside functions count"
    assert {"harness.sweep_cli", "harness.run_cli", "reports.cli", "harness.ui"} <= COMMAND_LAYER


def test_no_import_cycle():
    cycle = _cycle()
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_noise_imports_nothing_of_harness_or_reports():
    wrong = {
        (m, d) for m in MODULES if m.split(".")[0] == "noise" for d in IMPORTS[m] if not d.startswith("noise")
    }
    assert not wrong, f"noise/ is the bottom layer: {sorted(wrong)}"


def test_only_the_command_line_imports_reports():
    wrong = {
        (m, d)
        for m in MODULES
        if m.startswith("harness") and m not in COMMAND_LAYER
        for d in IMPORTS[m]
        if d.startswith("reports")
    }
    assert not wrong, f"harness/ imports reports/ only in its command-line layer: {sorted(wrong)}"


def test_nothing_below_the_command_line_imports_a_command():
    commands = COMMAND_LAYER - {"reports.cli"}
    wrong = {(m, d) for m in MODULES if m not in COMMAND_LAYER for d in IMPORTS[m] if d in commands}
    assert not wrong, f"commands -> runners -> sweep file -> config, never back up: {sorted(wrong)}"


def test_reports_read_the_writers_contract_and_nothing_else_of_harness():
    wrong = {
        (m, d)
        for m in MODULES
        if m.startswith("reports")
        for d in IMPORTS[m]
        if d.startswith("harness") and d != "harness.contract"
    }
    assert not wrong, f"reports/ depends on harness.contract alone: {sorted(wrong)}"


def test_the_contract_needs_the_standard_library_only():
    path = MODULES["harness.contract"]
    roots = {name.split(".")[0] for name in _imported(path, "harness.contract")}
    assert roots <= set(sys.stdlib_module_names) | {"__future__"}, roots


def test_the_readme_names_every_harness_module_where_it_fits():
    text = (ROOT / "README.md").read_text()
    section = text.split("## How it fits together", 1)[1].split("\n## ", 1)[0]
    missing = [
        f"harness/{p.name}" for p in sorted((ROOT / "harness").glob("*.py")) if p.name != "__init__.py"
    ]
    missing = [name for name in missing if f"`{name}`" not in section]
    assert not missing, f"README's 'How it fits together' does not place {missing}"


# What a third-party import is installed as: every one our packages make must be a declared dependency.
DISTRIBUTIONS = {"yaml": "PyYAML", "sklearn": "scikit-learn", "PIL": "pillow"}


def test_every_third_party_import_is_a_declared_dependency():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {
        dep.split(";")[0].split("[")[0].split("<")[0].split(">")[0].split("=")[0].strip().lower()
        for dep in project["dependencies"]
    }
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    used = {
        name.split(".")[0]
        for module, path in MODULES.items()
        for name in _imported(path, module)
        if _ours(name) is None and name.split(".")[0] not in stdlib and name.split(".")[0] not in PACKAGES
    }
    missing = {
        top: DISTRIBUTIONS.get(top, top)
        for top in used
        if DISTRIBUTIONS.get(top, top).lower() not in declared
    }
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"
    assert {"pandas", "scipy"} <= used  # reports/ needs them (they were once missing)
