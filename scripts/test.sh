#!/usr/bin/env bash
# One command for the tests on a fresh machine: make .venv (CPU torch 2.13 + test and
# training deps) if needed, then run pytest. Extra arguments go to pytest. Needs ../shared
# beside the repo for the parity tests (they skip with a reason otherwise).
set -euo pipefail
cd "$(dirname "$0")/.."
REQS=requirements-test.txt . scripts/_venv.sh
exec python -m pytest -q "$@" tests
