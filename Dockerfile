# xmppd container image (docs/admin-guide.md, "Installing as a service").
#   docker build -t xmppd .
#   docker compose up -d          # with PostgreSQL: compose.yaml
#   docker compose -f config/compose.cluster.yaml up -d   # three nodes, Redis, PostgreSQL
# The image runs as an unprivileged user, keeps its state in /var/lib/xmppd (a
# volume) and reads /etc/xmppd/xmppd.toml (mount your own; the one built in listens
# on every address and uses SQLite in the volume).
FROM python:3.12-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY xmppd ./xmppd
COPY modules ./modules
COPY hooks ./hooks
RUN python -m venv /opt/xmppd \
 && /opt/xmppd/bin/pip install --upgrade pip \
 && /opt/xmppd/bin/pip install '.[events]'

FROM python:3.12-slim-bookworm
COPY --from=build /opt/xmppd /opt/xmppd
# A fixed numeric user (10000) so that orchestrators can check it is not root
# (Kubernetes runAsNonRoot) and give volumes to its group (fsGroup).
# /var/lib/xmppd-shared: what the nodes of config/compose.cluster.yaml share.
RUN groupadd --system --gid 10000 xmppd \
 && useradd --system --uid 10000 --gid xmppd --home-dir /var/lib/xmppd --shell /usr/sbin/nologin xmppd \
 && install -d -o xmppd -g xmppd -m 0700 /var/lib/xmppd /var/lib/xmppd-shared \
 && install -d -m 0755 /etc/xmppd \
 && printf '%s\n' \
    '[server]' \
    'data_dir = "/var/lib/xmppd"' \
    '[[listeners]]' \
    'port = 5222' \
    'tls = "starttls"' \
    '[[listeners]]' \
    'port = 5223' \
    'tls = "direct"' \
    '[[listeners]]' \
    'kind = "http"' \
    'address = "0.0.0.0"' \
    > /etc/xmppd/xmppd.toml
ENV XMPPD_CONFIG=/etc/xmppd/xmppd.toml PATH=/opt/xmppd/bin:$PATH PYTHONUNBUFFERED=1
USER 10000:10000
WORKDIR /var/lib/xmppd
VOLUME ["/var/lib/xmppd"]
EXPOSE 5222 5223 5269 5280
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:5280/health', timeout=4).status == 200 else 1)"
STOPSIGNAL SIGTERM
CMD ["xmppd", "run"]
