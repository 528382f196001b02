#!/usr/bin/env python3
"""Keep the notebooks in notebooks/ clean: no stored outputs, and a papermill parameters cell.

    python scripts/strip_notebooks.py            # strip outputs in place (notebooks/*.ipynb)
    python scripts/strip_notebooks.py --check    # report problems, exit 1 if any (used by ./run_all.sh --test)
    python scripts/strip_notebooks.py a.ipynb b/ # specific files or folders
    python scripts/strip_notebooks.py --progress results/notebooks/   # executed copies: drop only the
                                                 # stderr streams (progress bars), keep every other output

Rules checked (see README, "Notebook contract"):

* no code cell has outputs or an execution count;
* no cell is tagged ``injected-parameters`` (that is papermill's output: commit the source notebook,
  not an executed copy from results/notebooks/);
* exactly one cell is tagged ``parameters``; it assigns ``profile`` and reads the environment
  variable ``LANGEDIT_PROFILE`` for its default, so that nbval (which cannot inject parameters)
  runs the notebook with ``LANGEDIT_PROFILE=smoke``.

Only the standard library is used, so this also runs outside the venv (e.g. as a git hook).
The file is written the way Jupyter/nbformat writes it (indent 1, sorted keys, trailing newline).
"""
from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DIR = REPO_ROOT / "notebooks"
PROFILE_ENV = "LANGEDIT_PROFILE"
#: Cell metadata written by Jupyter/papermill at execution time; dropped when stripping.
_VOLATILE_CELL_METADATA = ("execution", "papermill", "collapsed", "scrolled", "ExecuteTime")
#: Notebook metadata written at execution time; dropped when stripping.
_VOLATILE_NB_METADATA = ("papermill", "widgets")


def _source(cell: dict) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def _tags(cell: dict) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def _assigned_names(source: str) -> set[str] | None:
    """Names assigned at top level of a cell, or None when it is not plain Python (magics etc.)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    names: set[str] = set()
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else (
            [node.target] if isinstance(node, (ast.AnnAssign, ast.AugAssign)) else [])
        for target in targets:
            for sub in ast.walk(target):
                if isinstance(sub, ast.Name):
                    names.add(sub.id)
    return names


def notebook_problems(notebook: dict) -> list[str]:
    """Everything wrong with one notebook (as loaded JSON), as readable messages; [] when clean."""
    problems = []
    cells = notebook.get("cells", [])
    for index, cell in enumerate(cells):
        if cell.get("cell_type") != "code":
            continue
        if cell.get("outputs"):
            problems.append(f"cell {index} has {len(cell['outputs'])} stored output(s)")
        if cell.get("execution_count") is not None:
            problems.append(f"cell {index} has an execution count ({cell['execution_count']})")
        if "injected-parameters" in _tags(cell):
            problems.append(f"cell {index} is papermill's 'injected-parameters' cell (an executed copy?)")
    parameter_cells = [i for i, cell in enumerate(cells)
                       if cell.get("cell_type") == "code" and "parameters" in _tags(cell)]
    if not parameter_cells:
        problems.append("no code cell is tagged 'parameters' (papermill needs one)")
    elif len(parameter_cells) > 1:
        problems.append(f"several cells are tagged 'parameters' ({parameter_cells}); keep one")
    else:
        source = _source(cells[parameter_cells[0]])
        names = _assigned_names(source)
        if names is not None and "profile" not in names:
            problems.append(f"the parameters cell (cell {parameter_cells[0]}) does not assign 'profile'")
        if PROFILE_ENV not in source:
            problems.append(
                f"the parameters cell (cell {parameter_cells[0]}) does not read ${PROFILE_ENV}: write "
                f"profile = os.environ.get(\"{PROFILE_ENV}\", \"default\")")
    return problems


def strip_notebook(notebook: dict) -> dict:
    """The notebook without outputs, execution counts and execution-time metadata (in place)."""
    for cell in notebook.get("cells", []):
        metadata = cell.get("metadata", {})
        for key in _VOLATILE_CELL_METADATA:
            metadata.pop(key, None)
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
    for key in _VOLATILE_NB_METADATA:
        notebook.get("metadata", {}).pop(key, None)
    return notebook


def drop_stderr_streams(notebook: dict) -> int:
    """Remove stderr stream outputs (tqdm progress bars, warnings printed by libraries) from every code
    cell, in place; results, figures and stdout stay. Returns how many were removed."""
    removed = 0
    for cell in notebook.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        kept = [o for o in cell.get("outputs", []) if not (o.get("output_type") == "stream" and o.get("name") == "stderr")]
        removed += len(cell.get("outputs", [])) - len(kept)
        cell["outputs"] = kept
    return removed


def dumps(notebook: dict) -> str:
    return json.dumps(notebook, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def find_notebooks(paths: list[Path]) -> list[Path]:
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(path.glob("*.ipynb")))
        elif path.suffix == ".ipynb" and path.exists():
            found.append(path)
        else:
            raise SystemExit(f"strip_notebooks: {path} is neither a folder nor an existing .ipynb file")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", type=Path, help=f"notebooks or folders (default: {DEFAULT_DIR})")
    parser.add_argument("--check", action="store_true", help="only report; exit 1 if a notebook is not clean")
    parser.add_argument("--progress", action="store_true",
                        help="executed copies: remove only stderr streams (progress bars), keep other outputs")
    args = parser.parse_args(argv)
    if args.progress:
        for path in find_notebooks(args.paths):
            notebook = json.loads(path.read_text(encoding="utf-8"))
            removed = drop_stderr_streams(notebook)
            if removed:
                path.write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
                print(f"{path}: removed {removed} stderr stream outputs")
        return 0
    if args.paths:
        notebooks = find_notebooks(args.paths)
    else:
        notebooks = find_notebooks([DEFAULT_DIR]) if DEFAULT_DIR.is_dir() else []
    if not notebooks:
        print("strip_notebooks: no notebooks found")
        return 0
    failed = 0
    for path in notebooks:
        text = path.read_text(encoding="utf-8")
        try:
            notebook = json.loads(text)
        except json.JSONDecodeError as error:
            print(f"{path}: not valid JSON ({error})")
            failed += 1
            continue
        if args.check:
            problems = notebook_problems(notebook)
            for problem in problems:
                print(f"{path}: {problem}")
            failed += bool(problems)
        else:
            cleaned = dumps(strip_notebook(notebook))
            if cleaned != text:
                path.write_text(cleaned, encoding="utf-8")
                print(f"stripped {path}")
            remaining = [p for p in notebook_problems(notebook) if "output" not in p and "execution count" not in p]
            for problem in remaining:
                print(f"{path}: {problem}")
            failed += bool(remaining)
    if args.check:
        if failed:
            print(f"strip_notebooks: {failed} of {len(notebooks)} notebook(s) not clean; "
                  "run `.venv/bin/python scripts/strip_notebooks.py` to strip outputs")
        else:
            print(f"strip_notebooks: {len(notebooks)} notebook(s) clean")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
