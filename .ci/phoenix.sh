#!/usr/bin/env bash
# Sets up Arize Phoenix (a real OTLP receiver with its own HTTP API) for tests/test_phoenix.py,
# in a virtual environment of its own: its dependency tree is large and must never go into
# flowcore's .venv. Prints the path of its `phoenix` executable on stdout (the last line), for
#   export FLOWCORE_PHOENIX="$(bash .ci/phoenix.sh)"
# Progress and timings go to stderr. Re-running is cheap: the venv is kept while the pinned
# version is what it holds.
#   FLOWCORE_PHOENIX_VENV   where the venv goes (default: .venv-phoenix in the repo)
set -euo pipefail
cd "$(dirname "$0")/.."

PHOENIX_VERSION="20.26.1"   # the version checked to install and run here (Python 3.11)
VENV="${FLOWCORE_PHOENIX_VENV:-$PWD/.venv-phoenix}"
STAMP="$VENV/.flowcore-phoenix-installed"
PHOENIX="$VENV/bin/phoenix"

if [[ -x "$PHOENIX" && -f "$STAMP" && "$(cat "$STAMP")" == "$PHOENIX_VERSION" ]]; then
    echo "phoenix: arize-phoenix==$PHOENIX_VERSION already in $VENV" >&2
    echo "$PHOENIX"
    exit 0
fi

start=$SECONDS
echo "phoenix: installing arize-phoenix==$PHOENIX_VERSION into $VENV ..." >&2
if [[ ! -x "$VENV/bin/python" ]]; then
    python3 -m venv "$VENV"
fi
# Keep the venv out of git (and so out of ruff's and every other tool's walk), as
# newer Pythons' venv module does by itself.
echo "*" > "$VENV/.gitignore"
rm -f "$STAMP"
pip_install() {
    # pip's output goes to stderr, less this machine's notes about absent local indexes.
    local log
    log="$(mktemp)"
    if ! "$VENV/bin/python" -m pip install --disable-pip-version-check -q "$@" >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        echo "phoenix: pip install $* failed" >&2
        return 1
    fi
    grep -v "is ignored: it is neither a file nor a directory" "$log" >&2 || true
    rm -f "$log"
}
pip_install --upgrade pip
pip_install "arize-phoenix==$PHOENIX_VERSION"
"$PHOENIX" --help >/dev/null
echo "$PHOENIX_VERSION" > "$STAMP"
echo "phoenix: installed in $((SECONDS - start)) s" >&2
echo "$PHOENIX"
