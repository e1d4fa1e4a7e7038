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


def _type_checking_only(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node, inside functions too, except what sits in an `if TYPE_CHECKING:` block (not run)."""
    out: list[ast.AST] = []
    todo = [tree]
    while todo:
        node = todo.pop()
        out.append(node)
        todo.extend(child for child in ast.iter_child_nodes(node) if not _type_checking_only(child))
    return out


def _imports(name: str, path: Path, *, top_level_only: bool) -> set[str]:
    """The irtool modules `name` imports at run time (at module level only, or anywhere: inside functions too),
    resolved to modules that exist."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    if top_level_only:  # `if TYPE_CHECKING:` blocks are not imports at run time
        nodes = [n for n in tree.body if not isinstance(n, ast.If)]
    else:
        nodes = _runtime_nodes(tree)
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


EVERYWHERE = {m: _imports(m, p, top_level_only=False) for m, p in MODULES.items()}


def test_no_import_cycle_even_counting_imports_inside_functions():
    # A function-level import is still a dependency: two modules that reach for each other, even lazily, are one
    # layer pretending to be two (only `if TYPE_CHECKING:` imports, never run, are left out).
    graph = _without_packages(EVERYWHERE)
    assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph) or [])}"


def test_the_cycle_check_sees_imports_inside_functions():
    tree = ast.parse("def f():\n    from . import b\nif TYPE_CHECKING:\n    from . import c\n")
    found = {n.names[0].name for n in _runtime_nodes(tree) if isinstance(n, ast.ImportFrom)}
    assert found == {"b"}
    assert _cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"] and _cycle({"a": {"b"}, "b": set()}) is None


#: what the restore pipeline stands on; everything else (the CLI, eval, train, bench, calibrate, reports, the
#: multi-process runner) is built on top of it
BELOW_RESTORATION = ("irtool.restoration", "irtool.loading", "irtool.weights", "irtool.archs", "irtool.devices",
                     "irtool.images", "irtool.errors", "irtool.finite_json", "irtool._version")  # fmt: skip
#: removed by the calibration split (what restore reads from a calibration moves into irtool.restoration)
KNOWN_UPWARD: set[tuple[str, str]] = set()


def test_the_restore_pipeline_imports_nothing_above_it():
    upward = sorted(
        (name, dep)
        for name, deps in EVERYWHERE.items()
        if name.startswith("irtool.restoration")
        for dep in deps
        if not dep.startswith(BELOW_RESTORATION) and (name, dep) not in KNOWN_UPWARD
    )
    assert not upward, f"the restore pipeline imports from above it: {upward}"


def test_the_restore_pipeline_leaves_the_terminal_to_the_cli():
    # progress bars and tables are the CLI's (irtool.cli.video_display); the pipeline reports through callbacks
    shown = sorted(
        f"{name}:{node.lineno}"
        for name, path in MODULES.items()
        if name.startswith("irtool.restoration")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for module in ([a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""])
        if module.split(".")[0] in ("rich", "typer", "tqdm")
    )
    assert not shown, f"the restore pipeline imports a terminal library: {shown}"


def test_inference_does_not_import_the_training_package():
    # only `irtool train` (its command and the package itself) may load the training code
    users = sorted(
        name
        for name, deps in EVERYWHERE.items()
        if not name.startswith(("irtool.train", "irtool.cli.train")) and any(d.startswith("irtool.train") for d in deps)
    )
    assert not users, f"inference modules import irtool.train: {users}"


def test_the_catalogue_never_reaches_the_loader_and_the_networks_never_reach_anything_above_them():
    for name in [m for m in MODULES if m.startswith("irtool.weights.catalogue")]:
        assert not {
            d for d in EVERYWHERE[name] if d in ("irtool.loading", "irtool.weights.store", "irtool.weights.download")
        }, name
    for name in [m for m in MODULES if m.startswith("irtool.archs")]:
        above = {d for d in EVERYWHERE[name] if not d.startswith("irtool.archs") and d != "irtool.errors"}
        assert not above, f"{name} imports {sorted(above)}: networks depend on torch and each other only"


@pytest.mark.parametrize(
    "module",
    ["irtool", "irtool.cli", "irtool.weights", "irtool.weights.catalogue", "irtool.restoration.planning",
     "irtool.restoration.video.probe", "irtool.restoration.video.restore"],
)  # fmt: skip
def test_startup_modules_do_not_import_torch(module):
    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False", (
        f"importing {module} imported torch: `irtool --help` or `restore --dry-run` would be slow"
    )


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


CALLERS = ("irtool.restoration", "irtool.evaluation", "irtool.bench", "irtool.cli", "irtool.report", "irtool.calibrate")
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


def test_every_irtool_import_names_a_module_that_exists():
    # mypy ignores missing imports (third-party stubs), so a function-level import of a moved module would only fail
    # when that function first runs: check every `from irtool... import x` (inside functions too) resolves
    missing = []
    for name, path in MODULES.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("irtool")]
            elif isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                if not target.startswith("irtool"):
                    continue
                targets = [target]
                if target in MODULES and MODULES[target].name == "__init__.py":  # `from pkg import submodule`?
                    source = MODULES[target].read_text(encoding="utf-8")
                    targets += [
                        f"{target}.{a.name}"
                        for a in node.names
                        if f"{target}.{a.name}" not in MODULES
                        and f"def {a.name}" not in source
                        and a.name not in source
                    ]
            else:
                continue
            missing += [f"{name}:{node.lineno} -> {t}" for t in targets if t not in MODULES]
    assert not missing, f"imports of modules that do not exist: {missing}"
