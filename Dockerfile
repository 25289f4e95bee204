# The training image for Kubernetes (launchers/k8s/) and any container cluster:
#   docker build -t registry.example.com/aupretrain:0.1.0 .
# Built on the CUDA PyTorch image; DALI (CUDA 12 build) and DeepSpeed are installed at build time, the MTCNN
# weights and the config tree ship inside the package: nothing is downloaded when a pod starts.
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
# g++: DeepSpeed JIT-builds small ops on first use (CPU comm op); GNU tar: DALI's wds2idx; procps: pkill
# in the entrypoint (forwards pod termination to the ranks).
RUN apt-get update && apt-get install -y --no-install-recommends g++ tar procps ca-certificates \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/aupretrain
COPY pyproject.toml README.md ./
COPY aupretrain ./aupretrain
COPY launchers/k8s/entrypoint.sh /usr/local/bin/aupretrain-k8s-entrypoint
# The base image's torch satisfies the pinned range, so pip keeps it (no second torch download).
RUN pip install --extra-index-url https://pypi.nvidia.com . \
    && python -c "import aupretrain, deepspeed, nvidia.dali, mlflow; print('image ok')"

# Non-root (the manifests set runAsUser 1000 / fsGroup 1000); caches in a writable home.
RUN useradd --uid 1000 --create-home --shell /bin/bash aupretrain
USER 1000
ENV HOME=/home/aupretrain TORCH_EXTENSIONS_DIR=/home/aupretrain/.cache/torch_extensions
WORKDIR /home/aupretrain
ENTRYPOINT ["aupretrain-k8s-entrypoint"]
