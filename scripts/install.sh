#!/usr/bin/env bash
# Install edgepart into a Python environment. The one install script: `make setup` (and so CI) and
# the device image (Dockerfile) both run it, so the image's install steps are the tested ones.
#
#   scripts/install.sh PYTHON [EXTRAS] [--editable]
#
#   PYTHON      the interpreter to install into (a venv's bin/python, or python3 in an image)
#   EXTRAS      comma-separated extras: none for a device (the small install), `litert` for TFLite
#               steps, `packager,models,camera,dev` for a workstation and the tests
#   --editable  install the checkout in place (development); otherwise a regular install
#
# EDGEPART_ONNXRUNTIME: an onnxruntime build to use instead of PyPI's `onnxruntime`, as a pip
# requirement or a wheel file (on a Jetson: NVIDIA's JetPack onnxruntime-gpu wheel; on a PC with a
# GPU: onnxruntime-gpu). It is installed first, and edgepart's own `onnxruntime` requirement is
# then left out: both installed side by side, the plain one hides the GPU providers.
set -euo pipefail
PY=${1:?usage: scripts/install.sh PYTHON [EXTRAS] [--editable]}
EXTRAS=${2:-}
EDITABLE=${3:-}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
[ "$EXTRAS" = "--editable" ] && { EXTRAS=""; EDITABLE="--editable"; }

# the requirements, read before anything is installed: an unknown extra or a pyproject this cannot
# read stops here, with nothing changed (scripts/dependencies.py needs only the standard library, so
# it runs on Python 3.10, which has no tomllib)
if ! DEPS_TEXT=$("$PY" "$ROOT/scripts/dependencies.py" "$ROOT/pyproject.toml" "$EXTRAS"); then
  echo "install.sh: cannot read edgepart's dependencies from $ROOT/pyproject.toml (the line above says why); nothing was installed" >&2
  exit 1
fi
DEPS=()
while IFS= read -r line; do
  if [ -n "$line" ]; then DEPS+=("$line"); fi
done <<EOF_DEPS
$DEPS_TEXT
EOF_DEPS

"$PY" -m pip install -q --upgrade pip
case ",$EXTRAS," in
  # torch pinned first: an unpinned torch pulls a multi-GB CUDA build
  *,models,*) "$PY" -m pip install -q torch==2.13.0 ;;
esac
TARGET="$ROOT${EXTRAS:+[$EXTRAS]}"
# arrays that may be empty are expanded as ${A[@]+"${A[@]}"}: bash 3.2 (macOS) under `set -u`
# calls "${A[@]}" of an empty array an unbound variable
MODE=()
if [ "$EDITABLE" = "--editable" ]; then MODE=(-e); fi
if [ -n "${EDGEPART_ONNXRUNTIME:-}" ]; then
  "$PY" -m pip install -q "$EDGEPART_ONNXRUNTIME"
  # edgepart itself without its dependencies, then every dependency but onnxruntime
  "$PY" -m pip install -q --no-deps ${MODE[@]+"${MODE[@]}"} "$ROOT"
  if [ ${#DEPS[@]} -gt 0 ]; then "$PY" -m pip install -q ${DEPS[@]+"${DEPS[@]}"}; fi
else
  "$PY" -m pip install -q ${MODE[@]+"${MODE[@]}"} "$TARGET"
fi
"$PY" -c "import edgepart, onnxruntime; print('edgepart', edgepart.__version__, 'installed; onnxruntime', onnxruntime.__version__, 'providers', ', '.join(onnxruntime.get_available_providers()))"
