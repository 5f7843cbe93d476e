"""The layout the README's Architecture section describes: the product at the
top level, everything else in clviz/, imports pointing one way (no cycles) and
no imports hidden inside functions."""

import ast

from tests.conftest import REPO

TOP_LEVEL = ["train.py", "visualize.py", "nets.py", "centerloss.py"]
# The layers, lowest first; a module may import only from its own layer or below.
LAYERS = [
    {"nets", "centerloss", "clviz.config", "clviz.data", "clviz.metrics", "clviz.runfiles", "clviz.background",
     "clviz.projection", "clviz.tensorboard_log", "clviz.fftconv"},
    {"clviz.errors", "clviz.speed", "clviz.frames", "clviz.report"},
    {"clviz.training", "clviz.gif", "clviz.interactive"},
    {"clviz.grid", "clviz.run"},
    {"clviz.member"},
    {"clviz.workers", "clviz.cluster"},
    {"clviz.sweep"},
    {"clviz.commands"},
    {"clviz.notebook"},
    {"train", "visualize"},
]


def project_modules() -> dict:
    """{module name: path} of the shipped code."""
    paths = [REPO / name for name in TOP_LEVEL] + sorted((REPO / "clviz").glob("*.py"))
    modules = {}
    for path in paths:
        name = path.stem if path.parent == REPO else f"clviz.{path.stem}"
        if name != "clviz.__init__":
            modules[name] = path
    return modules


# Optional dependencies, imported only when their feature is asked for (and then only inside a function).
OPTIONAL = {"torch.utils.tensorboard", "ray", "IPython", "IPython.display"}


def imports_of(path, known) -> tuple:
    """(project modules imported at module level, imports found inside functions other than OPTIONAL ones)."""
    tree = ast.parse(path.read_text())
    top, nested = set(), []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else \
            [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        hits = {name for name in names if name in known}
        if node.col_offset == 0:
            top |= hits
        elif not (isinstance(node, ast.ImportFrom) and node.module in OPTIONAL) and \
                not (isinstance(node, ast.Import) and all(alias.name in OPTIONAL for alias in node.names)):
            nested.append(f"{path.name}:{node.lineno}")
    return top, nested


def test_every_module_is_in_a_layer():
    assert set(project_modules()) == set().union(*LAYERS)


def test_imports_point_down_the_layers_so_there_is_no_cycle():
    modules = project_modules()
    level = {name: i for i, layer in enumerate(LAYERS) for name in layer}
    graph = {}
    for name, path in modules.items():
        graph[name], _ = imports_of(path, modules)
        for imported in graph[name]:
            assert level[imported] <= level[name], f"{name} (layer {level[name]}) imports {imported} (layer {level[imported]})"
    # And no cycle even within a layer: depth-first search for a back edge.
    state = {}

    def visit(node, trail):
        state[node] = "open"
        for nxt in graph[node]:
            assert state.get(nxt) != "open", "import cycle: " + " -> ".join(trail + [node, nxt])
            if nxt not in state:
                visit(nxt, trail + [node])
        state[node] = "done"

    for name in graph:
        if name not in state:
            visit(name, [])


def test_no_imports_inside_functions():
    modules = project_modules()
    nested = [hit for path in modules.values() for hit in imports_of(path, modules)[1]]
    assert nested == []


def test_a_lower_layer_cannot_reach_up(tmp_path):
    """The checker itself can fail: an upward import is found."""
    fake = tmp_path / "config.py"
    fake.write_text("import clviz.sweep\n")
    top, _ = imports_of(fake, project_modules())
    assert top == {"clviz.sweep"}
