# sealgate: TLS-terminating, envelope-encrypting S3 proxy.
# Pinned by digest (the multi-arch index of python:3.12-slim): a rebuild gets the same base.
# To update: docker pull python:3.12-slim && docker images --digests python
FROM python:3.12-slim@sha256:78387bc3881b8273120a12ebe6c1ab22b018ccc2c9adf565ae1ac9b536e184ea

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY proxy ./proxy
RUN pip install '.[fast]' \
 && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin sealgate \
 && mkdir -p /etc/sealgate /var/lib/sealgate \
 && chown sealgate /var/lib/sealgate

USER sealgate
EXPOSE 8443
# The config's own listener (whatever port it names); /-/healthz cannot collide with a bucket.
ENV SEALGATE_CONFIG=/etc/sealgate/sealgate.toml
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 CMD ["sealgate", "health"]
ENTRYPOINT ["sealgate"]
CMD ["serve"]
