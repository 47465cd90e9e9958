# The one image behind web, worker, beat, flower and migrate (docker-compose.yml).
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY controlplane ./controlplane
COPY reconcilers ./reconcilers
COPY manage.py ./
# Editable: the code runs from /app (BASE_DIR), templates and all; a wheel would need package data.
RUN pip install -e . && DEBUG=1 python manage.py collectstatic --no-input
RUN useradd --system --uid 1000 controlplane && mkdir -p /app/var && chown controlplane /app/var
USER controlplane
EXPOSE 8000 5555 9808
