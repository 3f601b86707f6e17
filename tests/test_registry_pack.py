"""The registry archive (`comfy node pack`) holds only what the nodes need and nothing its scanner flags."""
import re
import zipfile

import pytest

from registry_pack import (ONNXRUNTIME_NAME, REPO, bandit, bandit_findings, comfy_cli, flagged_lines, pack,
                           pyproject_dependencies, requirement_names)

pytestmark = pytest.mark.skipif(comfy_cli() is None, reason="comfy-cli is not installed (pip install comfy-cli; "
                                                             "requirements-test.txt has it)")

SHIPPED_TOP = {"__init__.py", "nodes", "f2d_core", "workflows", "requirements.txt", "requirements-dlib.txt",
               "pyproject.toml", "README.md", "LICENSE"}
TOOLS = ("f2d_core/client/", "f2d_core/evaluate/", "f2d_core/train/", "f2d_core/bench.py", "f2d_core/__main__.py",
         "tests/", "scripts/", "benchmarks/", ".ci/")


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return pack(tmp_path_factory.mktemp("pack"))


@pytest.fixture(scope="module")
def names(archive):
    with zipfile.ZipFile(archive) as z:
        return z.namelist()


def test_the_archive_holds_only_the_nodes_the_engine_and_the_workflows(names):
    assert {n.split("/")[0] for n in names} <= SHIPPED_TOP
    assert not [n for n in names if n.startswith(TOOLS)]
    assert "nodes/__init__.py" in names and "f2d_core/identity/encoder.py" in names
    assert any(n.startswith("workflows/") and n.endswith(".json") for n in names)
    assert "requirements-dlib.txt" in names  # the README's install line for the dlib detector


def test_the_archive_installs_and_imports_no_onnxruntime(archive, names):
    """Issue 22: whatever onnxruntime build a user has stays untouched by installing the pack."""
    with zipfile.ZipFile(archive) as z:
        listed = [n for name in names if name.startswith("requirements") and name.endswith(".txt")
                  for n in requirement_names(z.read(name).decode())]
        listed += pyproject_dependencies(z.read("pyproject.toml").decode())
        imports = [name for name in names if name.endswith(".py")
                   and re.search(r"^\s*(import|from)\s+onnxruntime\b", z.read(name).decode(), re.M)]
    assert "numpy" in listed  # the lists were read
    assert not [n for n in listed if ONNXRUNTIME_NAME.match(n)] and imports == []


def test_no_shipped_line_matches_the_registry_scanners_rules(archive):
    assert flagged_lines(archive) == []


needs_bandit = pytest.mark.skipif(bandit() is None, reason="bandit is not installed (requirements-test.txt has it)")


@needs_bandit
def test_bandit_finds_nothing_in_the_archive(archive, tmp_path):
    """bandit's default profile, as the registry runs it: any finding of any severity flags the version."""
    assert bandit_findings(archive, tmp_path) == []


@needs_bandit
def test_bandit_reports_what_the_registry_would_flag(tmp_path):
    """The check above is only worth something if bandit runs and reports through it."""
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("nodes/x.py", "import pickle\n\n\ndef load(f):\n    return pickle.load(f)\n")
    found = bandit_findings(bad, tmp_path)
    assert [f.split(" ")[:2] for f in found] == [["nodes/x.py:1:", "B403"], ["nodes/x.py:5:", "B301"]]


def test_every_engine_module_the_nodes_import_is_shipped(names):
    """Follow the relative imports from nodes/ through f2d_core: each target must be in the archive."""
    shipped = {n for n in names if n.endswith(".py")}
    todo, seen = [n for n in shipped if n.startswith("nodes/")], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        package = name.rsplit("/", 1)[0].split("/")
        for dots, module in re.findall(r"^\s*from\s+(\.+)([\w.]*)\s+import", (REPO / name).read_text(), re.M):
            base = package[:len(package) - (len(dots) - 1)] if len(dots) > 1 else package
            path = "/".join(base + ([module.replace(".", "/")] if module else []))
            target = f"{path}.py" if f"{path}.py" in shipped else f"{path}/__init__.py"
            assert target in shipped, f"{name} imports {dots}{module}, which the archive lacks"
            todo.append(target)
    assert "f2d_core/__init__.py" in seen


def test_the_scanner_rules_catch_what_they_are_for(tmp_path):
    """The rules above are only worth something if they match the lines the scanner flags."""
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("x.py", "import subprocess\nimport urllib.request\nexec(code)\n__import__('os')\n"
                           "import socket\nos.system('ls')\nimport requests\nrun([sys.executable, '-m', 'pip', 'install', 'x'])\n"
                           "# tell the user: pip install -r requirements.txt\n")
    assert len(flagged_lines(bad)) == 8
