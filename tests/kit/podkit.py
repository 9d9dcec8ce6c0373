"""A DaemonSet's pod as the kubelet would run it, with podman, on a test "node".

:func:`pod_from_manifest` takes a DaemonSet (parsed YAML) and returns its one
container with the pod's volumes; :func:`podman_args` turns that into a
``podman run`` command line the way the kubelet and containerd would set the
container up:

* ``hostNetwork: true``: the container joins the node's network namespace
  (a namespace the test made), with its own PID, mount and IPC namespaces;
* the user: ``runAsUser``/``runAsGroup`` if given, else the image's;
* capabilities: containerd's default set (:data:`RUNTIME_DEFAULT_CAPS`, which
  has NET_RAW; podman's own default does not), minus ``drop``, plus ``add``;
  ``privileged: true`` gives all of them;
* ``allowPrivilegeEscalation: false``: no_new_privs; ``readOnlyRootFilesystem``;
* volumes: every ``volumeMounts`` entry is bound from a directory or file the
  test provides for that volume name (a ConfigMap's files, a hostPath moved
  under the test's directory); ``readOnly`` is kept;
* ``dnsPolicy: Default``: the node's resolv.conf, which the test names;
* ``resources.limits.memory``; the env the kubelet would add (service links).

Probes are not run by podman: :func:`probe` does what the kubelet's HTTP
probe does, from the node's namespace.
"""
from __future__ import annotations

import http.client
import pathlib
from dataclasses import dataclass, field
from typing import Any

from tests.kit import netns

Obj = dict[str, Any]

#: containerd's (and so the kubelet's) default capabilities for a container.
RUNTIME_DEFAULT_CAPS = ("CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID",
                        "SETUID", "SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL",
                        "AUDIT_WRITE")


@dataclass
class PodSpec:
    """What a DaemonSet says about its pod's one container."""

    container: Obj
    volumes: dict[str, Obj]
    #: terminationGracePeriodSeconds (the kubelet's default is 30).
    grace: int = 30
    host_network: bool = False
    #: Other containers of the pod, by name (a guard beside the agent).
    others: dict[str, Obj] = field(default_factory=dict)


def pod_from_manifest(objs: list[Obj], container: str | None = None) -> PodSpec:
    """The DaemonSet in ``objs`` (there must be one) and its container ``container``
    (default: the first)."""
    (ds,) = [o for o in objs if o.get("kind") == "DaemonSet"]
    spec = ds["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in spec["containers"]}
    name = container or spec["containers"][0]["name"]
    return PodSpec(container=containers.pop(name),
                   volumes={v["name"]: v for v in spec.get("volumes", [])},
                   grace=int(spec.get("terminationGracePeriodSeconds", 30)),
                   host_network=bool(spec.get("hostNetwork")), others=containers)


def capabilities(security: Obj) -> list[str]:
    """The container's capability set, as containerd computes it."""
    if security.get("privileged"):
        return ["ALL"]
    caps = security.get("capabilities") or {}
    drop = {c.upper() for c in caps.get("drop", [])}
    keep = [] if "ALL" in drop else [c for c in RUNTIME_DEFAULT_CAPS if c not in drop]
    return keep + [c.upper() for c in caps.get("add", []) if c.upper() not in keep]


def podman_args(container: Obj, *, name: str, node_ns: str,
                sources: dict[str, pathlib.Path], resolv_conf: pathlib.Path,
                env: dict[str, str]) -> list[str]:
    """``podman run`` options (up to, not including, the image) for ``container``.

    :param sources: the host path behind each volume name the container mounts.
    :param resolv_conf: the node's resolv.conf (``dnsPolicy: Default``).
    :param env: what the kubelet adds (service-link variables).
    """
    args = ["run", "--detach", "--name", name, "--network", f"ns:{netns.NETNS_DIR / node_ns}",
            "--pull=never", "--log-driver=k8s-file",
            "-v", f"{resolv_conf}:/etc/resolv.conf:ro"]
    security = container.get("securityContext") or {}
    if "runAsUser" in security:
        args += ["--user", f"{security['runAsUser']}:{security.get('runAsGroup', 0)}"]
    caps = capabilities(security)
    if caps == ["ALL"]:
        args.append("--privileged")
    else:
        args += ["--cap-drop", "ALL"] + [f"--cap-add={c}" for c in caps]
    if security.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    if security.get("readOnlyRootFilesystem"):
        args += ["--read-only", "--read-only-tmpfs=false"]
    for mount in container.get("volumeMounts", []):
        source = sources[mount["name"]]
        if "subPath" in mount:
            source = source / mount["subPath"]
        mode = ":ro" if mount.get("readOnly") else ""
        args += ["-v", f"{source}:{mount['mountPath']}{mode}"]
    for item in container.get("env", []):
        if "value" in item:
            args += ["--env", f"{item['name']}={item['value']}"]
    for key, value in env.items():
        args += ["--env", f"{key}={value}"]
    limit = (container.get("resources") or {}).get("limits", {}).get("memory")
    if limit:
        args += ["--memory", str(limit).replace("Mi", "m").replace("Gi", "g")]
    if container.get("command"):
        args += ["--entrypoint", container["command"][0]]
    return args


def command(container: Obj) -> list[str]:
    """What follows the image: the rest of ``command`` (if set), then ``args``."""
    return [*container.get("command", [])[1:], *(str(a) for a in container.get("args", []))]


def probe(node_ns: str, probe_spec: Obj, timeout: float = 3.0) -> int | None:
    """The kubelet's HTTP GET probe, from the node's namespace: the status, or None."""
    get = probe_spec["httpGet"]

    def fetch() -> int | None:
        try:
            conn = http.client.HTTPConnection(get["host"], int(get["port"]), timeout=timeout)
            conn.request("GET", get.get("path", "/"))
            status = conn.getresponse().status
            conn.close()
            return status
        except OSError:
            return None

    return netns.call(node_ns, fetch)
