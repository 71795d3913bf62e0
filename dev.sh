#!/usr/bin/env bash
# Developer entry point: ./dev.sh setup | demo [fraud up options] | test [pytest options]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

VENV=.venv
# Holds the hash of the pyproject.toml last installed, so that an unchanged project
# skips pip entirely and a changed one is reinstalled without anyone remembering to.
STAMP="$VENV/.fraud-installed-pyproject"

say() { printf '==> %s\n' "$*"; }

setup() {
    if [[ ! -x "$VENV/bin/python" ]]; then
        say "setup: creating $VENV"
        python3 -m venv "$VENV"
    fi
    local wanted
    wanted="$(sha256sum pyproject.toml | cut -d' ' -f1)"
    if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$wanted" && -x "$VENV/bin/fraud" ]]; then
        say "setup: $VENV is up to date"
        return
    fi
    say "setup: installing the project and its test tools into $VENV"
    # The machine's pip configuration decides where packages come from.
    "$VENV/bin/python" -m pip install --quiet -e '.[test]'
    printf '%s\n' "$wanted" >"$STAMP"
}

demo() {
    export FRAUD_REDIS_URL="${FRAUD_REDIS_URL:-redis://127.0.0.1:6379}"
    say "demo: starting the embedded Redis Stack at $FRAUD_REDIS_URL"
    "$VENV/bin/fraud" server start
    trap 'say "demo: stopping the embedded Redis Stack"; "$VENV/bin/fraud" server stop' EXIT
    say "demo: running the pipeline (Ctrl-C to stop)"
    "$VENV/bin/fraud" up --demo "$@"
}

run_tests() {
    say "test: ruff"
    "$VENV/bin/ruff" check .
    say "test: pytest"
    "$VENV/bin/python" -m pytest "$@"
}

usage() {
    echo "usage: $0 setup | demo [fraud up options] | test [pytest options]" >&2
    exit 2
}

command="${1:-}"
[[ $# -gt 0 ]] && shift
case "$command" in
    setup) setup ;;
    demo) setup; demo "$@" ;;
    test) setup; run_tests "$@" ;;
    *) usage ;;
esac
