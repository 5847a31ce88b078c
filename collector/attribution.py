"""Joins a GPU process to its owner. (Foundation: every process is a host process; see the attribution issue.)"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from prometheus_client.core import Metric

from collector.model import Device, HostProcess, Owner

if TYPE_CHECKING:
    from collector.run import Options


class Attributor:
    @classmethod
    def for_host(cls, options: Options, devices: Sequence[Device]) -> Attributor:
        return cls()

    def attribute(self, host: HostProcess, device: Device) -> tuple[Owner, bool]:
        return Owner(), False

    def self_metrics(self) -> list[Metric]:
        return []
