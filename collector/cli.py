"""Command line: options and config file into one Settings record, then one collection, or one per --interval
(collector.runner), or the host check (--check, collector.check). Exit code 2 is a bad command line or
configuration; the others are the runner's, or the check's.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any, Optional

from collector import __version__, safeio
from collector.runner import run_once, serve
from collector.settings import (
    CONFIG_TYPES,
    DEFAULTS,
    LOG_LEVELS,
    POD_RESOURCES_SOCKET,
    TEXTFILE_NAME,
    Settings,
    UsageError,
    build,
    check_types,
    parse_devices,
)

log = logging.getLogger("gpu-proc-collector")

EXIT_USAGE = 2
MAX_CONFIG_BYTES = 1 << 20  # the role writes a few hundred bytes

__all__ = ["UsageError", "main", "parse_devices", "settings"]


def build_parser() -> argparse.ArgumentParser:
    d = DEFAULTS
    parser = argparse.ArgumentParser(
        prog="gpu-proc-collector",
        description="List every GPU process through NVML, find its pod, container or other owner from local "
        "sources, and write the metrics for node_exporter's textfile collector.",
    )
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--textfile-dir", metavar="DIR",
                     help=f"write DIR/{TEXTFILE_NAME} atomically (node_exporter's --collector.textfile.directory)")
    out.add_argument("--stdout", action="store_true", help="print the metrics instead of writing a file "
                     "(the default when no --textfile-dir is given)")
    parser.add_argument("--host-root", metavar="DIR", help=f"read every host path under DIR (default {d.host_root})")
    parser.add_argument("--state-dir", metavar="DIR", help=f"where runs keep state (default {d.state_dir})")
    parser.add_argument("--devices", metavar="LIST", help="only these GPU indices, e.g. 0,1 (default: all)")
    parser.add_argument("--pod-resources-socket", metavar="PATH",
                        help=f"kubelet pod-resources socket (default <host-root>/{POD_RESOURCES_SOCKET})")
    parser.add_argument("--pod-resources-timeout", metavar="SECONDS", type=float,
                        help=f"deadline of the pod-resources call (default {d.pod_resources_timeout:g})")
    parser.add_argument("--resource-name", metavar="NAME", action="append", dest="resource_names",
                        help="extra extended-resource name that carries GPUs (repeatable); nvidia.com/gpu, "
                        "nvidia.com/gpu.shared and nvidia.com/mig-* are always recognised")
    parser.add_argument("--cgroup-root", metavar="PATH", action="append", dest="cgroup_roots",
                        help="the cgroup of a nested kubelet's node (kind: /docker/<id>), whose kubepods tree below "
                             "it holds pods; repeatable")
    parser.add_argument("--label-prefix", metavar="PREFIX",
                        help="prefix for the pod/namespace/container labels of the native metrics, e.g. k8s_")
    parser.add_argument("--command-args", action="store_true", default=None,
                        help="export each process's command line, secrets redacted, as gpu_process_command_info "
                        "(off by default: command lines can hold secrets)")
    parser.add_argument("--max-process-series", metavar="N", type=int,
                        help=f"per-process series per node (default {d.max_process_series}); beyond it the largest "
                        "memory holders keep theirs and the rest are summed per device and owner")
    parser.add_argument("--max-owner-series", metavar="N", type=int,
                        help=f"owners with accounting series of their own (default {d.max_owner_series}); owners "
                        "beyond it are counted together as owner_kind=\"overflow\"")
    parser.add_argument("--deadline", metavar="SECONDS", type=float,
                        help=f"a run that takes longer writes gpu_proc_collector_up 0 and exits 4 "
                        f"(default {d.deadline:g})")
    parser.add_argument("--interval", metavar="SECONDS", type=float,
                        help="keep running, one collection per interval (default: one collection, then exit)")
    parser.add_argument("--sample-interval", metavar="SECONDS", type=float,
                        help="with --interval: seconds between per-process utilisation samples "
                        f"(default {d.sample_interval:g})")
    parser.add_argument("--config", metavar="FILE", help="JSON file with any of: " + ", ".join(CONFIG_TYPES))
    parser.add_argument("--log-level", choices=LOG_LEVELS, help=f"default {d.log_level}")
    parser.add_argument("--check", action="store_true",
                        help="check this host instead of collecting (NVML and the GPUs, kubelet's socket, runtime "
                        "files, the textfile and state directories): one ok/warning/error line per finding, exit 1 "
                        "on any error; writes no metrics")
    parser.add_argument("--expect-gpus", metavar="N", type=int,
                        help="with --check: an error unless NVML lists exactly N GPUs")
    parser.add_argument("--node-exporter-url", metavar="URL",
                        help="with --check: ask node_exporter for its metrics at URL (default: from the running "
                        "node_exporter's --web.listen-address and --web.telemetry-path), e.g. "
                        "https://127.0.0.1:9100/metrics")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def load_config(path: str) -> dict[str, Any]:
    """The config file's object, read through collector.safeio (a FIFO, a device, a huge or deeply nested file is a
    usage error, never a hang or a traceback; the file may be a link, as an operator's config may be). Raises
    UsageError."""
    try:
        config = safeio.read_json(path, MAX_CONFIG_BYTES, follow_last=True)
    except FileNotFoundError as err:
        raise UsageError(f"cannot read config {path}: {err.strerror}") from None
    except safeio.Refused as err:
        raise UsageError(f"config file unusable: {err}") from None
    if not isinstance(config, dict):
        raise UsageError(f"config {path} must be a JSON object")
    check_types(config, f"config {path}")
    return config


def settings(argv: Optional[Sequence[str]]) -> Settings:
    """The config file's values, overridden by the command line's. Raises UsageError."""
    return _settings(build_parser().parse_args(argv))


def _settings(args: argparse.Namespace) -> Settings:
    values: dict[str, Any] = load_config(args.config) if args.config else {}
    for key in CONFIG_TYPES:
        value = getattr(args, key, None)
        if value is not None:
            values[key] = value
    if args.stdout:
        values["textfile_dir"] = None
    return build(values)


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(stream=sys.stderr, format="gpu-proc-collector: %(levelname)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        if args.expect_gpus is not None and not args.check:
            raise UsageError("--expect-gpus is valid only with --check")
        if args.expect_gpus is not None and args.expect_gpus < 0:
            raise UsageError("--expect-gpus takes a number of GPUs, 0 or more")
        current = _settings(args)
    except UsageError as err:
        print(f"gpu-proc-collector: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    logging.getLogger().setLevel(current.log_level.upper())
    if args.check:
        from collector.check import run_check  # noqa: PLC0415 - a run never needs it

        return run_check(current, args.expect_gpus)
    if current.interval is None:
        return run_once(current)

    def reload() -> Settings:
        new = settings(argv)
        logging.getLogger().setLevel(new.log_level.upper())
        return new

    return serve(current, reload)
