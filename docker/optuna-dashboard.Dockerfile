# syntax=docker/dockerfile:1
# optuna-dashboard for a study's Optuna mirror (<study>/optuna.db, tune_app/optuna_store.py).
# Not in poetry.lock (the project does not import it): its own small image, with the lock's
# optuna so the dashboard reads the schema the study writes. Service optuna-dashboard in
# docker/docker-compose.yml; the build context is the repository root.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE} AS optuna-dashboard
ARG OPTUNA_DASHBOARD_VERSION=0.21.0
ARG OPTUNA_VERSION=5.0.0
ARG UID=1000
ARG GID=1000
ARG PIP_CERT
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
RUN --mount=type=cache,target=/root/.cache/pip \
    python3 -m venv /opt/dashboard \
 && /opt/dashboard/bin/pip install "optuna-dashboard==${OPTUNA_DASHBOARD_VERSION}" "optuna==${OPTUNA_VERSION}" \
 && /opt/dashboard/bin/pip check \
 && groupadd --gid "${GID}" tune \
 && useradd --uid "${UID}" --gid "${GID}" --create-home --shell /bin/bash tune
ENV PATH=/opt/dashboard/bin:$PATH PYTHONUNBUFFERED=1
WORKDIR /app
USER tune
EXPOSE 8080
# docker compose passes the storage URL: sqlite:////app/experiments/<study>/optuna.db
ENTRYPOINT ["optuna-dashboard", "--host", "0.0.0.0", "--port", "8080"]
