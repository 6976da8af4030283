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
# /-/healthz cannot collide with a bucket: bucket names start with a letter or a digit.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD python -c "import ssl,urllib.request; urllib.request.urlopen('https://127.0.0.1:8443/-/healthz', context=ssl._create_unverified_context(), timeout=2)" || exit 1
ENTRYPOINT ["sealgate"]
CMD ["serve", "--config", "/etc/sealgate/sealgate.toml"]
