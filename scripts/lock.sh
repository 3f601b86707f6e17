#!/usr/bin/env bash
# Refresh requirements-lock.txt: build .venv-latest from the newest releases, run the whole suite
# there, and only if it passes write its exact versions as the new lock. Review the diff of
# requirements-lock.txt, then run ./scripts/test.sh (which reinstalls .venv from the lock).
set -euo pipefail
cd "$(dirname "$0")/.."
F2D_LATEST=1 ./scripts/test.sh "$@"
{
  echo "# Exact versions the test suite passed with (scripts/lock.sh wrote this on $(date -u +%F))."
  echo "# Used as pip constraints by scripts/_venv.sh; F2D_LATEST=1 ignores it. Users get requirements.txt."
  .venv-latest/bin/python -m pip freeze --exclude-editable --exclude torch | grep -v '^-e ' | sort -f
} > requirements-lock.txt
echo "requirements-lock.txt updated from .venv-latest"
