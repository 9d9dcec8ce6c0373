"""The command line as an operator meets it: one-line errors, check-config, --version."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from nodecache import __version__


def nodecache(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nodecache", *args], capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("args, needle", [
    (["run", "--bogus"], "No such option '--bogus'"),
    (["run", "--syncinterval", "abc"], "'--syncinterval'"),
    (["run", "--firewall", "ipchains"], "'--firewall'"),
    (["run", "-setupiptables=maybe"], "-setupiptables"),
    (["check-config", "/nonexistent/Corefile"], "/nonexistent/Corefile"),
    (["frobnicate"], "No such command"),
])
def test_bad_input_is_one_line_and_nonzero(args: list[str], needle: str) -> None:
    result = nodecache(*args)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_check_config_names_file_line_and_column(tmp_path: Path) -> None:
    corefile = tmp_path / "Corefile"
    corefile.write_text(".:53 {\n    cache {\n        success lots\n    }\n}\n")
    result = nodecache("check-config", str(corefile))
    assert result.returncode == 1
    assert result.stderr.startswith(f"nodecache: {corefile}:3:")
    assert "lots" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_check_config_prints_the_effective_configuration(tmp_path: Path) -> None:
    corefile = tmp_path / "Corefile"
    corefile.write_text("cluster.local:53 {\n    bind 169.254.20.10\n    cache 30\n"
                        "    forward . 10.96.0.10 {\n        force_tcp\n    }\n}\n")
    result = nodecache("check-config", str(corefile))
    assert result.returncode == 0, result.stderr
    for needle in ("169.254.20.10:53", "cluster.local.", "10.96.0.10:53", "over TCP always"):
        assert needle in result.stdout


def test_version_and_module_entry_point() -> None:
    result = nodecache("--version")
    assert result.returncode == 0 and __version__ in result.stdout


def test_nodecache_style_args_are_accepted(tmp_path: Path) -> None:
    corefile = tmp_path / "Corefile"
    corefile.write_text(".:5300 {\n    bind 127.0.0.1\n    forward . 127.0.0.1:5301\n"
                        "    health 127.0.0.1:8099\n}\n")
    result = nodecache("run", "-localip", "169.254.20.10,fd00::10", "-conf", str(corefile),
                       "-setupinterface=false", "-setupiptables=false", "-skipteardown",
                       "-syncinterval", "30", "-health-port", "8099", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "127.0.0.1:5300" in result.stdout


def test_health_port_flag_must_agree_with_corefile(tmp_path: Path) -> None:
    corefile = tmp_path / "Corefile"
    corefile.write_text(".:5300 {\n    forward . 127.0.0.1:5301\n    health :8099\n}\n")
    result = nodecache("run", "-conf", str(corefile), "-health-port", "8080", "--dry-run")
    assert result.returncode == 2
    assert "--health-port" in result.stderr and "8099" in result.stderr


def test_demo_serves_the_sample_cluster_through_the_cache() -> None:
    """The README's run command: the production agent in front of the sample cluster DNS."""
    import signal
    import socket
    import time

    import dns.exception
    import dns.message
    import dns.query

    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    proc = subprocess.Popen([sys.executable, "-m", "nodecache", "demo", "--port", str(ports[0]),
                             "--upstream-port", str(ports[1])], stderr=subprocess.PIPE, text=True)
    try:
        answer = None
        deadline = time.monotonic() + 20
        while answer is None and time.monotonic() < deadline:
            try:
                answer = dns.query.udp(dns.message.make_query(
                    "kubernetes.default.svc.cluster.local.", "A"), "127.0.0.1", port=ports[0],
                    timeout=0.5)
            except (OSError, dns.exception.Timeout):
                time.sleep(0.2)
        assert answer is not None and answer.answer[0][0].address == "10.96.0.1"
        reverse = dns.query.tcp(dns.message.make_query("10.0.96.10.in-addr.arpa.", "PTR"),
                                "127.0.0.1", port=ports[0], timeout=2)
        assert str(reverse.answer[0][0].target) == "kube-dns.kube-system.svc.cluster.local."
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert f"dig @127.0.0.1 -p {ports[0]} kubernetes.default.svc.cluster.local" in err


def test_run_with_an_unknown_interface_fails_with_its_position(tmp_path: Path) -> None:
    corefile = tmp_path / "Corefile"
    corefile.write_text(".:5300 {\n    bind nosuch0 {\n        except lo\n    }\n}\n")
    assert nodecache("check-config", str(corefile)).returncode == 0  # resolved on the node
    result = nodecache("run", "--conf", str(corefile), "--localip", "",
                       "--pidfile", str(tmp_path / "pid"))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"nodecache: {corefile}:2:5: bind: no interface named 'nosuch0' on this host"
        " (expected an IP address or the name of an interface)")


def test_bare_flags_mean_run() -> None:
    # As node-cache's image is given its arguments: no command, only flags.
    from nodecache.cli import command_argv
    assert command_argv(["-localip", "169.254.20.10"]) == ["run", "-localip", "169.254.20.10"]
    assert command_argv(["--conf=/etc/Corefile"]) == ["run", "--conf=/etc/Corefile"]
    for unchanged in (["check-config", "/etc/Corefile"], ["--help"], ["-h"], ["--version"], []):
        assert command_argv(unchanged) == unchanged


def test_the_supervisor_gets_the_checked_options(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # With host networking, `run` checks everything, then hands the worker's command
    # line (the serving module and the options as checked) to the supervisor it becomes;
    # nothing is touched before.
    from nodecache import cli, supervisor
    from nodecache.serve import ServeOptions
    conf = tmp_path / "Corefile"
    conf.write_text(".:53 {\n    health 169.254.20.10:8080\n    forward . 127.0.0.1\n}\n")
    handed: list[list[str]] = []

    def become(args: list[str]) -> None:
        handed.append(list(args))
        raise SystemExit(0)

    monkeypatch.setattr(supervisor, "become_supervisor", become)
    argv = ["-localip", "169.254.20.10", "-conf", str(conf), "-setupiptables=false"]
    with pytest.raises(SystemExit):
        cli.main(argv)
    [worker] = handed
    assert worker[:3] == [sys.executable, "-m", "nodecache.serve"] and worker[4:] == ["--worker"]
    options = ServeOptions.from_json(worker[3])
    assert (options.local_ips, options.conf, options.setupinterface, options.setupiptables,
            options.health_port) == (["169.254.20.10"], str(conf), True, False, 8080)
    assert options.serving_lock == "/run/nodecache/serving.lock"
