# The streamlearn image: the worker and the replayer (`streamlearn worker|replay ...`). See docs/deploy.md.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first (CPU-only torch, both Kafka clients), in their own layer: editing the code does not reinstall
# them.
COPY pyproject.toml README.md ./
RUN mkdir shared services \
    && touch shared/__init__.py services/__init__.py \
    && pip install --extra-index-url https://download.pytorch.org/whl/cpu '.[confluent]' \
    && pip uninstall --yes streamlearn \
    && rm -rf shared services build

COPY shared ./shared
COPY services ./services
RUN pip install --no-deps . && rm -rf build

RUN useradd --create-home --uid 10001 streamlearn
USER 10001

EXPOSE 8000
CMD ["streamlearn", "--help"]
