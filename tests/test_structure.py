"""The habits that keep the package readable, checked: layers import one way, short functions, no model probing.

These read the source (ast), so they fail the moment a change breaks a rule, not when someone next notices.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "irtool"
MAX_LINES = 80  # a function whose code is longer says why in its docstring ("Long because ...")


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path, *, top_level_only: bool) -> set[str]:
    """The irtool modules `name` imports (at module level only, or anywhere), resolved to modules that exist."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    if top_level_only:  # `if TYPE_CHECKING:` blocks are not imports at run time
        nodes = [n for n in nodes if not isinstance(n, ast.If)]
    out: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("irtool")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("irtool"):
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                out.add(sub if sub in MODULES else target)
    return {m for m in out if m in MODULES and m != name}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def _without_packages(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    # a package's __init__ importing its own submodules (and they it) is how packages are built, not a layer cycle
    return {m: {d for d in deps if not (d.startswith(m + ".") or m.startswith(d + "."))} for m, deps in graph.items()}


def test_module_level_imports_have_no_cycle():
    graph = _without_packages({m: _imports(m, p, top_level_only=True) for m, p in MODULES.items()})
    assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph) or [])}"


def test_the_catalogue_never_reaches_the_loader_and_the_networks_never_reach_anything_above_them():
    everywhere = {m: _imports(m, p, top_level_only=False) for m, p in MODULES.items()}
    for name in [m for m in MODULES if m.startswith("irtool.weights.catalogue")]:
        assert not {d for d in everywhere[name] if d in ("irtool.loading", "irtool.weights.store")}, name
    for name in [m for m in MODULES if m.startswith("irtool.archs")]:
        above = {d for d in everywhere[name] if not d.startswith("irtool.archs") and d != "irtool.errors"}
        assert not above, f"{name} imports {sorted(above)}: networks depend on torch and each other only"


def test_the_engine_and_what_restore_reads_import_nothing_above_them():
    """Restoring needs no command module: calibrations are read through irtool.restoration.calibration, not the
    calibrate command's irtool.calibrate (imports inside functions count)."""
    above = ("irtool.calibrate", "irtool.cli", "irtool.train", "irtool.bench", "irtool.report", "irtool.evaluation")
    restore = [m for m in MODULES if m == "irtool.engine" or m.startswith("irtool.restoration")]
    assert "irtool.restoration.calibration" in restore
    for name in restore:
        found = sorted(d for d in _imports(name, MODULES[name], top_level_only=False) if d.startswith(above))
        assert not found, f"{name} imports {found}, above the restore engine"


@pytest.mark.parametrize("module", ["irtool", "irtool.cli", "irtool.weights", "irtool.weights.catalogue"])
def test_startup_modules_do_not_import_torch(module):
    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False", f"importing {module} imported torch: `irtool --help` would be slow"


def _functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def test_no_function_is_long_without_saying_why():
    long = []
    for name, path in MODULES.items():
        for fn in _functions(ast.parse(path.read_text(encoding="utf-8"))):
            doc = ast.get_docstring(fn) or ""
            body = fn.body[1:] if doc and len(fn.body) > 1 else fn.body
            lines = (fn.end_lineno or fn.lineno) - body[0].lineno + 1  # the code, not the signature or docstring
            if lines > MAX_LINES and "Long because" not in doc:
                long.append(f"{name}.{fn.name} ({lines} lines)")
    assert not long, "over 80 lines with no 'Long because ...' in the docstring: " + ", ".join(long)


def test_no_function_body_is_written_twice():
    seen: dict[str, str] = {}
    twice = []
    for name, path in MODULES.items():
        for fn in _functions(ast.parse(path.read_text(encoding="utf-8"))):
            body = fn.body[1:] if ast.get_docstring(fn) else fn.body
            if sum((s.end_lineno or s.lineno) - s.lineno + 1 for s in body) < 4:
                continue  # one-liners (a property, a delegation) may rhyme
            key = ast.dump(ast.Module(body=body, type_ignores=[]), annotate_fields=False)
            where = f"{name}.{fn.name}"
            if key in seen and seen[key].rsplit(".", 1)[0] != name:
                twice.append(f"{seen[key]} = {where}")
            seen.setdefault(key, where)
    assert not twice, "the same function in two modules: " + "; ".join(twice)


CALLERS = ("irtool.engine", "irtool.evaluation", "irtool.bench", "irtool.cli", "irtool.report", "irtool.video",
           "irtool.calibrate")  # fmt: skip
MODEL_WORDS = ("model", "net", "routing", "restorer", "spec", "module")


def test_callers_read_the_models_spec_instead_of_probing_its_attributes():
    probes = []
    for name, path in MODULES.items():
        if not name.startswith(CALLERS):
            continue
        source = path.read_text(encoding="utf-8")
        for node in ast.walk(ast.parse(source)):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ("hasattr", "getattr")
            ):
                target = ast.get_source_segment(source, node.args[0]) or ""
                if any(word in target.lower() for word in MODEL_WORDS):
                    probes.append(f"{name}:{node.lineno} {ast.get_source_segment(source, node)}")
    assert not probes, "attribute probes of a model or its routing (read spec_of(model) instead): " + "; ".join(probes)
