"""The package's shape: every module sits in a layer and imports only from its own layer or the ones below it,
no two modules import each other (directly or round a circle), and a long module says why it is one job.

The layers, lowest first: config (the validated config, its errors, --set parsing); core (the policy and the
algorithms' pure math); envs; storage (paths, lock, checkpoints, metrics and results files); outputs (where a
run's events go); training (collectors, the loop, the run of one or more agents); studies (reproduce, sweeps,
tuning); cli. The package's own `__init__` (the Python API) and `__main__` stand above them all.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "jaxrl_lander"
LAYERS = ("config", "core", "envs", "storage", "outputs", "training", "studies", "cli")
LONG = 400  # lines beyond which a module's docstring says why it is one job ("One job: ...")


def _modules() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that `path` imports, anywhere in it (inside functions too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def _layer(module: str) -> int | None:
    """The layer of a module (its index in LAYERS); None for the package's own __init__ and __main__."""
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def test_every_module_sits_in_a_layer():
    modules = _modules()
    outside = sorted(m for m in modules if _layer(m) is None and m not in ("jaxrl_lander", "jaxrl_lander.__main__"))
    assert outside == []
    assert {m.split(".")[1] for m in modules if _layer(m) is not None} == set(LAYERS)


def test_no_module_imports_from_a_higher_layer():
    modules = _modules()
    upward = sorted(f"{m} -> {t}" for m, p in modules.items() if _layer(m) is not None
                    for t in _imports(p, modules) if _layer(t) is None or _layer(t) > _layer(m))
    assert upward == []


def test_the_layer_check_sees_an_upward_import(tmp_path):
    """The check itself: a storage module importing the loop is caught, one importing config is not."""
    modules = _modules()
    up, down = tmp_path / "up.py", tmp_path / "down.py"
    up.write_text("def f():\n    from jaxrl_lander.training.loop import train_loop\n")
    down.write_text("from jaxrl_lander.config import RunConfig\n")
    assert [_layer(t) for t in _imports(up, modules)] == [LAYERS.index("training")]
    assert [_layer(t) for t in _imports(down, modules)] == [LAYERS.index("config")]


def test_no_import_circle():
    modules = _modules()
    # A package's __init__ that only re-exports its modules is not a room of its own; one with code is.
    def room(path: Path) -> bool:
        return path.name != "__init__.py" or any(isinstance(n, (ast.FunctionDef, ast.ClassDef))
                                                   for n in ast.parse(path.read_text()).body)

    graph = {m: {t for t in _imports(p, modules) if t != m and not m.startswith(t + ".")}
             for m, p in modules.items() if room(p)}
    circles = []

    def visit(module, path):
        for target in sorted(graph.get(module, ())):
            if target in path:
                circles.append(path[path.index(target):] + [target])
            elif target not in done:
                visit(target, path + [target])
        done.add(module)

    done: set[str] = set()
    for module in sorted(graph):
        if module not in done:
            visit(module, [module])
    assert circles == []
    assert len(graph) > 40  # the walk saw the package


def test_a_long_module_says_why_it_is_one_job():
    long = {str(p.relative_to(PACKAGE)): ast.get_docstring(ast.parse(p.read_text())) or ""
            for p in PACKAGE.rglob("*.py") if len(p.read_text().splitlines()) > LONG}
    assert {name for name, doc in long.items() if "One job:" not in doc} == set()
