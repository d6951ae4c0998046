#!/usr/bin/env bash
# Fills gpu_wheels/ (git ignores it) with what a bare GPU machine lacks, on a machine WITH network:
#
#   bash benchmarks/gpu_prepare.sh [PACKAGE ...]        # or: bash benchmarks/gpu_check.sh prepare
#
# The GPU machine has python with CuPy, PyTorch, NumPy, networkx, Jinja2, tqdm and pytest, but no
# network and no lark; its copy of the repository is a plain working tree, not installed. So:
#   dlc-*.whl           `pip wheel --no-deps` of the working tree as the GPU session's copy has it
#                       (tracked files, and untracked ones git does not ignore)
#   lark                dlc's parsers
#   hypothesis          the tests (tests/test_cuda.py imports it through test_emu.py), with its
#                       dependencies, and exceptiongroup + typing_extensions for a Python 3.10 there
#   setuptools, wheel   tests/test_layout.py builds dlc's wheel
#   PACKAGE ...         anything else, with its dependencies
# at the versions installed here where they are (those the suite passed with), else the newest.
# All are pure-Python wheels: about 2 MB, well within what a GPU session carries (64 MiB; the
# device `run` tool needs carry=["gpu_wheels"]). gpu_check.sh's prep section installs from it,
# offline, only what the GPU machine's python cannot import, and names whatever is still missing.
# Rerun this after changing dlc's code: the prep section notices a dlc wheel that differs from the
# working tree and imports the tree itself instead, saying so.
# Variables: PYTHON (default python, else python3), GPU_WHEELS (default gpu_wheels).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
PY=${PYTHON:-$(command -v python || command -v python3)}
DIR=${GPU_WHEELS:-gpu_wheels}
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
rm -f "$DIR"/*.whl "$DIR"/PREPARED.txt
TMP=$(mktemp -d /tmp/dlc-gpu-prepare.XXXXXX)
trap 'rm -rf "$TMP"' EXIT

pin() {  # NAME: NAME==VERSION where installed here, else NAME
    "$PY" -c "import importlib.metadata as m, sys; print(sys.argv[1] + '==' + m.version(sys.argv[1]))" "$1" 2>/dev/null \
        || echo "$1"
}

# dlc: from a copy of what the GPU session's copy of the repository holds
mkdir -p "$TMP/src"
if git rev-parse --is-inside-work-tree > /dev/null 2>&1; then
    git ls-files -co --exclude-standard -z | tar --null --ignore-failed-read -T - -cf - 2> /dev/null | tar -xf - -C "$TMP/src"
else
    tar --exclude=.git --exclude='.venv*' --exclude=build --exclude='*.egg-info' --exclude=__pycache__ \
        --exclude=gpu_wheels --exclude='*.so' -cf - . | tar -xf - -C "$TMP/src"
fi
ISOLATION=()
"$PY" -c "import setuptools, sys; sys.exit(int(setuptools.__version__.split('.')[0]) < 64)" 2> /dev/null \
    && ISOLATION=(--no-build-isolation)   # setuptools is here: no need to fetch it
"$PY" -m pip wheel --quiet --disable-pip-version-check --no-deps "${ISOLATION[@]}" -w "$DIR" "$TMP/src"

# what the GPU image lacks, pinned to what the suite passed with here
"$PY" -m pip download --quiet --disable-pip-version-check --only-binary=:all: -d "$DIR" \
    "$(pin lark)" "$(pin hypothesis)" "$(pin setuptools)" "$(pin wheel)" "$@"
"$PY" -m pip download --quiet --disable-pip-version-check --only-binary=:all: --no-deps -d "$DIR" \
    exceptiongroup "$(pin typing_extensions)"

{
    echo "filled by benchmarks/gpu_prepare.sh $*"
    echo "on $(date -u '+%Y-%m-%d %H:%M:%S UTC') with python $("$PY" -c 'import sys; print(sys.version.split()[0])')"
    echo "from $(git -C "$REPO" describe --always --dirty 2> /dev/null || echo 'a working tree without git')"
    (cd "$DIR" && ls -1 ./*.whl | sed 's|^\./||')
} > "$DIR/PREPARED.txt"
echo "gpu_wheels: $(ls "$DIR"/*.whl | wc -l) wheels, $(du -sh "$DIR" | cut -f1) in $DIR"
(cd "$DIR" && ls -1 ./*.whl | sed 's|^\./|  |')
echo "bring $DIR along to the GPU machine (the device run tool: carry [\"$(basename "$DIR")\"]),"
echo "then run there: bash benchmarks/gpu_check.sh"
