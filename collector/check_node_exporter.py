"""`--check`'s questions to node_exporter: which textfile directory the running one reads, and whether it serves
the collector's file without a textfile error. The Ansible role's verification asks the same after an install
(`roles/gpu_proc_collector/tasks/verify.yml`); here it is one command for an operator at a shell.

Why a module of its own: it is the only user of psutil (node_exporter's process and its flags) and requests (one
bounded HTTP request to node_exporter), and only `--check` imports it, so a timer run and the service loop never
pay for either import (tests/test_imports.py; docs/dependencies.md has the costs). It returns (level, message)
pairs, which collector.check prints with its own findings.

How node_exporter's flags are read, and what each answer means: docs/dependencies.md, "`--check` and node_exporter".
"""

from __future__ import annotations

import glob
import itertools
import os
import re
import shlex
import time
from collections.abc import Iterator, Sequence
from typing import NamedTuple, Optional

import psutil
import requests
import urllib3

from collector import safeio
from collector.settings import TEXTFILE_NAME, Settings

Finding = tuple[str, str]  # (level, message): collector.check's Finding fields
NAMES = ("node_exporter", "prometheus-node-exporter")  # upstream's binary, Debian's and Ubuntu's
TEXTFILE_FLAG = "--collector.textfile.directory"  # repeatable since node_exporter 1.8; a glob since 0.x
LISTEN_FLAG = "--web.listen-address"  # repeatable; default ":9100"
PATH_FLAG = "--web.telemetry-path"  # default "/metrics"
DEFAULT_LISTEN, DEFAULT_PATH = ":9100", "/metrics"
DEFAULTS_FILE = "etc/default/prometheus-node-exporter"  # Debian's: ARGS="..."
MAX_DEFAULTS_BYTES = 1 << 20  # a shell fragment of a few lines
DEBIAN_TEXTFILE_DIR = "/var/lib/prometheus/node-exporter"  # the Debian package's built-in default
MAX_GLOB_MATCHES = 100
# One request, bounded three ways: a hung node_exporter (or something else on its port) costs --check at most
# CONNECT_TIMEOUT + TOTAL_TIMEOUT + READ_TIMEOUT seconds and MAX_BYTES of memory.
CONNECT_TIMEOUT = 2.0
READ_TIMEOUT = 2.0  # between two reads
TOTAL_TIMEOUT = 5.0  # the whole answer
MAX_BYTES = 32 << 20  # node_exporter's page is a few hundred KiB; the collector's file at its series limits, a few MiB
CHUNK = 64 << 10
# The role's verification criteria (tasks/verify.yml), as regular expressions over the page.
SERIES = re.compile(rb"(?m)^gpu_proc_collector_up ")
SCRAPE_OK = re.compile(rb"(?m)^node_textfile_scrape_error 0$")
SCRAPE_ERROR = re.compile(rb"(?m)^node_textfile_scrape_error ")
OUR_MTIME = re.compile(rb'(?m)^node_textfile_mtime_seconds\{file="(?:[^"]*/)?' + re.escape(TEXTFILE_NAME.encode())
                       + rb'"\} ')
_ARGS = re.compile(r"^\s*(?:export\s+)?ARGS=(.*)$")


class Running(NamedTuple):
    """A running node_exporter: its PID and command line."""

    pid: int
    args: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"the running {self.args[0]}, PID {self.pid}"


class Reads(NamedTuple):
    """The directories node_exporter reads (as it names them: paths or globs), and where that was found."""

    directories: tuple[str, ...]
    source: str
    running: Optional[Running] = None  # the process, whose own root (a container's) the paths are under


# ---- command lines ----


def flag_values(args: Sequence[str], flag: str) -> list[str]:
    """Every value of a flag in an argument list, `--flag=VALUE` or `--flag VALUE` (kingpin's two forms)."""
    values = []
    for i, arg in enumerate(args):
        if arg.startswith(flag + "="):
            values.append(arg[len(flag) + 1:])
        elif arg == flag and i + 1 < len(args):
            values.append(args[i + 1])
    return values


def textfile_collector_on(args: Sequence[str]) -> bool:
    """node_exporter's textfile collector is on by default; `--no-collector.textfile` turns it off, and
    `--collector.disable-defaults` turns every collector off but those named (`--collector.textfile`). kingpin
    refuses a boolean flag given twice, so at most one of the two forms is there."""
    if "--no-collector.textfile" in args:
        return False
    return "--collector.textfile" in args or "--collector.disable-defaults" not in args


def running(host_root: str) -> list[Running]:
    """node_exporter processes, by name (psutil's: the executable's, or argv[0]'s when the kernel's 15-character
    copy is a prefix of it) or by argv[0], in PID order. psutil reads the host's /proc (under --host-root)."""
    saved = psutil.PROCFS_PATH
    psutil.PROCFS_PATH = os.path.join(host_root, "proc")
    try:
        found = []
        for process in psutil.process_iter(["name", "cmdline"], ad_value=None):
            args = process.info["cmdline"] or []
            names = {process.info["name"] or "", os.path.basename(args[0]) if args else ""}
            if args and names & set(NAMES):
                found.append(Running(process.pid, tuple(args)))
        return sorted(found)
    except OSError:  # no /proc there at all
        return []
    except IndexError:  # psutil.pids() on a /proc that lists no process (a host root without one)
        return []
    finally:
        psutil.PROCFS_PATH = saved


def _reads(process: Running) -> Optional[Reads]:
    """What a running node_exporter reads; None when its textfile collector is off or it names no directory."""
    args = process.args[1:]
    if not textfile_collector_on(args):
        return None
    directories = tuple(flag_values(args, TEXTFILE_FLAG))
    if directories:
        return Reads(directories, f"{TEXTFILE_FLAG} of {process.name}", process)
    if os.path.basename(process.args[0]) == "prometheus-node-exporter":  # Debian's build: its own default
        return Reads((DEBIAN_TEXTFILE_DIR,), f"the Debian package's default, {process.name}", process)
    return None  # upstream's default is "": it reads no directory


def _defaults_args(host_root: str) -> Optional[Reads]:
    """The flag in Debian's /etc/default/prometheus-node-exporter ARGS (its last assignment, as the shell reads
    it): what a node_exporter started by the package's unit will read."""
    path = os.path.join(host_root, DEFAULTS_FILE)
    try:
        lines = safeio.read(path, MAX_DEFAULTS_BYTES, root=host_root).decode("utf-8", "replace").splitlines()
    except (OSError, safeio.Refused):
        return None
    args: list[str] = []
    for line in lines:
        found = _ARGS.match(line)
        if found:
            try:
                args = shlex.split(" ".join(shlex.split(found.group(1), comments=True)))
            except ValueError:
                continue  # unbalanced quotes: the shell would refuse it too
    directories = tuple(flag_values(args, TEXTFILE_FLAG))
    return Reads(directories, f"ARGS in /{DEFAULTS_FILE}") if directories else None


def configured(host_root: str) -> Optional[Reads]:
    """Where no node_exporter runs: Debian's ARGS, else Debian's default directory (when it exists)."""
    found = _defaults_args(host_root)
    if found is not None:
        return found
    if os.path.isdir(os.path.join(host_root, DEBIAN_TEXTFILE_DIR.lstrip("/"))):
        return Reads((DEBIAN_TEXTFILE_DIR,), "the Debian package's default")
    return None


def _candidates(directory: str, reads: Reads, host_root: str) -> Iterator[str]:
    """The paths a directory (or glob) of node_exporter's names here: under the host root, and under a running
    node_exporter's own root (a container's mount namespace)."""
    relative = directory.lstrip("/")
    roots = [host_root]
    if reads.running is not None:
        roots.append(os.path.join(host_root, "proc", str(reads.running.pid), "root"))
    for root in roots:
        path = os.path.join(root, relative)
        if glob.has_magic(path):
            yield from itertools.islice(glob.iglob(path), MAX_GLOB_MATCHES)
        else:
            yield path


def reads_ours(ours: str, reads: Reads, host_root: str) -> bool:
    """Whether one of node_exporter's directories is the textfile directory (the same path, or the same file
    through the host root or node_exporter's root)."""
    for directory in reads.directories:
        if os.path.normpath(ours) == os.path.normpath(directory):
            return True
        for candidate in _candidates(directory, reads, host_root):
            try:
                if os.path.samefile(ours, candidate):
                    return True
            except OSError:
                continue
    return False


# ---- the HTTP question ----


def url_of(process: Running) -> str:
    """Where a running node_exporter serves its metrics: its first --web.listen-address (an address on every
    interface is asked on the loopback, as the role does) and its --web.telemetry-path."""
    args = process.args[1:]
    listen = (flag_values(args, LISTEN_FLAG) or [DEFAULT_LISTEN])[0]
    path = (flag_values(args, PATH_FLAG) or [DEFAULT_PATH])[-1]
    host, _, port = listen.rpartition(":")
    if host in ("", "0.0.0.0", "[::]"):  # noqa: S104 - the wildcard it listens on, not one we bind
        host = "127.0.0.1"
    return f"http://{host}:{port}{path if path.startswith('/') else '/' + path}"


class Page(NamedTuple):
    body: bytes
    problem: str  # "" when the whole page came


def fetch(url: str) -> Page:
    """GETs url: at most MAX_BYTES, within TOTAL_TIMEOUT. Raises requests.RequestException or urllib3's HTTPError.
    The body is read with read1 (what has arrived, up to CHUNK): read(CHUNK) would wait for a whole chunk, and a
    server sending a byte at a time would never meet READ_TIMEOUT nor the end of one."""
    with requests.Session() as session:
        session.trust_env = False  # an HTTP proxy from the environment would ask another host's node_exporter
        with session.get(url, timeout=(CONNECT_TIMEOUT, READ_TIMEOUT), stream=True, allow_redirects=False,
                         headers={"Accept": "text/plain", "Accept-Encoding": "identity"}) as response:
            if response.status_code != 200:
                return Page(b"", f"answered HTTP {response.status_code} {response.reason or ''}".rstrip())
            deadline = time.monotonic() + TOTAL_TIMEOUT
            body = bytearray()
            while True:
                chunk = response.raw.read1(CHUNK)
                if not chunk:
                    return Page(bytes(body), "")
                body += chunk
                if len(body) > MAX_BYTES:
                    return Page(b"", f"answered more than {MAX_BYTES >> 20} MiB: not node_exporter's metrics page")
                if time.monotonic() > deadline:
                    return Page(b"", f"timed out: the answer did not end within {TOTAL_TIMEOUT:g} s")


def _describe(err: Exception) -> str:
    cause = err.args[0] if err.args else None
    if isinstance(err, requests.ConnectTimeout):
        return f"timed out: no connection within {CONNECT_TIMEOUT:g} s"
    if isinstance(err, (requests.Timeout, urllib3.exceptions.TimeoutError)) or \
            isinstance(cause, urllib3.exceptions.ReadTimeoutError):
        return f"timed out: no answer within {READ_TIMEOUT:g} s"
    reason = getattr(cause, "reason", cause)
    text = str(reason)
    if isinstance(reason, urllib3.exceptions.NewConnectionError) or "Connection refused" in text:
        return "does not answer: connection refused"
    return f"does not answer: {text}"


def _shown(url: str) -> str:
    """url without a password, for printing."""
    return re.sub(r"(?<=://)[^/@]*@", "", url, count=1)


def served(settings: Settings, url: str, process: Optional[Running]) -> Finding:
    """Whether node_exporter at url serves the collector's series with node_textfile_scrape_error 0."""
    who = f"node_exporter at {_shown(url)}"
    hint = ""
    if process is not None and flag_values(process.args[1:], "--web.config.file"):
        hint = (" (its --web.config.file can require TLS or a password: give the URL, with https:// where it "
                "serves TLS, as --node-exporter-url or node_exporter_url in --config)")
    try:
        page = fetch(url)
    except (requests.RequestException, urllib3.exceptions.HTTPError) as err:
        return "error", f"{who} {_describe(err)}{hint}"
    if page.problem:
        return "error", f"{who} {page.problem}{hint}"
    return judge(page.body, who, settings.textfile or TEXTFILE_NAME)


def judge(body: bytes, who: str, ours: str) -> Finding:
    """The role's criteria on node_exporter's page: gpu_proc_collector_up and node_textfile_scrape_error 0."""
    if not SCRAPE_ERROR.search(body):
        return "error", (f"{who} serves no node_textfile_scrape_error: its textfile collector is off "
                         "(--no-collector.textfile, or --collector.disable-defaults without --collector.textfile)")
    if not SCRAPE_OK.search(body):
        which = (f"{TEXTFILE_NAME} was read, another .prom file was not" if OUR_MTIME.search(body)
                 else f"{TEXTFILE_NAME} or another .prom file there could not be read or parsed")
        return "error", f"{who} reports node_textfile_scrape_error 1: {which} (node_exporter's log names the file)"
    if SERIES.search(body):
        return "ok", f"{who} serves the collector's series (gpu_proc_collector_up) with node_textfile_scrape_error 0"
    if not os.path.lexists(ours):
        return "warning", f"{who} answers with node_textfile_scrape_error 0, and no run has written {ours} yet"
    return "error", (f"{who} does not serve the collector's series (no gpu_proc_collector_up): it does not read "
                     f"{ours}")


# ---- the findings ----


def _choose(processes: Sequence[Running], ours: Optional[str], host_root: str) -> Optional[Running]:
    """The node_exporter to judge: one that reads the textfile directory, else one with its textfile collector on
    (a tenant's process of the same name must not fail the host), else the first."""
    if not processes:
        return None
    readers = [(p, _reads(p)) for p in processes]
    for process, reads in readers:
        if ours is not None and reads is not None and reads_ours(ours, reads, host_root):
            return process
    return next((p for p, reads in readers if reads is not None), processes[0])


def findings(settings: Settings) -> list[Finding]:
    """Which directory node_exporter reads, compared with the textfile directory; then, where a node_exporter runs
    (or --node-exporter-url names one), whether it serves the collector's series."""
    root, ours = settings.host_root, settings.textfile_dir
    process = _choose(running(root), ours, root)
    reads = _reads(process) if process is not None else configured(root)
    said = f"node_exporter reads {', '.join(reads.directories)} ({reads.source})" if reads else ""
    if ours is None:
        return [("warning", "no textfile directory (--textfile-dir, or textfile_dir in --config): a run prints its "
                            "metrics" + (f"; {said}" if said else ""))]
    out: list[Finding] = []
    if process is not None and reads is None:
        off = not textfile_collector_on(process.args[1:])
        out.append(("error", f"{process.name} " + (
            "runs with its textfile collector off (--no-collector.textfile, or --collector.disable-defaults "
            "without --collector.textfile)" if off else
            f"has no {TEXTFILE_FLAG}: it reads no textfile") + f"; add {TEXTFILE_FLAG}={ours}"))
    elif reads is None:
        out.append(("warning", f"cannot tell which directory node_exporter reads: no node_exporter is running, "
                               f"/{DEFAULTS_FILE} sets no {TEXTFILE_FLAG}, and {DEBIAN_TEXTFILE_DIR} does not "
                               "exist"))
    elif reads_ours(ours, reads, root):
        out.append(("ok", f"{said}: the textfile directory"))
    else:
        level = "error" if process is not None else "warning"
        out.append((level, f"{said}, not the textfile directory {ours}: it will not serve the metrics"))
    if settings.node_exporter_url:
        out.append(served(settings, settings.node_exporter_url, process))
    elif process is not None:
        out.append(served(settings, url_of(process), process))
    else:
        out.append(("warning", f"no node_exporter is running ({', '.join(NAMES)}): nothing serves the metrics "
                               "(--node-exporter-url asks one this check cannot see)"))
    return out
