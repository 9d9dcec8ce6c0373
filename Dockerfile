# nodecache: node-local DNS cache agent.
#
# Build from the repository root:   docker build -t nodecache:0.1.0 .
#
# The base is pinned by tag. For reproducible builds pin its digest as well,
# e.g. FROM python:3.11-slim-bookworm@sha256:<digest> (`docker buildx
# imagetools inspect python:3.11-slim-bookworm` prints it), and let a bot
# such as Renovate bump it.
FROM python:3.11-slim-bookworm

# iptables: both iptables-legacy and iptables-nft (bookworm ships 1.8.9, past
# the NOTRACK and `iptables -C` bugs of older releases); the agent picks the
# one the node's kubelet and kube-proxy use. nftables: `nft`, for the native
# backend. iproute2: `ip`, to inspect the interface from inside the pod.
RUN apt-get update \
    && apt-get install -y --no-install-recommends iptables nftables iproute2 \
    && rm -rf /var/lib/apt/lists/*

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Dependencies come from the package's own metadata (setup.cfg), nothing else.
# README.md is left out on purpose: it only feeds the long description, which
# setuptools leaves empty without it, and a docs edit then does not redo this layer.
# The template goes along as package data (share/nodecache/Corefile.nodelocal).
WORKDIR /src
COPY pyproject.toml setup.cfg Corefile.nodelocal ./
COPY nodecache ./nodecache
RUN pip install --no-cache-dir . \
    && rm -rf /src
WORKDIR /

# Unprivileged by default: enough for `nodecache check-config`, `--help` and
# tests on high ports. On a node the agent needs NET_ADMIN (dummy interface,
# addresses, firewall rules), NET_BIND_SERVICE (port 53) and, for
# iptables-legacy, NET_RAW. Kubernetes gives a non-root container no
# capabilities at all (no ambient set), and file capabilities on the Python
# interpreter would only work with privilege escalation allowed and would
# hand those capabilities to any Python program in the image. So the
# DaemonSet runs this image as UID 0 with every other capability dropped and
# allowPrivilegeEscalation: false (manifests/base/daemonset.yaml).
RUN useradd --system --uid 65532 --user-group --no-create-home --shell /usr/sbin/nologin nodecache
USER 65532:65532

# node-cache-compatible arguments follow, e.g.
#   -localip 169.254.20.10,10.96.0.10 -conf /etc/Corefile -upstreamsvc kube-dns-upstream
ENTRYPOINT ["nodecache", "run"]
