# Sourced by the scripts with REQS set to a requirements file (requirements.txt for the tools,
# requirements-test.txt for the tests): create .venv if needed, install torch 2.13 and REQS
# when they changed, then activate it.
# torch comes from pip's configured index; where that would be a CUDA build, point
# TORCH_INDEX at a CPU wheel index (e.g. https://download.pytorch.org/whl/cpu).
PY=${PYTHON:-python3}
REQS=${REQS:-requirements-test.txt}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.installed-$(basename "$REQS" .txt).sha
want=$(cat requirements*.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  # torch first and alone, so nothing later can pull another build of it
  .venv/bin/python -m pip install -q torch==2.13.0 ${TORCH_INDEX:+--index-url "$TORCH_INDEX"}
  .venv/bin/python -m pip install -q -r "$REQS"
  echo "$want" > "$stamp"
fi
. .venv/bin/activate
