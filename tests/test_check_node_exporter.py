"""`--check`'s node_exporter lines (collector/check_node_exporter.py): the real node_exporter of Debian's package on
loopback, shown in the host tree's /proc, and stand-in HTTP servers that misbehave (silent, endless, slow)."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

from tests.conftest import Host, Result
from tests.support.promstack import LOOPBACK, Processes, free_port, processes, start_node_exporter
from tests.support.simhost import Gpu, scenario

FLAG = "--collector.textfile.directory"
DOCUMENT = scenario([Gpu(0)])
SERVES = "serves the collector's series (gpu_proc_collector_up) with node_textfile_scrape_error 0"


def lines(result: Result) -> list[str]:
    return result.stdout.splitlines()


def about_node_exporter(result: Result) -> list[str]:
    """The lines the node_exporter part printed: after the textfile directory's, before the state directory's."""
    out = lines(result)
    start = next(i for i, line in enumerate(out) if "textfile directory " in line and " is writable" in line) + 1
    end = next(i for i, line in enumerate(out) if line.split(": ", 1)[1].startswith("state directory"))
    return out[start:end]


@contextmanager
def real_node_exporter(host: Host, directory: Optional[Path],
                       collectors: Sequence[str] = ("--collector.textfile",)) -> Iterator[tuple[Processes, str, int]]:
    """Debian's node_exporter on a loopback port with only these collectors, reading directory, shown in the host
    tree's /proc; yields its processes, host:port and PID."""
    with processes(host.base / "logs") as procs:
        address = start_node_exporter(procs, directory, collectors=collectors)
        pid = procs.procs[-1][0].pid
        host.tree.show_real_process(pid)
        yield procs, address, pid


def fake_node_exporter(host: Host, address: str, *args: str, pid: int = 900) -> None:
    """A node_exporter process as /proc shows it (nothing runs), whose --web.listen-address is address."""
    host.tree.add_process(pid, "node_exporter", cmdline=["/usr/local/bin/node_exporter", f"{FLAG}={host.textfile_dir}",
                                                         f"--web.listen-address={address}", *args])


def write_collectors_file(host: Host) -> None:
    result = host.run(DOCUMENT)
    assert result.returncode == 0, result.stderr
    assert result.value("gpu_proc_collector_up") == 1


# ---- the real node_exporter ----


@pytest.mark.slow
def test_the_real_node_exporter_reading_the_textfile_directory_passes(host: Host) -> None:
    """node_exporter is asked directly, whatever proxy the environment names (one that refuses here)."""
    write_collectors_file(host)
    proxy = f"http://{LOOPBACK}:{free_port()}"
    with real_node_exporter(host, host.textfile_dir) as (procs, address, pid):
        result = host.run(DOCUMENT, "--check", env={"http_proxy": proxy, "HTTP_PROXY": proxy, "NO_PROXY": ""})
    binary = procs.procs[-1][0].args[0]
    assert about_node_exporter(result) == [
        f"ok: node_exporter reads {host.textfile_dir} ({FLAG} of the running {binary}, PID {pid}): the textfile "
        "directory",
        f"ok: node_exporter at http://{address}/metrics {SERVES}",
    ]
    assert result.returncode == 0, result.stdout


@pytest.mark.slow
def test_the_real_node_exporter_before_the_first_run_is_a_warning(host: Host) -> None:
    with real_node_exporter(host, host.textfile_dir) as (_, address, _pid):
        result = host.run(DOCUMENT, "--check")
    assert about_node_exporter(result)[1] == (
        f"warning: node_exporter at http://{address}/metrics answers with node_textfile_scrape_error 0, and no run "
        f"has written {host.prom} yet")
    assert result.returncode == 0, result.stdout


@pytest.mark.slow
def test_the_real_node_exporter_reading_another_directory_is_an_error(host: Host) -> None:
    write_collectors_file(host)
    other = host.base / "other"
    other.mkdir()
    with real_node_exporter(host, other) as (procs, address, pid):
        result = host.run(DOCUMENT, "--check")
    binary = procs.procs[-1][0].args[0]
    assert about_node_exporter(result) == [
        f"error: node_exporter reads {other} ({FLAG} of the running {binary}, PID {pid}), not the textfile "
        f"directory {host.textfile_dir}: it will not serve the metrics",
        f"error: node_exporter at http://{address}/metrics does not serve the collector's series (no "
        f"gpu_proc_collector_up): it does not read {host.prom}",
    ]
    assert result.returncode == 1


@pytest.mark.slow
def test_a_malformed_file_beside_ours_is_reported_as_a_scrape_error(host: Host) -> None:
    write_collectors_file(host)
    (host.textfile_dir / "broken.prom").write_text("this is { not the text format\n")
    with real_node_exporter(host, host.textfile_dir) as (_, address, _pid):
        result = host.run(DOCUMENT, "--check")
    assert about_node_exporter(result)[1] == (
        f"error: node_exporter at http://{address}/metrics reports node_textfile_scrape_error 1: gpu_processes.prom "
        "was read, another .prom file was not (node_exporter's log names the file)")
    assert result.returncode == 1
    (host.textfile_dir / "broken.prom").unlink()
    host.prom.write_text("gpu_proc_collector_up{ 1\n")  # ours broken (as no run ever writes it)
    with real_node_exporter(host, host.textfile_dir) as (_, address, _pid):
        result = host.run(DOCUMENT, "--check", check_file=False)
    assert about_node_exporter(result)[1] == (
        f"error: node_exporter at http://{address}/metrics reports node_textfile_scrape_error 1: gpu_processes.prom "
        "or another .prom file there could not be read or parsed (node_exporter's log names the file)")


@pytest.mark.slow
def test_the_real_node_exporter_with_its_textfile_collector_off(host: Host) -> None:
    write_collectors_file(host)
    with real_node_exporter(host, host.textfile_dir, collectors=()) as (procs, address, pid):
        result = host.run(DOCUMENT, "--check")
    binary = procs.procs[-1][0].args[0]
    assert about_node_exporter(result) == [
        f"error: the running {binary}, PID {pid} runs with its textfile collector off (--no-collector.textfile, or "
        f"--collector.disable-defaults without --collector.textfile); add {FLAG}={host.textfile_dir}",
        f"error: node_exporter at http://{address}/metrics serves no node_textfile_scrape_error: its textfile "
        "collector is off (--no-collector.textfile, or --collector.disable-defaults without --collector.textfile)",
    ]
    assert result.returncode == 1


@pytest.mark.slow
def test_debians_node_exporter_without_the_flag_reads_its_own_default(host: Host) -> None:
    with real_node_exporter(host, None) as (procs, _address, pid):
        result = host.run(DOCUMENT, "--check")
    binary = procs.procs[-1][0].args[0]
    assert about_node_exporter(result)[0] == (
        f"error: node_exporter reads /var/lib/prometheus/node-exporter (the Debian package's default, the running "
        f"{binary}, PID {pid}), not the textfile directory {host.textfile_dir}: it will not serve the metrics")
    assert result.returncode == 1


def test_upstreams_node_exporter_without_the_flag_reads_nothing(host: Host) -> None:
    host.tree.add_process(900, "node_exporter", cmdline=["/usr/local/bin/node_exporter"])
    result = host.run(DOCUMENT, "--check")
    assert about_node_exporter(result)[0] == (
        f"error: the running /usr/local/bin/node_exporter, PID 900 has no {FLAG}: it reads no textfile; add "
        f"{FLAG}={host.textfile_dir}")
    assert result.returncode == 1


@pytest.mark.slow
def test_a_tenants_process_named_node_exporter_does_not_fail_the_host(host: Host) -> None:
    """The node_exporter that reads the textfile directory is the one judged, whatever runs beside it."""
    write_collectors_file(host)
    host.tree.add_process(2, "node_exporter", cmdline=["node_exporter", f"{FLAG}=/tmp/elsewhere",
                                                       f"--web.listen-address={LOOPBACK}:{free_port()}"])
    with real_node_exporter(host, host.textfile_dir) as (_, address, _pid):
        result = host.run(DOCUMENT, "--check")
    assert about_node_exporter(result)[1] == f"ok: node_exporter at http://{address}/metrics {SERVES}"
    assert result.returncode == 0, result.stdout


# ---- node_exporter absent, silent or misbehaving ----


def test_no_node_exporter_running_is_a_warning(host: Host) -> None:
    result = host.run(DOCUMENT, "--check")
    assert about_node_exporter(result)[1] == (
        "warning: no node_exporter is running (node_exporter, prometheus-node-exporter): nothing serves the metrics "
        "(--node-exporter-url asks one this check cannot see)")
    assert result.returncode == 0


def test_a_node_exporter_that_does_not_listen_is_an_error(host: Host) -> None:
    address = f"{LOOPBACK}:{free_port()}"  # closed again: connect() is refused
    fake_node_exporter(host, address)
    result = host.run(DOCUMENT, "--check")
    assert about_node_exporter(result)[1] == (
        f"error: node_exporter at http://{address}/metrics does not answer: connection refused")
    assert result.returncode == 1


@pytest.mark.slow
def test_node_exporter_url_is_asked_instead_and_its_password_is_not_printed(host: Host) -> None:
    write_collectors_file(host)
    with real_node_exporter(host, host.textfile_dir) as (_, address, _pid):
        result = host.run(DOCUMENT, "--check", "--node-exporter-url", f"http://{address}/metrics")
        assert about_node_exporter(result)[1] == f"ok: node_exporter at http://{address}/metrics {SERVES}"
    refused = f"{LOOPBACK}:{free_port()}"
    result = host.run(DOCUMENT, "--check", "--node-exporter-url", f"http://operator:s3cret@{refused}/metrics")
    assert about_node_exporter(result)[1] == (
        f"error: node_exporter at http://{refused}/metrics does not answer: connection refused")
    assert "s3cret" not in result.stdout + result.stderr
    bad = host.run(DOCUMENT, "--check", "--node-exporter-url", "ftp://127.0.0.1/metrics")
    assert bad.returncode == 2
    assert "--node-exporter-url must be an http:// or https:// URL" in bad.stderr


Handler = Callable[[socket.socket, threading.Event, dict[str, int]], Any]


@contextmanager
def http_server(handler: Handler) -> Iterator[tuple[str, dict[str, int]]]:
    """A loopback server that hands each connection to handler(connection, stop) on a thread of its own; yields
    its host:port and the counters the handlers keep (bytes sent)."""
    stop = threading.Event()
    counters = {"sent": 0}
    listener = socket.socket()
    listener.bind((LOOPBACK, 0))
    listener.listen()
    listener.settimeout(0.2)
    threads = []

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            thread = threading.Thread(target=run, args=(conn,), daemon=True)
            threads.append(thread)
            thread.start()

    def run(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):  # OSError: the check hung up
            handler(conn, stop, counters)

    acceptor = threading.Thread(target=serve, daemon=True)
    acceptor.start()
    try:
        yield f"{LOOPBACK}:{listener.getsockname()[1]}", counters
    finally:
        stop.set()
        acceptor.join()
        for thread in threads:
            thread.join(timeout=10)
        listener.close()


def silent(conn: socket.socket, stop: threading.Event, counters: dict[str, int]) -> None:
    conn.recv(65536)
    stop.wait(60)  # reads the request, never answers


def endless(conn: socket.socket, stop: threading.Event, counters: dict[str, int]) -> None:
    """200 OK, then 100 MB of metrics-like lines (or until the reader hangs up)."""
    conn.recv(65536)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n")
    lines = b"node_filler_total 1\n" * 3277  # 64 KiB
    while counters["sent"] < 100_000_000 and not stop.is_set():
        conn.sendall(lines)
        counters["sent"] += len(lines)


def trickle(conn: socket.socket, stop: threading.Event, counters: dict[str, int]) -> None:
    """200 OK, then a byte every 0.2 s: each read gets something, the answer never ends."""
    conn.recv(65536)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n")
    while not stop.wait(0.2):
        conn.sendall(b"#")


def unauthorized(conn: socket.socket, stop: threading.Event, counters: dict[str, int]) -> None:
    conn.recv(65536)
    conn.sendall(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


def test_a_node_exporter_that_never_answers_times_out(host: Host) -> None:
    with http_server(silent) as (address, _):
        fake_node_exporter(host, address)
        result = host.run(DOCUMENT, "--check", timeout=30)
    assert about_node_exporter(result)[1] == (
        f"error: node_exporter at http://{address}/metrics timed out: no answer within 2 s")
    assert result.returncode == 1


def test_an_answer_that_never_ends_times_out(host: Host) -> None:
    with http_server(trickle) as (address, _):
        fake_node_exporter(host, address)
        result = host.run(DOCUMENT, "--check", timeout=30)
    assert about_node_exporter(result)[1] == (
        f"error: node_exporter at http://{address}/metrics timed out: the answer did not end within 5 s")
    assert result.returncode == 1


def test_a_100_mb_answer_is_read_only_up_to_the_bound(host: Host) -> None:
    """Memory stays bounded: the check stops reading past 32 MiB and hangs up (the server sent far less than its
    100 MB: 32 MiB and what the sockets' buffers hold)."""
    with http_server(endless) as (address, counters):
        fake_node_exporter(host, address)
        result = host.run(DOCUMENT, "--check", timeout=30)
    assert about_node_exporter(result)[1] == (
        f"error: node_exporter at http://{address}/metrics answered more than 32 MiB: not node_exporter's metrics "
        "page")
    assert result.returncode == 1
    assert 32 << 20 < counters["sent"] < 48 << 20


def test_an_unauthorized_answer_names_web_config_file(host: Host) -> None:
    with http_server(unauthorized) as (address, _):
        fake_node_exporter(host, address, "--web.config.file=/etc/node_exporter/web.yml")
        result = host.run(DOCUMENT, "--check", timeout=30)
    assert about_node_exporter(result)[1] == (
        f"error: node_exporter at http://{address}/metrics answered HTTP 401 Unauthorized (its --web.config.file "
        "can require TLS or a password: give the URL, with https:// where it serves TLS, as --node-exporter-url or "
        "node_exporter_url in --config)")
    assert result.returncode == 1
