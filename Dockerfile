# clusterdns image: `docker build -t clusterdns:0.1.0 .` (k8s/deployment.yaml runs it)
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY clusterdns ./clusterdns

# Port 53 as a non-root user: the file capability on the interpreter (kept under
# allowPrivilegeEscalation: false because the container also adds NET_BIND_SERVICE).
RUN pip install . \
 && apt-get update \
 && apt-get install -y --no-install-recommends libcap2-bin \
 && setcap cap_net_bind_service=+ep "$(readlink -f /usr/local/bin/python3)" \
 && apt-get purge -y --auto-remove libcap2-bin \
 && rm -rf /var/lib/apt/lists/* /src \
 && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin clusterdns

WORKDIR /
# numeric, so the kubelet can verify runAsNonRoot
USER 10001:10001
EXPOSE 53/udp 53/tcp 8080/tcp 8181/tcp 9153/tcp
ENTRYPOINT ["clusterdns"]
CMD ["serve"]
