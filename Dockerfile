# One image for every service; the command picks the service (see docker-compose.yml).
FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY services ./services
RUN pip install --no-cache-dir . && useradd --system --uid 10001 spine \
    && mkdir -p /data && chown spine /data
USER spine
ENV IMAGING_DATA_DIR=/data/imaging
EXPOSE 8001 11112
CMD ["python", "-m", "services.imaging", "serve"]
