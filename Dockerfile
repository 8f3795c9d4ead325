# The device agent's image: the device install only (no packager, no torch), `edgepart run` as its
# entry point. Build it on (or for) the device's architecture:
#
#   # a Pi, a phone-class arm64 board or an x86-64 PC (CPU, XNNPACK through LiteRT for TFLite steps)
#   docker build -t edgepart-agent .
#   # a Jetson (JetPack 6): L4T base and NVIDIA's onnxruntime-gpu wheel for it (CUDA, TensorRT), the
#   # wheel first put in the checkout's wheels/ folder, which the image copies
#   cp ~/Downloads/onnxruntime_gpu-1.20.0-cp310-cp310-linux_aarch64.whl wheels/
#   docker build -t edgepart-agent:jetson \
#     --build-arg BASE=nvcr.io/nvidia/l4t-jetpack:r36.4.0 \
#     --build-arg ONNXRUNTIME=wheels/onnxruntime_gpu-1.20.0-cp310-cp310-linux_aarch64.whl .
#
#   docker run --rm --network host --cpuset-cpus 0-3 -v $PWD/dist/pi-b:/bundle edgepart-agent /bundle
#   docker run --rm --network host --runtime nvidia -v $PWD/dist/jetson-a:/bundle edgepart-agent:jetson /bundle
#
# Host networking: mDNS (multicast) and the agents' ZeroMQ ports need the device's own network.
# --cpuset-cpus limits the agent's cores, and its thread budget follows (docs/agents.md, "Threads").
# The install is scripts/install.sh, the script `make setup` (and so CI) runs.
ARG BASE=python:3.11-slim
FROM ${BASE}

# the onnxruntime build to use instead of PyPI's (onnxruntime-gpu, the JetPack wheel): a pip
# requirement, or a wheel file in the checkout's wheels/ folder given as wheels/<file>.whl (the folder
# is copied below; it holds only .gitkeep otherwise); empty for PyPI's onnxruntime
ARG ONNXRUNTIME=""
# extras beside the device install: litert runs TFLite steps
ARG EXTRAS=litert

RUN (command -v python3 && python3 -m pip --version) >/dev/null 2>&1 \
    || (apt-get update && apt-get install -y --no-install-recommends python3 python3-pip && rm -rf /var/lib/apt/lists/*)

WORKDIR /opt/edgepart
COPY pyproject.toml README.md ./
COPY sdk sdk
COPY agent agent
COPY packager packager
COPY scripts scripts
COPY wheels wheels
RUN EDGEPART_ONNXRUNTIME="${ONNXRUNTIME}" PIP_BREAK_SYSTEM_PACKAGES=1 PIP_NO_CACHE_DIR=1 \
    scripts/install.sh python3 "${EXTRAS}" \
    && rm -rf wheels

ENTRYPOINT ["edgepart", "run"]
CMD ["--help"]
