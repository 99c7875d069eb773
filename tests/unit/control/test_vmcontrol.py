"""VmControl's policies without KVM: the graceful-stop ladder (power button,
Ctrl-Alt-Del, hard stop), sysrq through the UART, and stats.  The ACPI PM
block, the i8042 and the UART are the real device models; the "guest" is a
thread that drives their registers the way an OS would."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

from kvmlite.devices.bus import Bus
from kvmlite.devices.irq import RecordingIrqLine
from kvmlite.devices.legacy.acpi_pm import CNT_SLP_EN, CNT_SLP_TYP_SHIFT, SLP_TYP_S5, STS_PWRBTN, AcpiPm
from kvmlite.devices.legacy.i8042 import I8042
from kvmlite.devices.legacy.serial import Serial
from kvmlite.errors import KvmliteError
from kvmlite.vmm.control import CTRL_ALT_DEL, FORCE, POWER_BUTTON, VmControl, process_memory
from kvmlite.vmm.exitcodes import EndReason


class FakeVm:
    """What VmControl reads of a Vm, with real legacy devices."""

    def __init__(self, console: str = "serial") -> None:
        self.config = SimpleNamespace(mem_mib=64, kernel="vmlinuz", console=console, vsock=None, labels=())
        self.started_at = time.monotonic()
        self.vcpus: list = []
        self.ends: list[tuple[EndReason, str]] = []
        self._ended = threading.Event()
        pm = AcpiPm(RecordingIrqLine(), poweroff=lambda: self.end(EndReason.POWEROFF, None, "guest powered off"),
                    reset=lambda: None)
        self.devices = SimpleNamespace(acpi_pm=pm, i8042=I8042(RecordingIrqLine(), reset=lambda: None),
                                       serial=[Serial(RecordingIrqLine())])
        self.devices.stats = lambda: {"com1": self.devices.serial[0].stats()}
        self.devices.nics = lambda: []
        self.io_bus, self.mmio_bus = Bus("pio"), Bus("mmio")

    def wait_ended(self, timeout: float | None = 0) -> bool:
        return self._ended.wait(timeout)

    def end(self, reason: EndReason, code: int | None, message: str) -> None:
        self.ends.append((reason, message))
        self._ended.set()

    def stop(self) -> None:
        self.end(EndReason.STOPPED, None, "stopped")


def os_enables_power_button(vm: FakeVm) -> None:
    vm.devices.acpi_pm.event.write(2, STS_PWRBTN.to_bytes(2, "little"))


def os_handles_button_then_powers_off(vm: FakeVm, delay: float = 0.1) -> threading.Thread:
    """An OS with a button driver: on PWRBTN_STS, acknowledge it, wait, enter S5."""
    pm = vm.devices.acpi_pm

    def guest() -> None:
        status = bytearray(2)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            pm.event.read(0, memoryview(status))
            if int.from_bytes(status, "little") & STS_PWRBTN:
                pm.event.write(0, STS_PWRBTN.to_bytes(2, "little"))     # write 1 to clear
                time.sleep(delay)
                pm.control.write(0, (SLP_TYP_S5 << CNT_SLP_TYP_SHIFT | CNT_SLP_EN).to_bytes(2, "little"))
                return
            time.sleep(0.01)

    thread = threading.Thread(target=guest, daemon=True)
    thread.start()
    return thread


def keys_sent(vm: FakeVm) -> int:
    return vm.devices.i8042.stats()["keys_sent"]


def test_shutdown_button_enabled_guest_powers_off_no_ctrl_alt_del() -> None:
    vm = FakeVm()
    os_enables_power_button(vm)
    guest = os_handles_button_then_powers_off(vm)
    method = VmControl(vm, button_wait=2).shutdown(timeout=5)
    assert vm.wait_ended(5)
    guest.join(5)
    assert method == POWER_BUTTON
    assert vm.ends == [(EndReason.POWEROFF, "guest powered off")]
    assert keys_sent(vm) == 0


def test_shutdown_button_not_enabled_sends_ctrl_alt_del_then_hard_stop() -> None:
    vm = FakeVm()
    control = VmControl(vm, button_wait=2)
    method = control.shutdown(timeout=0.3)
    assert control.state() == "stopping"
    assert vm.wait_ended(3)
    assert method == CTRL_ALT_DEL
    assert keys_sent(vm) > 0
    assert vm.ends[0][0] is EndReason.STOPPED and "did not shut down within 0.3 s" in vm.ends[0][1]


def test_shutdown_button_ignored_falls_back_to_ctrl_alt_del() -> None:
    vm = FakeVm()
    os_enables_power_button(vm)                  # enabled, but nobody acknowledges the press
    control = VmControl(vm, button_wait=0.2)
    assert control.shutdown(timeout=1.0) == POWER_BUTTON
    time.sleep(0.5)
    assert keys_sent(vm) > 0 and not vm.ends
    assert vm.wait_ended(2) and vm.ends[0][0] is EndReason.STOPPED


def test_shutdown_while_stopping_does_not_start_again() -> None:
    vm = FakeVm()
    control = VmControl(vm)
    first = control.shutdown(timeout=0.5)
    sent = keys_sent(vm)
    second = control.shutdown(timeout=0.5)
    assert first == second == CTRL_ALT_DEL and keys_sent(vm) == sent
    vm.wait_ended(3)


def test_shutdown_force_ends_at_once() -> None:
    vm = FakeVm()
    assert VmControl(vm).shutdown(force=True) == FORCE
    assert vm.ends == [(EndReason.STOPPED, "stopped")] and keys_sent(vm) == 0


def test_shutdown_after_end_reports_already_stopped() -> None:
    vm = FakeVm()
    vm.stop()
    assert VmControl(vm).shutdown() == "already-stopped"
    assert VmControl(vm).state() == "stopped"


def test_sysrq_break_then_key_into_uart() -> None:
    vm = FakeVm()
    VmControl(vm).sysrq("t")
    stats = vm.devices.serial[0].stats()
    assert stats["breaks"] == 1 and stats["rx_bytes"] == 1


@pytest.mark.parametrize("key", ["", "ab", " ", "\x03"])
def test_sysrq_bad_key_refused(key: str) -> None:
    with pytest.raises(KvmliteError, match="one printable character"):
        VmControl(FakeVm()).sysrq(key)


def test_sysrq_virtio_console_refused() -> None:
    with pytest.raises(KvmliteError, match="not serial"):
        VmControl(FakeVm(console="virtio")).sysrq("h")


def test_pause_before_start_refused() -> None:
    vm = FakeVm()
    vm.started_at = None
    with pytest.raises(KvmliteError, match="has not started"):
        VmControl(vm).pause()


def test_stats_has_devices_buses_and_memory() -> None:
    vm = FakeVm()
    vm.io_bus.register(0x3F8, 8, vm.devices.serial[0], "com1")
    vm.io_bus.write(0x3F8, b"A")
    stats = VmControl(vm).stats()
    assert stats["io"]["pio"]["com1"] == {"reads": 0, "writes": 1}
    assert stats["devices"]["com1"]["tx_bytes"] == 1
    assert "i8042" in stats["devices"] and stats["rss_bytes"] > 0


def test_process_memory_reads_kb_lines(tmp_path) -> None:
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nVmHWM:\t    2048 kB\nVmRSS:\t    1024 kB\n")
    assert process_memory(str(status)) == {"peak_rss_bytes": 2 << 20, "rss_bytes": 1 << 20}
    assert process_memory(str(tmp_path / "missing")) == {}


def test_info_lists_nics_with_the_mac_a_restored_guest_still_uses_only_with_nics() -> None:
    vm = FakeVm()
    assert "nics" not in VmControl(vm).info()
    clone = [{"name": "virtio-net0", "mac": "52:54:00:9a:bc:de", "restored_mac": "52:54:00:12:34:56"}]
    vm.devices.nics = lambda: clone

    assert VmControl(vm).info()["nics"] == clone


def test_info_names_the_vsock_socket_only_with_vsock() -> None:
    from kvmlite.vmm.config import VsockConfig

    vm = FakeVm()
    vm.config.vsock = None
    assert "vsock" not in VmControl(vm).info()

    vm.config.vsock = VsockConfig(7)
    vm.devices.vsock_path = "/run/user/1/kvmlite/web.d/vsock.sock"

    assert VmControl(vm).info()["vsock"] == {"cid": 7, "socket": "/run/user/1/kvmlite/web.d/vsock.sock"}


# --- lifetime (--timeout, set_timeout) ---

def test_vmcontrol_set_timeout_ends_vm_at_deadline_reports_time_left() -> None:
    vm = FakeVm()
    control = VmControl(vm)
    control.set_timeout(0.3)
    left = control.info()["timeout_s"]
    assert 0 < left <= 0.3
    assert vm.wait_ended(5)
    assert vm.ends == [(EndReason.STOPPED, "stopped: its timeout passed")]


def test_vmcontrol_set_timeout_again_moves_deadline_later() -> None:
    vm = FakeVm()
    control = VmControl(vm)
    control.set_timeout(0.2)
    control.set_timeout(30)
    assert not vm.wait_ended(0.6)             # the first deadline no longer holds
    assert control.info()["timeout_s"] > 25
    control.set_timeout(0.1)                  # and an earlier one takes effect
    assert vm.wait_ended(5)


def test_vmcontrol_lifetime_thread_leaves_when_vm_ends_first() -> None:
    vm = FakeVm()
    control = VmControl(vm)
    control.set_timeout(60)
    vm.stop()
    assert control._lifetime is not None
    control._lifetime.join(3)
    assert not control._lifetime.is_alive()
    assert vm.ends == [(EndReason.STOPPED, "stopped")]


def test_vmcontrol_info_shows_labels() -> None:
    vm = FakeVm()
    vm.config.labels = (("kvmlite.sandbox", "1"), ("team", "a"))
    assert VmControl(vm).info()["labels"] == {"kvmlite.sandbox": "1", "team": "a"}
