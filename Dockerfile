# Cinfer: serves the model repository mounted at /models on port 8000 (REST) and 8001 (gRPC).
# MALLOC_ARENA_MAX=2 keeps glibc from holding freed memory across model reloads
# (docs/performance.md, "Memory over load / unload cycles").
#   docker build -t cinfer .
#   docker run -p 8000:8000 -p 8001:8001 -v $PWD/repository:/models -v cinfer-data:/data --name cinfer cinfer
#   docker exec cinfer cinfer tokens create --name admin --scope admin,read,infer
# API tokens are on; their database lives in the /data volume.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    MALLOC_ARENA_MAX=2 \
    CINFER_SERVER__HOST=0.0.0.0 \
    CINFER_SERVER__PORT=8000 \
    CINFER_REPOSITORY__PATH=/models \
    CINFER_AUTH__ENABLED=true \
    CINFER_AUTH__DATABASE=/data/cinfer.db

WORKDIR /app
COPY pyproject.toml README.md ./
COPY server ./server
RUN pip install . && useradd --system --uid 10001 cinfer \
    && mkdir /data && chown cinfer /data

USER cinfer
VOLUME ["/models", "/data"]
EXPOSE 8000 8001

HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD python -c "import urllib.request, sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=2).status == 200 else 1)"

ENTRYPOINT ["cinfer", "serve"]
