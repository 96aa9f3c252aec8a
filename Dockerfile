# syntax=docker/dockerfile:1
# Two images from the one pyproject.toml:
#   docker build --target operator -t ghcr.io/llmtraining/operator:0.1.0 .   # the Kopf operator (no PyTorch)
#   docker build --target trainer  -t ghcr.io/llmtraining/trainer:0.1.0 .    # the worker pods (PyTorch CUDA, DeepSpeed)
#   docker build --target trainer-cpu ...  # the trainer with DeepSpeed's CPU ops compiled in (accelerator: cpu)
#   docker build --target deps ...         # dependencies only (torch, DeepSpeed, transformers; not our package):
#                                          # an image for your own program (docs/programs.md); deps-cpu: for CPU
#   docker build --target examples-cpu ... # deps-cpu plus examples/programs/ at /workspace/programs
# The trainer images are the deps stages plus one thin layer (the project wheel): hack/images.sh builds the deps
# stage once per content of its dependency spec and every source change only the wheel on top of it
# (--build-context deps-cpu=container-image://<cached deps image>; BuildKit caches the stage the same way).
# The base images are build arguments: hack/images.sh builds all three with buildah from a Debian rootfs
# (PYTHON_IMAGE = CUDA_IMAGE = a debootstrap image whose PATH starts with a venv) for the real-node tests.
# tests/unit/test_packaging.py lints this file (hadolint) and replays its installs against the test venv.

ARG PYTHON_VERSION=3.12
# CUDA of the base image = CUDA of the PyTorch build (nvcc JIT-builds must match torch.version.cuda).
ARG CUDA_IMAGE=nvidia/cuda:13.0.0-devel-ubuntu24.04
# Base of the wheel and operator stages: any image with python and pip on PATH.
ARG PYTHON_IMAGE=python:${PYTHON_VERSION}-slim

# ------------------------------------------------------------------------------------------------ wheel --
# The project wheel (llm_operator + llm_trainer + both console scripts), built once for both images,
# and the operator's requirements derived from pyproject.toml.
FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator/ operator/
COPY trainer/ trainer/
COPY hack/operator-requirements.py hack/
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
 && python hack/operator-requirements.py pyproject.toml > /wheels/operator-requirements.txt

# --------------------------------------------------------------------------------------------- operator --
FROM ${PYTHON_IMAGE} AS operator
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp
# The wheel without its dependencies (which include torch and deepspeed), then only what the operator
# imports. pip compiles the bytecode at install time, so nothing is written under a read-only root.
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-deps /wheels/llm_training_operator-*.whl \
 && pip install --no-cache-dir -r /wheels/operator-requirements.txt \
 && groupadd --gid 65532 nonroot \
 && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin nonroot
USER 65532:65532
EXPOSE 8080 8081
ENTRYPOINT ["llm-operator"]
CMD ["run"]

# ---------------------------------------------------------------------------------------- deps-requirements --
# What the dependency-only stage installs, derived from pyproject.toml alone (hack/deps-requirements.py), so that
# the stage below is cached by the content of the dependency spec and not of the sources.
FROM ${PYTHON_IMAGE} AS deps-requirements
WORKDIR /src
COPY pyproject.toml ./
COPY hack/deps-requirements.py hack/
RUN mkdir /requirements && python hack/deps-requirements.py pyproject.toml > /requirements/deps.txt

# ------------------------------------------------------------------------------------------------- deps --
# Python, torch, DeepSpeed, transformers, accelerate and the OS packages the pods use; NOT llm-training-operator.
# The image a user's program runs in (the operator injects its launcher) and the base of the trainer image.
# The CUDA devel image: DeepSpeed JIT-builds its ops (FusedAdam, ...) with nvcc, g++ and ninja at run time.
FROM ${CUDA_IMAGE} AS deps
ARG TORCH_VERSION=2.11.0
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:${PATH} \
    HOME=/home/llm \
    TORCH_EXTENSIONS_DIR=/home/llm/.cache/torch_extensions \
    TRITON_CACHE_DIR=/home/llm/.cache/triton
# python3-dev: Python.h for DeepSpeed's JIT builds; openssh-server (/usr/sbin/sshd), openssh-client (ssh)
# and pdsh: the ssh launcher mode (`llm-train launch --sshd`, `deepspeed --launcher=pdsh`).
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      python3 python3-venv python3-dev \
      g++ ninja-build \
      openssh-server openssh-client pdsh \
      ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /run/sshd \
 && python3 -m venv /opt/venv
# PyPI's Linux PyTorch wheel is the CUDA 13.0 build, matching the base image; then the trainer extra's
# requirements and the libraries examples/programs import.
RUN --mount=type=bind,from=deps-requirements,source=/requirements,target=/requirements \
    pip install --no-cache-dir "torch==${TORCH_VERSION}" \
 && pip install --no-cache-dir -r /requirements/deps.txt
# uid 1000 `llm`, home /home/llm: what the worker pods run as (ssh needs a passwd entry for the uid).
# The Ubuntu base image ships its own uid 1000 user (`ubuntu`): remove it first.
RUN if id -u ubuntu >/dev/null 2>&1; then userdel --remove ubuntu; fi \
 && useradd --uid 1000 --user-group --create-home --home-dir /home/llm --shell /bin/bash llm \
 && mkdir -p /home/llm/.cache/torch_extensions /home/llm/.cache/triton \
 && chown -R llm:llm /home/llm
USER 1000:1000
WORKDIR /home/llm
EXPOSE 2222 29500 29600
CMD ["python3"]

# --------------------------------------------------------------------------------------------- deps-cpu --
# For `accelerator: cpu` jobs: DeepSpeed reinstalled with its CPU shared-memory allreduce op compiled in
# (DS_BUILD_SHM_COMM), so a pod's first step does not wait minutes for the op's JIT build; the pods'
# TORCH_EXTENSIONS_DIR is an emptyDir, so a JIT cache in the image would not be seen. Compiled for this
# CPU's instruction set (DeepSpeed's CPU builders use -march=native): build it where it runs.
FROM deps AS deps-cpu
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
USER 0:0
ENV DS_ACCELERATOR=cpu
RUN pip install --no-cache-dir setuptools==80.9.0 wheel==0.45.1 \
 && DS_BUILD_OPS=0 DS_BUILD_SHM_COMM=1 pip install --no-cache-dir --no-build-isolation --no-deps --force-reinstall \
      "deepspeed==$(pip show deepspeed | sed -n 's/^Version: //p')" \
 && python -c "from deepspeed.git_version_info import installed_ops as o; assert o['deepspeed_shm_comm'], o"
USER 1000:1000

# ---------------------------------------------------------------------------------------------- trainer --
# The deps stage plus the project wheel: pip finds every requirement of the trainer extra installed already.
FROM deps AS trainer
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
USER 0:0
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    pip install --no-cache-dir "$(echo /wheels/llm_training_operator-*.whl)[trainer]"
USER 1000:1000
# Worker pods set their own command (`llm-train launch ... -- deepspeed ...`).
CMD ["llm-train", "launch", "--help"]

# ------------------------------------------------------------------------------------------ trainer-cpu --
# The same wheel on deps-cpu (DeepSpeed with its CPU op): the image of `accelerator: cpu` jobs.
FROM deps-cpu AS trainer-cpu
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
USER 0:0
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    pip install --no-cache-dir "$(echo /wheels/llm_training_operator-*.whl)[trainer]"
USER 1000:1000
CMD ["llm-train", "launch", "--help"]

# ----------------------------------------------------------------------------------------- examples-cpu --
# deps-cpu plus the example programs (examples/program-*.yaml: workingDir /workspace): a user's image, without
# our package, for the real-node tests of spec.program.
FROM deps-cpu AS examples-cpu
COPY examples/programs/ /workspace/programs/
WORKDIR /workspace
