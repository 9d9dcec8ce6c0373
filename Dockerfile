# nodecache: node-local DNS cache agent.
#
# Build from the repository root (docs/deploy.md, "Building the image"):
#
#   podman build -t nodecache:0.1.0 .        # or: docker build -t nodecache:0.1.0 .
#
# Behind a TLS-intercepting proxy, hand pip its CA bundle for the build only:
#   --secret id=pip-ca,src=/etc/ssl/certs/ca-certificates.crt
#
# The base is Debian's own slim image and Debian's python3 (security updates
# from Debian, the same iptables/nftables as the node tools of most distros),
# not the python:* images, which add a second, self-built interpreter. For
# reproducible builds pin the base's digest as well, e.g.
# FROM debian:bookworm-slim@sha256:<digest>, and let a bot such as Renovate bump it.
# Python dependencies are pinned with hashes in requirements/ (scripts/lock-image-deps).

# What the agent runs on; the build stage adds python3-venv on top, so python3
# is downloaded once.
FROM debian:bookworm-slim AS runtime
# python3: the interpreter the venv below is made with (same path). iptables:
# both iptables-legacy and iptables-nft (1.8.9, past the NOTRACK and
# `iptables -C` bugs of older releases); the agent picks the one the node's
# kubelet and kube-proxy use. nftables: `nft`, for the native backend.
# iproute2: `ip`, to inspect the interface from inside the pod.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 iptables nftables iproute2 \
    && apt-get clean && rm -rf /var/lib/apt/lists/*

FROM runtime AS build
# gcc, libc6-dev and python3-dev (Python.h): mypyc compiles the hot modules to C
# extensions (setup.py). They stay in this stage: the runtime gets the built
# extensions only.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-venv gcc libc6-dev python3-dev \
    && apt-get clean && rm -rf /var/lib/apt/lists/*
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
# Only the pinned files, hash-checked: the build tools in a venv of their own,
# the runtime dependencies in /opt/nodecache (no pip, no setuptools in it).
COPY requirements/ /src/requirements/
RUN --mount=type=secret,id=pip-ca \
    if [ -s /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi \
    && python3 -m venv /opt/build \
    && /opt/build/bin/pip install --require-hashes -r /src/requirements/build.txt \
    && python3 -m venv --without-pip /opt/nodecache \
    && /opt/build/bin/pip --python /opt/nodecache/bin/python install --require-hashes \
        --no-deps -r /src/requirements/image.txt
# The package itself, built offline from the copied sources, its hot modules
# compiled: NODECACHE_MYPYC=1 fails the build rather than ship pure Python
# (--build-arg NODECACHE_MYPYC=0 makes a pure image). README.md is left out on
# purpose: it only feeds the long description, and a docs edit then does not
# redo this layer. The template goes along as package data
# (share/nodecache/Corefile.nodelocal).
COPY pyproject.toml setup.cfg setup.py Corefile.nodelocal /src/
COPY nodecache /src/nodecache
ARG NODECACHE_MYPYC=1
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation --no-index -w /src/dist /src \
    && /opt/build/bin/pip --python /opt/nodecache/bin/python install --no-deps --no-index \
        /src/dist/nodecache-*.whl

FROM runtime
# Only the finished venv comes over: no sources, build tools, compiler or wheels.
COPY --from=build /opt/nodecache /opt/nodecache
# Bytecode was compiled at install time; the root filesystem may be read-only.
ENV PATH=/opt/nodecache/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# Root by default, as node-cache's image: its manifests (the add-on's
# nodelocaldns.yaml, kubespray, kops, Helm charts) set no user and add only
# NET_ADMIN, and a non-root process in a pod has no effective capabilities at
# all (Kubernetes sets no ambient ones), so it could bind neither port 53 nor
# write a rule. Our own DaemonSet (manifests/base/daemonset.yaml) says
# runAsUser: 0 explicitly, drops every capability but NET_ADMIN,
# NET_BIND_SERVICE and NET_RAW, and forbids privilege escalation. An
# unprivileged user (and group) with matching IDs is there for
# `check-config` and other offline uses: --user nodecache.
RUN groupadd --system --gid 65532 nodecache \
    && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin nodecache

# Either a command (`IMAGE check-config FILE`, `IMAGE run --localip ...`) or,
# as node-cache's image takes them, bare flags
# (`-localip 169.254.20.10,10.96.0.10 -conf /etc/Corefile -upstreamsvc kube-dns-upstream`),
# which mean `run`.
ENTRYPOINT ["nodecache"]
