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

"$PY" -m pip install -q --upgrade pip
case ",$EXTRAS," in
  # torch pinned first: an unpinned torch pulls a multi-GB CUDA build
  *,models,*) "$PY" -m pip install -q torch==2.13.0 ;;
esac
TARGET="$ROOT${EXTRAS:+[$EXTRAS]}"
MODE=()
[ "$EDITABLE" = "--editable" ] && MODE=(-e)
if [ -n "${EDGEPART_ONNXRUNTIME:-}" ]; then
  "$PY" -m pip install -q "$EDGEPART_ONNXRUNTIME"
  # edgepart itself without its dependencies, then every dependency but onnxruntime
  "$PY" -m pip install -q --no-deps "${MODE[@]}" "$ROOT"
  mapfile -t DEPS < <("$PY" - "$ROOT/pyproject.toml" "$EXTRAS" <<'PYEOF'
import re, sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
reqs = list(project["dependencies"])
for extra in filter(None, sys.argv[2].split(",")):
    reqs += project["optional-dependencies"][extra]
for r in reqs:
    if re.match(r"onnxruntime\b", r) is None:
        print(r)
PYEOF
)
  [ ${#DEPS[@]} -eq 0 ] || "$PY" -m pip install -q "${DEPS[@]}"
else
  "$PY" -m pip install -q "${MODE[@]}" "$TARGET"
fi
"$PY" -c "import edgepart, onnxruntime; print('edgepart', edgepart.__version__, 'installed; onnxruntime', onnxruntime.__version__, 'providers', ', '.join(onnxruntime.get_available_providers()))"
