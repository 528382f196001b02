"""The set-up files agree with each other, and the notebooks follow the notebook contract (README)."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TEST_COMMAND = "./run_all.sh --test"


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _requirements() -> list[str]:
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    return [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]


def _strip_notebooks():
    spec = importlib.util.spec_from_file_location("strip_notebooks", ROOT / "scripts" / "strip_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_requirements_are_all_pinned():
    for requirement in _requirements():
        assert re.fullmatch(r"[A-Za-z0-9_.\-]+(\[[^\]]*\])?==[^\s=]+", requirement), \
            f"requirements.txt: {requirement!r} is not pinned with =="


def test_environment_yml_pins_equal_requirements_txt():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert env["name"] == "langedit"
    deps = env["dependencies"]
    assert "pip" in deps
    assert any(str(d).replace(" ", "").startswith("python=3.") for d in deps if isinstance(d, str))
    pip_lists = [d["pip"] for d in deps if isinstance(d, dict) and "pip" in d]
    assert len(pip_lists) == 1, "environment.yml should have one pip: list"
    pip = [str(entry).strip() for entry in pip_lists[0]]
    assert "-e ." in pip, "environment.yml should install this checkout with `-e .`"
    pins = [entry for entry in pip if entry != "-e ."]
    assert sorted(pins) == sorted(_requirements()), (
        "environment.yml's pip list and requirements.txt differ: "
        f"only in environment.yml {sorted(set(pins) - set(_requirements()))}, "
        f"only in requirements.txt {sorted(set(_requirements()) - set(pins))}")


def test_environment_yml_python_satisfies_requires_python():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    minimum = tuple(int(x) for x in re.search(r">=\s*([\d.]+)", project["requires-python"]).group(1).split("."))
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    assert tuple(int(x) for x in python.split("=")[1].split(".")) >= minimum


def test_every_package_dependency_is_pinned_in_requirements():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pinned = {_name(r) for r in _requirements()}
    missing = [d for d in project["dependencies"] if _name(d) not in pinned]
    assert not missing, f"pyproject.toml dependencies not pinned in requirements.txt: {missing}"


_SOURCE_DIRS = ("lib", "tests", "scripts", "benchmarks")


def _imported_top_modules() -> dict[str, str]:
    """Top-level modules imported by the project's code and notebooks -> one file that imports each."""
    import ast
    found: dict[str, str] = {}
    sources = [(p, p.read_text(encoding="utf-8")) for d in _SOURCE_DIRS for p in (ROOT / d).rglob("*.py")]
    for notebook in (ROOT / "notebooks").glob("*.ipynb"):
        cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
        code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        sources.append((notebook, "\n".join(l for l in code.splitlines() if not l.lstrip().startswith(("%", "!")))))
    for path, text in sources:
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], str(path.relative_to(ROOT)))
    return found


def test_every_direct_import_is_pinned_in_requirements():
    """A package the code imports must not arrive only as somebody else's dependency."""
    import importlib.metadata as md
    distributions = md.packages_distributions()
    pinned = {_name(r) for r in _requirements()}
    unpinned = {}
    for module, where in _imported_top_modules().items():
        if module in sys.stdlib_module_names or module in ("langedit", "conftest") or module.startswith("_"):
            continue
        if (ROOT / "tests" / f"{module}.py").exists() or (ROOT / "benchmarks" / f"{module}.py").exists():
            continue                              # the project's own helper modules
        owners = {_name(d) for d in distributions.get(module, [])}
        assert owners, f"{where} imports {module!r}, which no installed distribution provides"
        if not owners & pinned:
            unpinned[module] = (sorted(owners), where)
    assert not unpinned, f"imported but not pinned in requirements.txt (module: (distribution, file)): {unpinned}"


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert TEST_COMMAND in readme
    ci = (ROOT / ".ci" / "run").read_text()
    commands = [line.strip() for line in ci.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert commands[-1] in (TEST_COMMAND, f"exec {TEST_COMMAND}"), commands[-1]


@pytest.mark.parametrize("script", ["run_all.sh", ".ci/run"])
def test_scripts_are_executable_bash_with_valid_syntax(script):
    path = ROOT / script
    assert os.access(path, os.X_OK), f"{script} is not executable (git update-index --chmod=+x {script})"
    assert path.read_text().startswith("#!/usr/bin/env bash")
    assert "set -euo pipefail" in path.read_text()
    subprocess.run(["bash", "-n", str(path)], check=True)


def test_run_all_help_and_option_errors():
    ok = subprocess.run([str(ROOT / "run_all.sh"), "--help"], capture_output=True, text=True)
    assert ok.returncode == 0 and "--test" in ok.stdout
    bad = subprocess.run([str(ROOT / "run_all.sh"), "--profile", "huge"], capture_output=True, text=True)
    assert bad.returncode != 0 and "smoke, default or paper" in bad.stderr
    bad = subprocess.run([str(ROOT / "run_all.sh"), "--frobnicate"], capture_output=True, text=True)
    assert bad.returncode != 0 and "--frobnicate" in bad.stderr


# --------------------------------------------------------------------------- notebooks

def test_committed_notebooks_are_clean_and_parameterised():
    strip = _strip_notebooks()
    problems = {}
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        found = strip.notebook_problems(json.loads(path.read_text(encoding="utf-8")))
        if found:
            problems[path.name] = found
    assert not problems, f"run `python scripts/strip_notebooks.py` and fix: {problems}"


def _notebook(parameters_source: str | None, outputs: bool = False) -> dict:
    cells = [{"cell_type": "markdown", "metadata": {}, "source": ["# Title"]}]
    if parameters_source is not None:
        cells.append({"cell_type": "code", "execution_count": 1 if outputs else None,
                      "metadata": {"tags": ["parameters"], "execution": {"iopub.status.busy": "x"}},
                      "outputs": [], "source": parameters_source})
    cells.append({"cell_type": "code", "execution_count": 2 if outputs else None, "metadata": {},
                  "outputs": [{"output_type": "stream", "name": "stdout", "text": ["hi\n"]}] if outputs else [],
                  "source": ["print('hi')"]})
    return {"cells": cells, "metadata": {"papermill": {"duration": 1.0}}, "nbformat": 4, "nbformat_minor": 5}


GOOD_PARAMETERS = 'import os\nprofile = os.environ.get("LANGEDIT_PROFILE", "default")\nmodel = "gemma-3-270m"\n'


def test_strip_check_accepts_a_clean_notebook():
    assert _strip_notebooks().notebook_problems(_notebook(GOOD_PARAMETERS)) == []


@pytest.mark.parametrize("source, expected", [
    (None, "tagged 'parameters'"),
    ('profile = "default"\n', "LANGEDIT_PROFILE"),
    ('import os\nsize = os.environ.get("LANGEDIT_PROFILE")\n', "does not assign 'profile'"),
])
def test_strip_check_reports_a_bad_parameters_cell(source, expected):
    problems = _strip_notebooks().notebook_problems(_notebook(source))
    assert any(expected in p for p in problems), problems


def test_strip_removes_outputs_and_then_the_check_passes(tmp_path):
    strip = _strip_notebooks()
    path = tmp_path / "01_demo.ipynb"
    path.write_text(json.dumps(_notebook(GOOD_PARAMETERS, outputs=True)))
    assert strip.main(["--check", str(path)]) == 1
    assert strip.main([str(path)]) == 0
    cleaned = json.loads(path.read_text())
    assert all(c.get("outputs", []) == [] and c.get("execution_count") is None
               for c in cleaned["cells"] if c["cell_type"] == "code")
    assert "papermill" not in cleaned["metadata"]
    assert cleaned["cells"][1]["metadata"] == {"tags": ["parameters"]}
    assert strip.main(["--check", str(path)]) == 0
    text = path.read_text()
    assert strip.main([str(path)]) == 0 and path.read_text() == text  # idempotent


def test_strip_check_runs_as_a_script_on_the_repository():
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "strip_notebooks.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_progress_mode_drops_only_stderr_streams(tmp_path):
    notebook = {"cells": [{"cell_type": "code", "metadata": {}, "source": "x", "execution_count": 1, "outputs": [
        {"output_type": "stream", "name": "stderr", "text": "100%|####| 3/3"},
        {"output_type": "stream", "name": "stdout", "text": "kept"},
        {"output_type": "execute_result", "data": {"text/plain": "1"}, "metadata": {}, "execution_count": 1}]}],
        "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path = tmp_path / "executed.ipynb"
    path.write_text(json.dumps(notebook))
    script = Path(__file__).resolve().parents[1] / "scripts" / "strip_notebooks.py"
    subprocess.run([sys.executable, str(script), "--progress", str(path)], check=True, capture_output=True)
    outputs = json.loads(path.read_text())["cells"][0]["outputs"]
    assert [o.get("name", o["output_type"]) for o in outputs] == ["stdout", "execute_result"]
