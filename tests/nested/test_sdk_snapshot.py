"""The sandbox SDK's snapshots end to end with real Linux (the snapshot
issue's SDK part, docs/sdk.md): tests/nested/sdk_snapshot_probe.py runs in
the nested test host (or here, on hardware KVM).  One boot:

* a cold ``Sandbox.create()`` (a NIC on a tap) saves the start-up
  snapshot; the next two creates with the same settings start from it:
  their clocks are set to the host's, their random number generators
  reseeded (different UUIDs), their NICs' MACs their own in the VMM and in
  the guest, and nothing the first sandbox wrote is in them;
* ``sb.fork(2)`` gives two clones that hold the parent's files, each
  writing only its own, each with its own MAC;
* ``sb.pause()`` saves and stops a sandbox running a ``sleep 1000``;
  ``Sandbox.list()`` shows it paused; ``Sandbox.connect(id)`` brings it back
  with its file and its process, and the paused copy is gone.
"""

from __future__ import annotations

import pytest

from kvmlite.guest.setup import DefaultGuest

from .sdk_records import record, run_probe

pytestmark = pytest.mark.nested


@pytest.fixture(scope="module")
def probe(request: pytest.FixtureRequest, share_guest: DefaultGuest,
          tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    return run_probe(request, "sdk_snapshot_probe.py", tmp_path_factory.mktemp("sdk-snapshot"))


_get = record


def _distinct_macs_applied(pairs: list[list[str]]) -> None:
    """Each sandbox's guest uses the MAC its VMM serves, and no two share one."""
    assert all(vmm and vmm == guest for vmm, guest in pairs), pairs
    assert len({vmm for vmm, _guest in pairs}) == len(pairs), pairs


def test_cold_create_saves_the_startup_snapshot(probe: dict[str, dict]) -> None:
    r = _get(probe, "cold")
    assert r["restored_from"] is None and len(r["cache"]) == 1, r
    _distinct_macs_applied([r["macs"]])


def test_later_creates_start_from_it_with_clock_set_and_rng_reseeded(probe: dict[str, dict]) -> None:
    r = _get(probe, "cached")
    assert r["restored"] == [True, True], r
    assert r["clock_skew"] < 10, r
    assert r["uuids_differ"] and not r["sees_other"] and r["true"] == 0, r
    _distinct_macs_applied([probe["cold"]["macs"], *r["macs"]])      # the snapshot's sandbox and both from it
    print(f"cold create {probe['cold']['created_in']} s, from the snapshot {r['created_in']} s")


def test_fork_clones_hold_the_parent_files_and_write_their_own(probe: dict[str, dict]) -> None:
    r = _get(probe, "fork")
    assert r["notes"] == ["from-a", "from-a"] and r["ids_distinct"], r
    assert not r["parent_sees_clone"] and not r["clone1_sees_clone0"], r
    _distinct_macs_applied(r["macs"])          # the parent and its two clones


def test_pause_then_connect_brings_back_files_and_processes(probe: dict[str, dict]) -> None:
    r = _get(probe, "pause")
    assert r["listed"] == "paused" and not r["running_while_paused"], r
    assert r["file"] == "kept" and r["sleep"] == "alive" and r["same_id"], r
    assert not r["paused_dir_left"], r


def test_nothing_left_behind(probe: dict[str, dict]) -> None:
    r = _get(probe, "leftovers")
    assert r["cache_tmp"] == [] and r["sandboxes"] == [] and r["taps"] == [], r
