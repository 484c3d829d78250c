# One image for every app service of docker-compose.yml: the producer and ERP workers, the
# webhook receiver and the Pleo API simulator differ only by their command.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A fixed, unprivileged uid; /data is where the ERP journal's named volume is mounted, created
# here and owned by that user, because a new named volume copies its owner from the image.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --no-create-home --shell /usr/sbin/nologin app \
    && mkdir /data \
    && chown app:app /data

# Only what the wheel is built from (README.md is the package's readme in pyproject.toml); the
# source tree is removed after the install, so the installed package is the only copy.
COPY pyproject.toml README.md /src/
COPY contract /src/contract
COPY pleo /src/pleo
COPY producer /src/producer
COPY consumers /src/consumers
COPY devtools /src/devtools
RUN pip install --no-cache-dir "/src[postgres]" \
    && rm -rf /src

USER app
WORKDIR /data

# No ENTRYPOINT: docker-compose.yml gives each service its own command.
CMD ["pleo-export", "--help"]
