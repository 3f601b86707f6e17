# Sourced by the scripts with REQS set to a requirements file (requirements-tools.txt for the
# tools, requirements-test.txt for the tests): create the venv if needed, install torch 2.13 and
# REQS when they changed, then activate it.
#
# Installs go through requirements-lock.txt, the exact versions the test suite was last verified
# with, so a fresh clone tests what passed before whatever upstream released since.
# F2D_LATEST=1 ignores the lock and takes the newest releases instead, in its own .venv-latest
# (scripts/lock.sh refreshes the lock from such a run).
# torch comes from pip's configured index; where that would be a CUDA build, point
# TORCH_INDEX at a CPU wheel index (e.g. https://download.pytorch.org/whl/cpu).
PY=${PYTHON:-python3}
REQS=${REQS:-requirements-test.txt}
if [ "${F2D_LATEST:-0}" = 1 ]; then
  VENV=.venv-latest; LOCK=(); UPGRADE=(--upgrade --upgrade-strategy eager)
else
  VENV=.venv; LOCK=(-c requirements-lock.txt); UPGRADE=()
fi
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
stamp=$VENV/.installed-$(basename "$REQS" .txt).sha
want=$(cat requirements*.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  # torch first and alone, so nothing later can pull another build of it
  "$VENV/bin/python" -m pip install -q torch==2.13.0 ${TORCH_INDEX:+--index-url "$TORCH_INDEX"}
  "$VENV/bin/python" -m pip install -q "${UPGRADE[@]}" "${LOCK[@]}" -r "$REQS"
  echo "$want" > "$stamp"
fi
. "$VENV/bin/activate"
