import ast
import os
import re
import subprocess
import sys

import networkx as nx


def test_passes_installs_under_fxcompress_only(tmp_path):
    code = ("import importlib.util, fxcompress, fxcompress.passes;"
            "print(importlib.util.find_spec('passes') is None, fxcompress.passes.ExportONNX.__module__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "fxcompress.passes.export_onnx"]


def test_public_api_names():
    import fxcompress
    for name in ("compile", "CompileResult", "TraceError", "VerificationError", "ExportError", "CheckpointError",
                 "AnalysisPass", "TransformPass", "LoweringPass", "PassContext"):
        assert hasattr(fxcompress, name), name


# --- the import graph and the declared dependencies, read from the source with ast -----------------------

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOTS = {"fxcompress": "fxcompress", "passes": "fxcompress.passes"}   # folder -> the package it installs as


def _modules(repo, roots):
    """{module name: (path, is_package)} for every .py file under the roots."""
    mods = {}
    for folder, package in roots.items():
        base = os.path.join(repo, folder)
        for dirpath, _, files in os.walk(base):
            for f in files:
                if f.endswith(".py"):
                    parts = os.path.relpath(os.path.join(dirpath, f), base)[:-3].split(os.sep)
                    parts = parts[:-1] if parts[-1] == "__init__" else parts
                    mods[".".join([package, *parts])] = (os.path.join(dirpath, f), f == "__init__.py")
    return mods


def _imports(path, module, is_package):
    """(imported module, imported name or None, line, guarded by `except ImportError`) for every import in
    the file, inside functions too; `if TYPE_CHECKING:` blocks are skipped (they never run)."""
    package = module if is_package else module.rpartition(".")[0]
    found = []

    def visit(node, guarded):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            g = guarded or (isinstance(child, ast.Try) and any(
                h.type is not None and any(n in ast.unparse(h.type) for n in ("ImportError", "ModuleNotFoundError"))
                for h in child.handlers))
            if isinstance(child, ast.Import):
                found.extend((a.name, None, child.lineno, g) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = package
                for _ in range(child.level - 1):
                    base = base.rpartition(".")[0]
                full = (base + ("." + child.module if child.module else "")) if child.level else child.module
                found.extend((full, a.name, child.lineno, g) for a in child.names)
            visit(child, g)
    visit(ast.parse(open(path).read(), path), False)
    return found


def import_graph(repo=REPO, roots=ROOTS) -> nx.DiGraph:
    """Module -> module it imports. Function-level imports count too: a lazy import only hides a cycle (and
    today none is needed). A submodule import is not counted as importing its parent packages (every
    module's parent chain reaches fxcompress/__init__, which would make every graph cyclic)."""
    mods = _modules(repo, roots)
    graph = nx.DiGraph()
    graph.add_nodes_from(mods)
    for module, (path, is_package) in mods.items():
        for full, name, line, _ in _imports(path, module, is_package):
            target = f"{full}.{name}" if name and f"{full}.{name}" in mods else full if full in mods else None
            if target and target != module:
                graph.add_edge(module, target, where=f"{os.path.relpath(path, repo)}:{line}")
    return graph


def test_the_import_graph_resolves_relative_and_absolute_imports():
    graph = import_graph()
    assert graph.has_edge("fxcompress.passes.magnitude_prune", "fxcompress.passes.channel_groups")  # from .x
    assert graph.has_edge("fxcompress.passes.magnitude_prune", "fxcompress.prune.plan")             # absolute
    assert graph.has_edge("fxcompress.prune.plan", "fxcompress.graph.macs")                         # from ..x
    assert graph.number_of_nodes() > 50 and graph.number_of_edges() > 100


def test_package_has_no_import_cycles():
    graph = import_graph()
    cycles = [c for c in nx.simple_cycles(graph)][:5]
    assert not cycles, "import cycles:\n" + "\n".join(
        " -> ".join(f"{a} ({graph.edges[a, b]['where']})" for a, b in zip(c, c[1:] + c[:1])) for c in cycles)


def test_the_cycle_check_finds_a_cycle(tmp_path):
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "a.py").write_text("from .sub import b\n")
    (tmp_path / "pkg" / "sub" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "sub" / "b.py").write_text("def f():\n    from ..a import g\n")
    graph = import_graph(str(tmp_path), {"pkg": "pkg"})
    assert sorted(nx.find_cycle(graph)) == [("pkg.a", "pkg.sub.b"), ("pkg.sub.b", "pkg.a")]


def _setup_requirements():
    """install_requires and extras_require, read from setup.py's literal lists."""
    call = next(n for n in ast.walk(ast.parse(open(os.path.join(REPO, "setup.py")).read()))
                if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    kw = {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg in ("install_requires", "extras_require")}

    def name(req):
        return re.split(r"[;\[<>=!~ ]", req, maxsplit=1)[0].lower()
    return {name(r) for r in kw["install_requires"]}, {e: {name(r) for r in rs} for e, rs in kw["extras_require"].items()}


DIST_NAME = {"pil": "pillow", "sklearn": "scikit-learn", "yaml": "pyyaml"}
INDIRECT = {"onnxscript": "torch.onnx's exporter imports it"}   # required without being imported here


def test_declared_dependencies_match_the_imports():
    required, optional = set(), set()
    for module, (path, is_package) in _modules(REPO, ROOTS).items():
        for full, _, _, guarded in _imports(path, module, is_package):
            top = full.split(".")[0]
            if top in sys.stdlib_module_names or top in ("fxcompress", "passes", "__future__"):
                continue
            (optional if guarded else required).add(DIST_NAME.get(top.lower(), top.lower()))
    install, extras = _setup_requirements()
    assert required - install == set(), "imported without a `except ImportError` but not in install_requires"
    assert optional - install - set().union(*extras.values()) == set(), "optional imports in no extra"
    unused = install - required - optional - set(INDIRECT)
    assert not unused, "install_requires lists packages nothing in fxcompress imports: move them to an extra"
    assert extras["test"] >= {"pytest"}
