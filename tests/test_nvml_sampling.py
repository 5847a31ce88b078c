"""Per-process utilisation from NVML's sample entries: the one-entry-per-PID short cut gives what weighting
the entries by time gives."""

from __future__ import annotations

from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from collector import nvml
from collector.nvml import sampling


@hypothesis_settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 40), st.integers(1, 10**10), st.integers(0, 100)), max_size=80))
def test_utilisation_entries_one_per_pid_give_what_weighting_them_gives(samples: list[tuple[int, int, int]]
                                                                         ) -> None:
    """nvml.time_weighted takes a short cut where each PID has one entry (the shape current drivers return): the
    same values to the bit as weighting the entries by the time each covers, which it does where a PID has
    several."""
    def exact(result: dict[int, nvml.Activity]) -> dict[int, tuple[str, bool]]:
        return {pid: (repr(a.sm_percent), a.active) for pid, a in result.items()}

    assert exact(nvml.time_weighted(samples)) == exact(sampling._weighted(samples))
