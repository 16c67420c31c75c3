"""The package's import arrows run one way: no cycle between its sub-packages and foundation
modules, function-level imports included, with kernels/ and cluster/ read as the
lorahub_serve.kernels and lorahub_serve.cluster they install as."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ROOTS = {"lorahub_serve": REPO / "lorahub_serve", "lorahub_serve.kernels": REPO / "kernels",
         "lorahub_serve.cluster": REPO / "cluster"}


def _unit(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for pkg, root in ROOTS.items():
        for f in root.rglob("*.py"):
            mod = ".".join([pkg, *f.relative_to(root).with_suffix("").parts]).removesuffix(".__init__")
            src = _unit(mod)
            for node in ast.walk(ast.parse(f.read_text())):
                if isinstance(node, ast.ImportFrom) and node.level:
                    raise AssertionError(f"{f}: relative import (ruff TID252 should have caught it)")
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lorahub_serve"):
                    targets = ([node.module] if node.module != "lorahub_serve"
                               else [f"lorahub_serve.{a.name}" for a in node.names])
                elif isinstance(node, ast.Import):
                    targets = [a.name for a in node.names if a.name.startswith("lorahub_serve")]
                else:
                    continue
                for t in targets:
                    dst = _unit(t)
                    if src and dst and dst != src:
                        graph.setdefault(src, set()).add(dst)
    return graph


def test_no_import_cycle():
    graph = import_graph()

    def reach(start):
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    cycles = sorted(u for u in graph if u in reach(u))
    assert not cycles, f"import cycles through {cycles}: {({u: sorted(graph[u]) for u in cycles})}"


def test_the_layers_are_where_the_readme_says():
    graph = import_graph()
    assert "cluster" not in graph.get("engine", set()) and "serving" not in graph.get("cluster", set())
    for foundation in ("formats", "paths", "atomic", "models", "prompting", "errors"):
        assert not graph.get(foundation, set()) & {"engine", "eval", "hub", "serving", "cluster"}


def test_the_kernel_layer_states_the_same_choices():
    from typing import get_args

    from lorahub_serve import choices
    from lorahub_serve.kernels import dispatch

    assert get_args(dispatch.Rule) == choices.RULES
    assert get_args(dispatch.Backend) == choices.BACKENDS


def test_every_package_is_installed():
    """A sub-package missing from pyproject's list works in an editable install and breaks in a
    wheel (hub/ and eval/ once did): every folder with an __init__.py must be listed."""
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {".".join([pkg, *d.relative_to(root).parts]) for pkg, root in ROOTS.items()
               for d in [root, *root.rglob("*")] if d.is_dir() and (d / "__init__.py").exists()}
    assert on_disk - listed == set(), "packages missing from pyproject.toml [tool.setuptools] packages"
    assert listed - on_disk == set(), "pyproject.toml lists packages that do not exist"
