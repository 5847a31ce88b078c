"""Measures what docs/dependencies.md quotes: what importing each dependency costs, and each hand-written part
against the library it stands in for, in this checkout, with this interpreter.

- imports: `python -X importtime -c "import M"` in fresh processes of --python (a virtualenv with the collector's
  wheel installed as the role installs it: an editable install adds its own finder's imports to the collector's
  modules), started outside the checkout, rounds interleaved across the modules so that
  load from other users touches every module alike; the module's cumulative time, median and minimum (-X
  importtime itself runs about 1.3x slow: compare the numbers with each other, not with a run's wall time);
- the exposition writer against prometheus_client: the families of a real run (1,000 GPU processes in 500 pods,
  the stand-in NVML), rendered by `collector.exposition.render` and by `prometheus_client.generate_latest`, best
  and median of repeated renders in one process, outputs compared byte for byte;
- /proc reads against psutil: `collector.procfs.describe` and the psutil-based describe the tests hold it to
  (tests/test_procfs.py), over 1,000 real `sleep` processes this script starts and ends;
- sd_notify against bindings: `collector.systemd.notify` per datagram, and with --bindings-python (an interpreter
  with cysystemd and sdnotify installed) their import and per-call costs, each to a datagram socket bound here;
- the strict YAML loader against `yaml.load(CSafeLoader)`: a claim's CDI spec for 8 GPUs in go-yaml's layout.

    .venv/bin/python bench/dependencies.py [--python PATH] [--runs 15] [--bindings-python PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402
from prometheus_client import generate_latest  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from bench.run import FAKE_NVML, build_host  # noqa: E402
from collector import procfs, strictyaml, systemd  # noqa: E402
from collector.exposition import COUNTER, GAUGE, Family, render  # noqa: E402
from tests.support.cdisim import DRA_KIND, go_yaml, gpu_device, spec  # noqa: E402
from tests.support.promref import registry_of  # noqa: E402
from tests.test_procfs import psutil_describe  # noqa: E402

IMPORTS = [
    # (module, what it is for); the first group is what a timer run imports
    ("pynvml", "NVML, every run"),
    ("collector.cli", "what a timer run imports before it starts (pynvml, logging, argparse included)"),
    ("grpc", "kubelet's pod-resources socket, only where it exists"),
    ("collector.attribution.podresources_v1_pb2", "protobuf and the generated messages, with grpc"),
    ("yaml", "PyYAML, only where a CDI spec is written in YAML"),
    ("collector.strictyaml", "PyYAML and the strict loader"),
    ("psutil", "--check only"),
    ("requests", "--check only (urllib3, idna, charset_normalizer, certifi with it)"),
    ("urllib3", "--check only"),
    ("collector.check_node_exporter", "--check's node_exporter part: psutil and requests with it"),
    ("prometheus_client", "the tests' reference for collector.exposition"),
    ("collector.exposition", "the hand-written writer"),
    ("collector.procfs", "the hand-written /proc reader"),
    ("collector.systemd", "the hand-written sd_notify (and signal handling)"),
]


def importtime(python: str, module: str, env: dict[str, str]) -> tuple[float, float]:
    """(cumulative, self) milliseconds of importing module in a fresh interpreter."""
    result = subprocess.run([python, "-X", "importtime", "-c", f"import {module}"], env=env, cwd="/",
                            capture_output=True, text=True, check=True)
    for line in result.stderr.splitlines():
        if line.startswith("import time:") and line.rsplit("|", 1)[1].strip() == module:
            own, cumulative = (int(part) for part in line.split(":", 1)[1].split("|")[:2])
            return cumulative / 1000, own / 1000
    raise SystemExit(f"{module}: no import time line")


def imports(python: str, modules: Sequence[str], runs: int, env: dict[str, str]
            ) -> dict[str, list[tuple[float, float]]]:
    times: dict[str, list[tuple[float, float]]] = {m: [] for m in modules}
    for m in modules:  # warm the page cache and the bytecode; not counted
        importtime(python, m, env)
    for _ in range(runs):
        for m in modules:
            times[m].append(importtime(python, m, env))
    return times


def report(module: str, values: list[tuple[float, float]], why: str) -> None:
    cumulative = [v[0] for v in values]
    own = statistics.median(v[1] for v in values)
    print(f"  {module:44} {statistics.median(cumulative):7.1f} ms  (min {min(cumulative):6.1f}, the module's own "
          f"{own:5.1f})  {why}")


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, float]:
    """(best, median) seconds of fn()."""
    out = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return min(out), statistics.median(out)


def ms(pair: tuple[float, float]) -> str:
    return f"{pair[1] * 1000:.2f} ms (best {pair[0] * 1000:.2f})"


# ---- the exposition writer ----


def run_text(work: Path) -> str:
    scenario, tree, _ = build_host(work, 1000, pods=500)
    env = {**os.environ, "LD_LIBRARY_PATH": str(FAKE_NVML), "FAKE_NVML_SCENARIO": str(scenario)}
    result = subprocess.run([sys.executable, "-m", "collector", "--stdout", "--host-root", str(tree.root),
                             "--state-dir", str(work / "state")], env=env, cwd=REPO, capture_output=True,
                            text=True, check=True)
    return result.stdout


def exposition(repeat: int) -> None:
    with tempfile.TemporaryDirectory(prefix="gpc-deps-") as work:
        text = run_text(Path(work))
    families = []
    for parsed in text_string_to_metric_families(text):
        names = sorted({name for sample in parsed.samples for name in sample.labels})
        counter = parsed.type == "counter"
        family = Family(parsed.name + ("_total" if counter else ""), parsed.documentation, names,
                        COUNTER if counter else GAUGE)
        for sample in parsed.samples:
            family.add([sample.labels.get(name, "") for name in names], sample.value)
        families.append(family)

    registry = registry_of(families)
    ours, theirs = render(families), generate_latest(registry)
    samples = sum(len(f.samples) for f in families)
    print(f"exposition: {len(families)} families, {samples} samples, {len(ours) / 1024:.0f} KiB; "
          f"identical output: {ours == theirs}")
    print(f"  collector.exposition.render:         {ms(timed(lambda: render(families), repeat))}")
    print(f"  prometheus_client.generate_latest:   {ms(timed(lambda: generate_latest(registry), repeat))}")


# ---- /proc ----


def proc_reads(count: int, repeat: int) -> None:
    children = [subprocess.Popen(["sleep", "600"]) for _ in range(count)]
    try:
        pids = [child.pid for child in children]
        procfs.use_host_root("/")
        for with_cmdline in (False, True):
            ours = timed(lambda: [procfs.describe(pid, with_cmdline) for pid in pids], repeat)  # noqa: B023
            theirs = timed(lambda: [psutil_describe(pid, with_cmdline) for pid in pids], repeat)  # noqa: B023
            print(f"/proc, {count} processes{', with command lines' if with_cmdline else ''}: "
                  f"collector.procfs {ms(ours)}, psutil {ms(theirs)}; per process "
                  f"{ours[1] / count * 1e6:.1f} us against {theirs[1] / count * 1e6:.1f} us (medians)")
    finally:
        for child in children:
            child.kill()
        for child in children:
            child.wait()


# ---- sd_notify ----

BINDING_CALLS = """
import sys, time
which = sys.argv[1]
started = time.perf_counter()
if which == "cysystemd":
    from cysystemd.daemon import notify, Notification
    send = lambda: notify(Notification.WATCHDOG)
else:
    import sdnotify
    notifier = sdnotify.SystemdNotifier()
    send = lambda: notifier.notify("WATCHDOG=1")
imported = time.perf_counter() - started
calls = []
for _ in range(2000):
    t = time.perf_counter(); send(); calls.append(time.perf_counter() - t)
calls.sort()
print(imported * 1000, calls[len(calls) // 2] * 1e6)
"""


def sd_notify(runs: int, bindings_python: Optional[str], env: dict[str, str]) -> None:
    """Each sender's datagrams to a socket bound here and read as they come (a unix datagram socket's queue holds
    512 by default: a sender would block on a full one, libsystemd's does)."""
    with tempfile.TemporaryDirectory(prefix="gpc-notify-") as work:
        path = os.path.join(work, "notify.sock")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
            receiver.bind(path)
            receiver.settimeout(0.2)
            done = threading.Event()

            def drain() -> None:
                while not done.is_set():
                    with contextlib.suppress(TimeoutError):
                        receiver.recv(4096)

            reader = threading.Thread(target=drain, daemon=True)
            reader.start()
            os.environ["NOTIFY_SOCKET"] = path
            calls = []
            for _ in range(2000):
                started = time.perf_counter()
                systemd.notify("WATCHDOG=1")
                calls.append(time.perf_counter() - started)
            del os.environ["NOTIFY_SOCKET"]
            print(f"sd_notify: collector.systemd.notify {statistics.median(calls) * 1e6:.1f} us per datagram "
                  "(median of 2,000)")
            for which in ("cysystemd", "sdnotify") if bindings_python else ():
                results = []
                for _ in range(runs):
                    out = subprocess.run([bindings_python, "-c", BINDING_CALLS, which],
                                         env={**env, "NOTIFY_SOCKET": path}, capture_output=True, text=True,
                                         check=True, timeout=60).stdout.split()
                    results.append((float(out[0]), float(out[1])))
                imported = statistics.median(r[0] for r in results)
                per_call = statistics.median(r[1] for r in results)
                print(f"  {which}: import {imported:.2f} ms (wall, fresh process, median of {runs}), "
                      f"{per_call:.1f} us per call")
            done.set()
            reader.join()


# ---- YAML ----


def strict_yaml(repeat: int) -> None:
    text = go_yaml(spec(DRA_KIND, [gpu_device("3f2a9c1e-claim", minor) for minor in range(8)]))
    assert strictyaml.load(text) == yaml.load(text, Loader=yaml.CSafeLoader)
    print(f"YAML: a claim's CDI spec for 8 GPUs ({len(text) / 1024:.1f} KiB, go-yaml's layout), libyaml "
          f"{'present' if strictyaml.LIBYAML else 'absent'}")
    print(f"  collector.strictyaml.load:           {ms(timed(lambda: strictyaml.load(text), repeat))}")
    print(f"  yaml.load(Loader=yaml.CSafeLoader):  "
          f"{ms(timed(lambda: yaml.load(text, Loader=yaml.CSafeLoader), repeat))}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python", default=sys.executable, help="the interpreter whose imports are measured "
                        "(default: this one)")
    parser.add_argument("--runs", type=int, default=15, help="fresh processes per import (default 15)")
    parser.add_argument("--repeat", type=int, default=50, help="repeats of each in-process measurement")
    parser.add_argument("--bindings-python", help="an interpreter with cysystemd and sdnotify installed")
    args = parser.parse_args(argv)
    subprocess.run(["make", "-s", "-C", str(FAKE_NVML)], check=True)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "collector")], check=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    times = imports(args.python, [m for m, _ in IMPORTS], args.runs, env)
    print(f"imports ({args.python}, -X importtime cumulative, median and minimum of {args.runs} fresh processes):")
    for module, why in IMPORTS:
        report(module, times[module], why)
    if args.bindings_python:
        bound = imports(args.bindings_python, ["cysystemd.daemon", "sdnotify"], args.runs, env)
        for module, values in bound.items():
            report(module, values, "a binding")
    exposition(args.repeat)
    proc_reads(1000, max(5, args.repeat // 5))
    sd_notify(max(5, args.runs // 3), args.bindings_python, env)
    strict_yaml(args.repeat)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
