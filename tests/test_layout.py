"""The package's structure: no import cycle among migmcut's modules, counting every import statement
(function-level ones too: a cycle they hold together is still a cycle), read from the source."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"migmcut": ROOT / "migmcut", "migmcut.cli": ROOT / "cli", "migmcut.store": ROOT / "store"}


def modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = [p for p in path.relative_to(folder).with_suffix("").parts if p != "__init__"]
            found[".".join([package, *parts])] = path
    return found


def module_imports(name: str, path: Path, known: dict) -> set[str]:
    """The migmcut modules `name` imports anywhere in its source; a module's own parent packages, which
    Python imports first anyway, left out."""
    deps = set()
    for stmt in ast.walk(ast.parse(path.read_text())):
        if isinstance(stmt, ast.ImportFrom) and stmt.module and stmt.module.startswith("migmcut"):
            deps.add(stmt.module)
            deps |= {f"{stmt.module}.{a.name}" for a in stmt.names}
        elif isinstance(stmt, ast.Import):
            deps |= {a.name for a in stmt.names}
    return {d for d in deps if d in known and d != name and not name.startswith(d + ".")}


def test_no_import_cycle_among_migmcuts_modules():
    """(At 0984f69 there were five, e.g. recipe -> train -> online -> generate -> recipe.) The CLI, which
    imports the library inside its commands so that --help loads no torch, is a leaf and left out."""
    known = {name: path for name, path in modules().items() if not name.startswith("migmcut.cli")}
    graph = {name: module_imports(name, path, known) for name, path in known.items()}
    assert {"migmcut.recipe", "migmcut.training", "migmcut.placement", "migmcut.benchmark.job"} <= set(graph)
    done, cycles = set(), []

    def visit(name, path):
        for dep in sorted(graph[name]):
            if dep in path:
                cycles.append(" -> ".join(path[path.index(dep):] + [dep]))
            elif dep not in done:
                visit(dep, path + [dep])
        done.add(name)

    for name in sorted(graph):
        if name not in done:
            visit(name, [name])
    assert not cycles, cycles


def test_the_recipe_module_imports_no_job():
    known = modules()
    deps = module_imports("migmcut.recipe", known["migmcut.recipe"], known)
    jobs = {"migmcut.training", "migmcut.recording", "migmcut.generation", "migmcut.online", "migmcut.sampler",
            "migmcut.policies", "migmcut.shortcut", "migmcut.runner", "migmcut.hook"}
    jobs |= {m for m in known if m.startswith("migmcut.benchmark")}
    assert not deps & jobs, deps & jobs

# optional or heavy dependencies a module may import where it needs them, so that `import migmcut`,
# `migmcut --help` and the tiny-shapes path stay light (each is one adapter's, the plots' or a metric's)
HEAVY = {"diffusers", "transformers", "tokenizers", "matplotlib", "torchmetrics"}


def test_no_function_level_import_but_optional_heavy_dependencies():
    """Every import at module level, where a reader looks for them, except the heavy optional ones
    above. (The CLI, which imports the library inside its commands so that --help loads no torch,
    is left out.)"""
    found = []
    for name, path in modules().items():
        if name.startswith("migmcut.cli"):
            continue
        tree = ast.parse(path.read_text())
        for fn in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
            for stmt in ast.walk(fn):
                if isinstance(stmt, ast.Import):
                    names = [a.name for a in stmt.names]
                elif isinstance(stmt, ast.ImportFrom):
                    names = [stmt.module or ""]
                else:
                    continue
                found += [f"{name}.{fn.name}: {n}" for n in names if n.split(".")[0] not in HEAVY]
    assert not found, found
