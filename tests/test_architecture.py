"""The tree shows the architecture: the library never imports the app, no layer imports a layer
above it, no module imports itself back through others (no cycle), no module is over 400
lines, and deployment imports no dataset reader, store writer or experiment.

Imports are read from the source (every ``import`` statement, those inside functions too, except
under ``if TYPE_CHECKING:``), so a lazy import that goes upward fails as well."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "karmma"

# Lowest first. A module may import its own layer and the layers below it.
LAYERS = [
    ("vocabulary", ["karmma", "karmma._moved", "karmma.errors", "karmma.registry", "karmma.registries",
                    "karmma.plugins", "karmma.typed_dict", "karmma.limits", "karmma.paths", "karmma.modalities",
                    "karmma.config", "karmma.config_migration", "karmma.presets", "karmma.progress",
                    "karmma.losses", "karmma.outputs", "karmma.faults", "karmma.metrics",
                    "karmma.modality_dropout", "karmma.precision", "karmma.presence", "karmma.bursts"]),
    ("data", ["karmma.data"]),
    ("extractors", ["karmma.extractors"]),
    ("models", ["karmma.models"]),
    ("tasks", ["karmma.tasks"]),
    ("io", ["karmma.io"]),
    ("evaluation", ["karmma.evaluation"]),
    ("engine", ["karmma.engine"]),
    ("runtime", ["karmma.runtime"]),
    ("deploy", ["karmma.deploy"]),
    ("api", ["karmma.api"]),
    ("experiments (app)", ["karmma.experiments"]),
    ("cli (app)", ["karmma.cli", "karmma.__main__"]),
]  # fmt: skip
APP = {"karmma.experiments", "karmma.cli"}
MAX_LINES = 400


def _name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The karmma modules ``path`` imports (``from karmma.x import y`` names ``karmma.x.y`` when
    that is a module, else ``karmma.x``)."""
    tree = ast.parse(path.read_text())
    me = _name(path)
    found: set[str] = set()
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            skip |= {id(n) for n in ast.walk(node)}
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("karmma")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative
                base = me.rsplit(".", node.level - (path.name == "__init__.py"))[0]
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            if not mod.startswith("karmma"):
                continue
            for a in node.names:
                found.add(f"{mod}.{a.name}" if f"{mod}.{a.name}" in modules else mod)
    return {m for m in found if m != me}


def _graph() -> dict[str, set[str]]:
    files = {_name(p): p for p in ROOT.rglob("*.py")}
    return {m: _imports(p, set(files)) for m, p in files.items()}


def _layer(module: str) -> int:
    best, length = -1, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > length and (p != "karmma" or module == p):
                best, length = i, len(p)
    return best


def test_every_module_has_a_layer():
    assert [m for m in _graph() if _layer(m) < 0] == []


def test_no_module_imports_a_layer_above_its_own_and_the_library_never_imports_the_app():
    bad = []
    for module, deps in sorted(_graph().items()):
        if module in ("karmma", "karmma._moved"):
            continue  # the package face and the old-path aliases name everything, lazily
        for dep in sorted(deps):
            if _layer(dep) > _layer(module):
                bad.append(f"{module} ({LAYERS[_layer(module)][0]}) imports {dep} ({LAYERS[_layer(dep)][0]})")
    assert bad == []


def test_there_is_no_import_cycle():
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index and v not in ("karmma", "karmma._moved"):
            visit(v)
    assert cycles == []


def test_no_module_is_over_400_lines():
    long = {
        str(p.relative_to(ROOT.parent)): n
        for p in ROOT.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


@pytest.mark.parametrize(
    "entry", ["karmma.deploy.predict", "karmma.deploy.export", "karmma.cli.main", "karmma.runtime"]
)
def test_deployment_imports_no_dataset_reader_store_writer_or_experiment(entry):
    code = (
        f"import sys, {entry}\n"
        "bad = [m for m in sys.modules if m.startswith(('karmma.data.readers.', 'karmma.data.store_writer', "
        "'karmma.experiments', 'karmma.data.feature_import'))]\n"
        "print(sorted(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", out


def test_the_generated_reference_pages_are_up_to_date():
    # in a fresh process: other tests register readers and add-ons of their own
    code = (
        "from karmma.cli.reference import DOCS, PAGES\n"
        "print([name for name, make in PAGES.items() if (DOCS / name).read_text() != make() + '\\n'])"
    )
    stale = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert stale == "[]", f"run `python -m karmma.cli.reference` to regenerate {stale}"


def test_the_cli_knows_the_feature_formats_import_features_reads():
    from karmma.data.feature_import import FORMATS

    assert (
        f"{{{','.join(FORMATS)}}}"
        in subprocess.run(
            [sys.executable, "-m", "karmma", "import-features", "--help"], capture_output=True, text=True, check=True
        ).stdout
    )


def test_the_runtime_imports_no_torch_h5py_onnx_or_scipy_signal():
    """A robot runs an export folder with onnxruntime, numpy, PyAV and OpenCV only (`karmma.runtime`)."""
    code = (
        "import sys, karmma.runtime, karmma.runtime.stream, karmma.runtime.clip, karmma.cli.stream\n"
        "print(sorted(m for m in ('torch', 'h5py', 'onnx', 'scipy.signal') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", out
