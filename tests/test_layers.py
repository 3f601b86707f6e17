"""The engine's layers: what imports what, read from the source (every import, at any depth)."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "f2d_core"
# the node engine, in import order: a layer may import only the layers before it
# models/ sits below faces/: the face networks (insightface's ONNX files) run on torch through
# models/onnx_graph.py, so onnxruntime is never installed (issue 22); the pixel arithmetic of
# faces/ (reading, resizing, alignment, dlib) stays numpy and never reaches torch, not even
# through another module (PIXEL_MODULES)
LAYERS = ["errors", "choices", "models", "faces", "weights", "text", "identity"]
TOOLS = ["cli", "client", "evaluate", "train", "bench", "__main__"]
TORCH_FREE = ["client", "errors", "cli"]
PIXEL_MODULES = ["f2d_core.faces.images", "f2d_core.faces.align", "f2d_core.faces.preprocess",
                 "f2d_core.faces.dlib_detector"]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Absolute names of everything `path` imports (relative imports resolved; `from . import x` as x)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            found.add(target)
            found |= {f"{target}.{a.name}" for a in node.names if is_module(f"{target}.{a.name}")}
    return found


def is_module(name: str) -> bool:
    path = ROOT.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


MODULES = {module_name(p): imports(p) for p in ROOT.rglob("*.py")}


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def internal(module: str) -> set[str]:
    return {m for m in MODULES[module] if m.startswith("f2d_core.") and m in MODULES}


def test_there_is_no_import_cycle():
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for dep in sorted(internal(m)):
            if dep.startswith(m + ".") or m.startswith(dep + "."):
                continue  # a package and its own submodules
            if state.get(dep) == "open":
                cycle = stack[stack.index(dep):] + [dep]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[m] = "done"

    for m in sorted(MODULES):
        if m not in state:
            visit(m)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if layer(m) in LAYERS))
def test_engine_layers_import_only_the_layers_before_them(module):
    mine = LAYERS.index(layer(module))
    for dep in internal(module):
        if dep.startswith("f2d_core.") and layer(dep) != layer(module):
            assert layer(dep) in LAYERS[:mine], f"{module} imports {dep}: {layer(dep)} is not below {layer(module)}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if layer(m) in TORCH_FREE))
def test_torch_free_layers_never_import_torch(module):
    assert not {m for m in MODULES[module] if m == "torch" or m.startswith("torch.")}, module


@pytest.mark.parametrize("module", PIXEL_MODULES)
def test_the_pixel_arithmetic_of_faces_never_reaches_torch(module):
    seen, todo = set(), [module]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        assert not {d for d in MODULES[m] if d == "torch" or d.startswith("torch.")}, f"{module} -> {m} imports torch"
        todo += [d for d in internal(m) if d != "f2d_core"]


def test_the_engine_never_imports_comfyui():
    host = {"comfy", "comfy_api", "folder_paths", "nodes", "comfy_execution", "server", "execution"}
    assert not [(m, d) for m, ds in MODULES.items() for d in ds if d.split(".")[0] in host]


def test_the_top_level_holds_at_most_eight_modules_beside_the_subpackages():
    top = sorted(p.name for p in ROOT.glob("*.py"))
    assert len(top) <= 8, top
    assert {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists()} >= set(LAYERS[2:])


def test_the_nodes_use_the_pinned_v3_api():
    """comfy_api.latest changes without warning (ComfyUI's maintainers advise a pinned version)."""
    nodes = Path(__file__).resolve().parents[1] / "nodes"
    unpinned = [p.name for p in nodes.glob("*.py") if "comfy_api.latest" in p.read_text()]
    pinned = [p.name for p in nodes.glob("*.py") if "comfy_api.v0_0_2" in p.read_text()]
    assert not unpinned and len(pinned) >= 7
