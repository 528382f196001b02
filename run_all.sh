#!/usr/bin/env bash
# LangEdit reproducibility suite: set up, test, and run every notebook.
#
#   ./run_all.sh                 run notebooks/*.ipynb in numeric order (profile "default",
#                                embedded Gemma-3-270M); executed copies go to results/notebooks/
#   ./run_all.sh --test          the test command: notebook hygiene check, pytest tests/,
#                                and nbval over notebooks/ with LANGEDIT_PROFILE=smoke
#   ./run_all.sh --setup         only create/update .venv
#
# Options for notebook runs (papermill parameters):
#   --profile smoke|default|paper   size of the experiments (default: default; --test: smoke)
#   --model NAME_OR_PATH            "gemma-3-270m" (embedded default), a local folder, or a HF id
#   --device cpu|cuda|cuda:N        where the model runs
#   --dtype float32|float16|bfloat16
#   -p KEY VALUE                    any other notebook parameter (repeatable)
#   --log-output                    stream the notebooks' cell output to the terminal
#   NOTEBOOK.ipynb ...              run only these notebooks (default: all of notebooks/)
# With --test, --profile/--model/--device/--dtype become LANGEDIT_PROFILE/LANGEDIT_MODEL/
# LANGEDIT_DEVICE/LANGEDIT_DTYPE for the notebooks, and arguments after `--` go to pytest tests/.
#
# Environment: PYTHON (interpreter for the venv, >= 3.10; default: python3), LANGEDIT_CACHE_DIR,
# LANGEDIT_DATA_DIR, LANGEDIT_RESULTS_DIR (see README.md). Nothing is installed outside .venv.
# With CI set, --test uses a fresh, empty LANGEDIT_CACHE_DIR (removed afterwards) unless
# LANGEDIT_CI_KEEP_CACHE=1.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SELF="$ROOT/$(basename "${BASH_SOURCE[0]}")"
cd "$ROOT"
VENV="$ROOT/.venv"
VPY="$VENV/bin/python"
STAMP="$VENV/.langedit-installed"
KERNEL_NAME="langedit"
NOTEBOOK_DIR="$ROOT/notebooks"

say() { printf '==> %s\n' "$*"; }
die() { printf 'run_all.sh: error: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/p' "$SELF" | sed '$d' | sed 's/^# \{0,1\}//'; }

# ----------------------------------------------------------------------------- arguments
MODE=run
PROFILE=""
MODEL=""
DEVICE=""
DTYPE=""
LOG_OUTPUT=()
PARAMS=()
SELECTED=()
PYTEST_EXTRA=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --test) MODE=test ;;
        --setup) MODE=setup ;;
        --profile) [[ $# -ge 2 ]] || die "--profile needs a value"; PROFILE="$2"; shift ;;
        --profile=*) PROFILE="${1#*=}" ;;
        --model) [[ $# -ge 2 ]] || die "--model needs a value"; MODEL="$2"; shift ;;
        --model=*) MODEL="${1#*=}" ;;
        --device) [[ $# -ge 2 ]] || die "--device needs a value"; DEVICE="$2"; shift ;;
        --device=*) DEVICE="${1#*=}" ;;
        --dtype) [[ $# -ge 2 ]] || die "--dtype needs a value"; DTYPE="$2"; shift ;;
        --dtype=*) DTYPE="${1#*=}" ;;
        -p|--parameter) [[ $# -ge 3 ]] || die "$1 needs KEY VALUE"; PARAMS+=(-p "$2" "$3"); shift 2 ;;
        --log-output) LOG_OUTPUT=(--log-output) ;;
        -h|--help) usage; exit 0 ;;
        --) shift; PYTEST_EXTRA=("$@"); break ;;
        -*) die "unknown option '$1' (see ./run_all.sh --help)" ;;
        *) SELECTED+=("$1") ;;
    esac
    shift
done

case "${PROFILE:-default}" in smoke|default|paper) ;; *) die "--profile must be smoke, default or paper (got '$PROFILE')" ;; esac
if [[ -n "$DEVICE" && ! "$DEVICE" =~ ^(cpu|cuda|cuda:[0-9]+|mps)$ ]]; then
    die "--device must be cpu, cuda or cuda:N (got '$DEVICE')"
fi
if [[ -n "$DTYPE" && ! "$DTYPE" =~ ^(float32|float16|bfloat16|fp32|fp16|bf16)$ ]]; then
    die "--dtype must be float32, float16 or bfloat16 (got '$DTYPE')"
fi
if [[ "$MODE" == test && ${#PARAMS[@]} -gt 0 ]]; then
    die "-p KEY VALUE applies to notebook runs only; with --test use --profile/--model/--device/--dtype"
fi
if [[ "$MODE" != test && ${#PYTEST_EXTRA[@]} -gt 0 ]]; then
    die "arguments after -- are passed to pytest and need --test"
fi

# ----------------------------------------------------------------------------- venv
pick_python() {
    local candidates=() candidate
    if [[ -n "${PYTHON:-}" ]]; then
        command -v "$PYTHON" >/dev/null 2>&1 || die "PYTHON=$PYTHON is not an executable"
        "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null \
            || die "PYTHON=$PYTHON is '$("$PYTHON" -V 2>&1 | head -n 1 || true)'; LangEdit needs Python >= 3.10"
        echo "$PYTHON"
        return
    fi
    candidates=(python3 python3.13 python3.12 python3.11 python3.10)
    for candidate in "${candidates[@]}"; do
        if command -v "$candidate" >/dev/null 2>&1 \
            && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
            echo "$candidate"
            return
        fi
    done
    if command -v python3 >/dev/null 2>&1; then
        die "python3 is $(python3 -V 2>&1); LangEdit needs Python >= 3.10. Install one and/or set PYTHON=/path/to/python3.11"
    fi
    die "no python3 found; install Python >= 3.10 and/or set PYTHON=/path/to/python3"
}

create_venv() {
    local base
    base="$(pick_python)"
    say "creating .venv with $base ($("$base" -V 2>&1))"
    if ! "$base" -m venv "$VENV"; then
        rm -rf "$VENV"
        die "'$base -m venv' failed (on Debian/Ubuntu: apt-get install python3-venv)"
    fi
}

# Prints what is missing or at the wrong version (one line each); prints nothing when all is in place.
missing_requirements() {
    "$VPY" - "$ROOT" <<'PY'
import importlib.metadata as md
import importlib.util
import re
import sys
from pathlib import Path

root = Path(sys.argv[1])
for raw in (root / "requirements.txt").read_text().splitlines():
    line = raw.split("#", 1)[0].strip()
    match = re.match(r"^([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*==\s*([^\s;]+)", line)
    if not match:
        continue
    name, wanted = match.group(1), match.group(3)
    try:
        have = md.version(name)
    except md.PackageNotFoundError:
        print(f"{name} (not installed)")
        continue
    if have.split("+")[0] != wanted.split("+")[0]:
        print(f"{name} {have} (want {wanted})")
spec = importlib.util.find_spec("langedit")
expected = (root / "lib" / "langedit" / "__init__.py").resolve()
if spec is None or spec.origin is None or Path(spec.origin).resolve() != expected:
    print(f"langedit (not installed editable from {root})")
PY
}

install_hash() {
    "$VPY" - "$ROOT" <<'PY'
import hashlib
import sys
from pathlib import Path

digest = hashlib.sha256(sys.version.encode())
for name in ("requirements.txt", "pyproject.toml"):
    digest.update((Path(sys.argv[1]) / name).read_bytes())
print(digest.hexdigest())
PY
}

kernel_ok() {
    local spec="$VENV/share/jupyter/kernels/$KERNEL_NAME/kernel.json"
    [[ -f "$spec" ]] && grep -qF "\"$VPY\"" "$spec"
}

setup_venv() {
    if [[ -e "$VENV" ]] && ! "$VPY" -c 'import sys' >/dev/null 2>&1; then
        say ".venv exists but its python does not run (moved, or its base Python was removed): recreating it"
        rm -rf "$VENV"
    fi
    [[ -x "$VPY" ]] || create_venv
    "$VPY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
        || die ".venv has $("$VPY" -V 2>&1); LangEdit needs Python >= 3.10: remove .venv and rerun (PYTHON=... to choose)"

    # One setup at a time (several shells in one checkout): lock this script's own file.
    if command -v flock >/dev/null 2>&1; then
        exec 9<"$SELF"
        flock 9
    fi
    local want have="" missing
    want="$(install_hash)"
    [[ -f "$STAMP" ]] && have="$(cat "$STAMP")"
    missing="$(missing_requirements)"
    if [[ "$want" != "$have" || -n "$missing" ]]; then
        if [[ -n "$missing" ]]; then
            say "installing into .venv; missing or different:"
            sed -n 's/^/      /; 1,8p' <<<"$missing"
            (( $(wc -l <<<"$missing") <= 8 )) || echo "      ... and $(( $(wc -l <<<"$missing") - 8 )) more"
        else
            say "requirements.txt or pyproject.toml changed: updating .venv"
        fi
        "$VPY" -m pip install -r requirements.txt
        "$VPY" -m pip install --no-deps -e .
        missing="$(missing_requirements)"
        [[ -z "$missing" ]] || die "still missing after pip install: $missing"
        echo "$want" >"$STAMP"
    else
        say ".venv is up to date ($("$VPY" -V 2>&1), requirements.txt installed)"
    fi
    if ! kernel_ok; then
        say "registering Jupyter kernel '$KERNEL_NAME' inside .venv (nothing global)"
        "$VPY" -m ipykernel install --sys-prefix --name "$KERNEL_NAME" --display-name "Python (langedit)" >/dev/null
    fi
    if command -v flock >/dev/null 2>&1; then
        exec 9<&-
    fi
}

# ----------------------------------------------------------------------------- notebooks
NOTEBOOKS=()
collect_notebooks() {
    local path
    if [[ ${#SELECTED[@]} -gt 0 ]]; then
        for path in "${SELECTED[@]}"; do
            [[ -f "$path" && "$path" == *.ipynb ]] || die "no such notebook: $path"
            NOTEBOOKS+=("$(cd "$(dirname "$path")" && pwd)/$(basename "$path")")
        done
        return
    fi
    [[ -d "$NOTEBOOK_DIR" ]] || return 0
    while IFS= read -r path; do
        NOTEBOOKS+=("$path")
    done < <(find "$NOTEBOOK_DIR" -maxdepth 1 -type f -name '*.ipynb' | LC_ALL=C sort -V)
}

results_dir() {
    "$VPY" -c 'from langedit.paths import results_dir; print(results_dir())' 2>/dev/null \
        || echo "${LANGEDIT_RESULTS_DIR:-$ROOT/results}"
}

run_notebooks() {
    collect_notebooks
    if [[ ${#NOTEBOOKS[@]} -eq 0 ]]; then
        say "no notebooks in notebooks/ yet: nothing to run"
        exit 0
    fi
    local results executed nb name started=$SECONDS
    results="$(results_dir)"
    executed="$results/notebooks"
    mkdir -p "$executed"
    local params=(-p profile "${PROFILE:-default}")
    [[ -z "$MODEL" ]] || params+=(-p model "$MODEL")
    [[ -z "$DEVICE" ]] || params+=(-p device "$DEVICE")
    [[ -z "$DTYPE" ]] || params+=(-p dtype "$DTYPE")
    params+=(${PARAMS[@]+"${PARAMS[@]}"})
    RUN_MARKER="$(mktemp)"  # files newer than this were written by this run
    trap 'rm -f "$RUN_MARKER"' EXIT
    say "running ${#NOTEBOOKS[@]} notebook(s) with: ${params[*]}"
    for nb in "${NOTEBOOKS[@]}"; do
        name="$(basename "$nb")"
        say "[$name] started $(date '+%H:%M:%S')"
        if ! "$VENV/bin/papermill" "$nb" "$executed/$name" -k "$KERNEL_NAME" -l python --cwd "$(dirname "$nb")" \
                "${params[@]}" ${LOG_OUTPUT[@]+"${LOG_OUTPUT[@]}"}; then
            printf '\nrun_all.sh: FAILED in notebook %s\n' "${nb#"$ROOT"/}" >&2
            [[ ! -f "$executed/$name" ]] || printf '  the executed copy, with the error, is %s\n' "$executed/$name" >&2
            printf '  later notebooks were not run\n' >&2
            exit 1
        fi
        # progress bars belong on this terminal, not in the saved copy
        "$VPY" scripts/strip_notebooks.py --progress "$executed/$name" >/dev/null
    done
    say "all ${#NOTEBOOKS[@]} notebook(s) ran in $(( (SECONDS - started) / 60 )) min $(( (SECONDS - started) % 60 )) s"
    echo "    executed notebooks: $executed/"
    echo "    figures and tables: $results/"
    local new
    new="$(find "$results" -type f -newer "$RUN_MARKER" ! -path "$executed/*" 2>/dev/null | LC_ALL=C sort | head -n 60)"
    if [[ -n "$new" ]]; then
        echo "    written by this run:"
        sed "s|^$results/|      |" <<<"$new"
    fi
}

# ----------------------------------------------------------------------------- tests
run_tests() {
    local failed=() rc
    local smoke_results
    smoke_results="$(mktemp -d "${TMPDIR:-/tmp}/langedit-test-results.XXXXXX")"
    # Tests and smoke notebooks write their tables/figures here, never over results/.
    export LANGEDIT_RESULTS_DIR="$smoke_results"
    local fresh_cache=""
    if [[ -n "${CI:-}" && -z "${LANGEDIT_CI_KEEP_CACHE:-}" ]]; then
        # CI goes through the one-time model conversion and every cache exactly as a new user does.
        fresh_cache="$(mktemp -d "${TMPDIR:-/tmp}/langedit-ci-cache.XXXXXX")"
        export LANGEDIT_CACHE_DIR="$fresh_cache"
        say "CI is set: fresh, empty LANGEDIT_CACHE_DIR=$fresh_cache (LANGEDIT_CI_KEEP_CACHE=1 keeps yours)"
    fi

    say "notebook hygiene (no outputs, a 'parameters' cell reading \$LANGEDIT_PROFILE)"
    "$VPY" scripts/strip_notebooks.py --check || failed+=("notebook hygiene (scripts/strip_notebooks.py --check)")

    say "pytest tests/"
    rc=0
    "$VPY" -m pytest tests ${PYTEST_EXTRA[@]+"${PYTEST_EXTRA[@]}"} || rc=$?
    case $rc in
        0) ;;
        5) say "pytest collected no tests in tests/" ;;
        *) failed+=("pytest tests/ (exit $rc)") ;;
    esac

    collect_notebooks
    if [[ ${#NOTEBOOKS[@]} -eq 0 ]]; then
        say "no notebooks in notebooks/ yet: skipping nbval"
    else
        say "nbval: ${#NOTEBOOKS[@]} notebook(s) with LANGEDIT_PROFILE=${PROFILE:-smoke}"
        # nbval cannot inject papermill parameters: the notebooks' parameters cells read these.
        local nb_env=(LANGEDIT_PROFILE="${PROFILE:-smoke}")
        [[ -z "$MODEL" ]] || nb_env+=(LANGEDIT_MODEL="$MODEL")
        [[ -z "$DEVICE" ]] || nb_env+=(LANGEDIT_DEVICE="$DEVICE")
        [[ -z "$DTYPE" ]] || nb_env+=(LANGEDIT_DTYPE="$DTYPE")
        rc=0
        env "${nb_env[@]}" "$VPY" -m pytest --nbval-lax --nbval-kernel-name "$KERNEL_NAME" \
                --nbval-kernel-startup-timeout 180 -p no:cacheprovider "${NOTEBOOKS[@]}" || rc=$?
        case $rc in
            0) ;;
            5) say "nbval collected no cells" ;;
            *) failed+=("nbval notebooks/ (exit $rc)") ;;
        esac
    fi

    [[ -z "$fresh_cache" ]] || rm -rf "$fresh_cache"
    if [[ ${#failed[@]} -gt 0 ]]; then
        printf '\nrun_all.sh --test: FAILED\n' >&2
        printf '  - %s\n' "${failed[@]}" >&2
        printf '  (tables/figures the tests wrote are kept in %s)\n' "$smoke_results" >&2
        exit 1
    fi
    rm -rf "$smoke_results"
    say "run_all.sh --test: all checks passed"
}

# ----------------------------------------------------------------------------- main
setup_venv
case "$MODE" in
    setup) say "set-up done: .venv ready (kernel '$KERNEL_NAME'); next: ./run_all.sh --test or ./run_all.sh" ;;
    test) run_tests ;;
    run) run_notebooks ;;
esac
