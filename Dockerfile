# One image for the three services and the analysis workers; the command picks the role:
#   python -m services.imaging serve | worker | backfill
#   python -m services.outcomes serve
#   python -m services.gateway serve
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY services ./services
RUN pip install . && useradd --system --uid 10001 --home /data spine \
    && mkdir -p /data && chown spine /data \
    && python -m services.gateway install-viewer --dir /app/ohif
ENV GATEWAY_VIEWER_DIR=/app/ohif
USER spine
WORKDIR /data
EXPOSE 8000 8001 8002 11112
CMD ["python", "-m", "services.gateway", "serve"]
