# attnserve: the HTTP server with the bundled models (en-de translator, en-lm generator).
#
#   docker build -t attnserve .                                  # CPU, torch from the CPU wheel index
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 -t attnserve:cuda \
#       --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04 .   # GPU hosts (see README)
#   docker run --rm -p 8000:8000 attnserve
#
# A torch wheel placed in deploy/wheels/ (torch-2.13.0-*.whl) is used instead of the index:
# that is how machines without the index build it. Configure with ATTNSERVE_* variables; mount
# other models and pass --model ID=PATH to serve them.

ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/venv
# torch first and alone, from a local wheel or the chosen index: the CPU image never pulls CUDA.
COPY deploy/wheels/ /tmp/wheels/
RUN if ls /tmp/wheels/torch-*.whl >/dev/null 2>&1; then \
        /opt/venv/bin/pip install /tmp/wheels/torch-*.whl; \
    else \
        /opt/venv/bin/pip install torch==2.13.0 --index-url "${TORCH_INDEX}"; \
    fi
COPY pyproject.toml README.md /src/
COPY model /src/model
COPY service /src/service
RUN /opt/venv/bin/pip install /src \
    && /opt/venv/bin/python -c "import torch; assert torch.__version__.startswith('2.13.0')"
# The CPU decode-attention kernel (model/paged_kernel.py), built here next to its source with a C
# compiler the runtime image does not carry. Without one (no Debian mirror), the image still
# works: decode attention then gathers the KV cache (GET /info: "decode_attention"). The build
# stage is thrown away, so its compiler's version is not pinned and its apt lists are not cleaned.
# hadolint ignore=DL3008,DL3009
RUN (apt-get update -qq && apt-get install -y -qq --no-install-recommends gcc libc6-dev) \
        >/dev/null 2>&1 \
    && /opt/venv/bin/python -m model.paged_kernel \
    || echo "no C compiler: the image's decode attention gathers the KV cache"

FROM ${BASE_IMAGE} AS runtime
RUN useradd --create-home --uid 10001 attnserve
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    ATTNSERVE_HOST=0.0.0.0 \
    ATTNSERVE_PORT=8000
USER 10001
WORKDIR /home/attnserve
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ.get(\"ATTNSERVE_PORT\", \"8000\")}/ready', timeout=2)"]
# One process, one uvicorn worker, one engine per model: scale out with replicas.
ENTRYPOINT ["attnserve", "serve"]
