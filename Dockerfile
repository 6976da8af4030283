# sealgate: TLS-terminating, envelope-encrypting S3 proxy.
FROM python:3.12-slim

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
