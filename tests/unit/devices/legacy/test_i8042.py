"""The i8042 and its keyboard, driven like Linux's i8042.c and atkbd.c."""

from __future__ import annotations

import random

from kvmlite.arch.x86 import layout
from kvmlite.devices.irq import RecordingIrqLine
from kvmlite.devices.legacy import i8042 as kbc
from kvmlite.devices.legacy.i8042 import I8042

from .portio import PortIo

DATA = layout.PORT_I8042_DATA
STATUS = layout.PORT_I8042_STATUS


class Rig:
    def __init__(self, aux_irq: bool = True) -> None:
        self.kbd_irq = RecordingIrqLine()
        self.aux_irq = RecordingIrqLine()
        self.resets = 0
        self.kbc = I8042(self.kbd_irq, reset=self._reset, aux_irq=self.aux_irq if aux_irq else None)
        self.io = PortIo()
        self.io.bus.register(DATA, self.kbc.data.length, self.kbc.data, "i8042-data")
        self.io.bus.register(STATUS, self.kbc.command.length, self.kbc.command, "i8042-command")

    def _reset(self) -> None:
        self.resets += 1

    def status(self) -> int:
        return self.io.inb(STATUS)

    def command(self, cmd: int, *args: int, replies: int = 0) -> list[int]:
        """i8042.c __i8042_command: command, arguments, then the replies."""
        assert not self.status() & kbc.STS_IBF
        self.io.outb(STATUS, cmd)
        for arg in args:
            self.io.outb(DATA, arg)
        return [self.read_byte() for _ in range(replies)]

    def read_byte(self) -> int:
        assert self.status() & kbc.STS_OBF, "i8042_wait_read would time out"
        return self.io.inb(DATA)

    def flush(self) -> list[int]:
        """i8042_flush: read while OBF, giving up after 16 bytes."""
        got: list[int] = []
        while self.status() & kbc.STS_OBF and len(got) <= 16:
            got.append(self.io.inb(DATA))
        return got

    def kbd_command(self, *data: int, replies: int) -> list[int]:
        """ps2_command: bytes to port 0x60; each reply arrives with an IRQ 1 edge."""
        for byte in data:
            self.io.outb(DATA, byte)
        got = []
        for _ in range(replies):
            assert self.kbd_irq.level, "no IRQ 1 for a pending reply"
            got.append(self.read_byte())
        return got

    def linux_init(self) -> None:
        """i8042_controller_init + i8042_enable_kbd_port."""
        self.flush()
        assert self.command(0x20, replies=1) == self.command(0x20, replies=1)
        ctr = self.command(0x20, replies=1)[0]
        self.command(0x60, (ctr | kbc.CTR_KBDDIS) & ~kbc.CTR_KBDINT)
        self.flush()
        ctr = self.command(0x20, replies=1)[0]
        self.command(0x60, (ctr & ~kbc.CTR_KBDDIS) | kbc.CTR_KBDINT)


# --- controller ---

def test_i8042_self_test_answers_0x55() -> None:
    rig = Rig()

    assert rig.command(kbc.CMD_SELF_TEST, replies=1) == [kbc.SELF_TEST_OK]


def test_i8042_power_on_status_has_sys_flag_and_no_keylock() -> None:
    rig = Rig()

    status = rig.status()

    assert status & kbc.STS_SYS and status & kbc.STS_UNLOCKED
    assert not status & (kbc.STS_OBF | kbc.STS_IBF)


def test_i8042_a2_bit_tells_command_writes_from_data_writes() -> None:
    rig = Rig()

    rig.io.outb(STATUS, 0xAE)
    after_command = rig.status() & kbc.STS_A2
    rig.io.outb(DATA, 0xF4)
    after_data = rig.status() & kbc.STS_A2

    assert (after_command, after_data) == (kbc.STS_A2, 0)


def test_i8042_command_byte_starts_translated_and_reads_back_writes() -> None:
    rig = Rig()

    initial = rig.command(0x20, replies=1)[0]
    rig.command(0x60, 0x47)

    assert initial & kbc.CTR_XLAT
    assert rig.command(0x20, replies=1) == [0x47]


def test_i8042_linux_init_leaves_keyboard_enabled_with_irq() -> None:
    rig = Rig()

    rig.linux_init()

    ctr = rig.kbc.command_byte
    assert ctr & kbc.CTR_KBDINT and not ctr & kbc.CTR_KBDDIS
    assert rig.flush() == []


def test_i8042_controller_ram_bytes_are_readable_and_writable() -> None:
    rig = Rig()

    rig.command(0x65, 0x99)

    assert rig.command(0x25, replies=1) == [0x99]


def test_i8042_reply_to_controller_command_raises_irq1_when_enabled() -> None:
    rig = Rig()

    rig.io.outb(STATUS, kbc.CMD_SELF_TEST)
    raised = rig.kbd_irq.level
    rig.io.inb(DATA)

    assert raised is True and rig.kbd_irq.level is False


def test_i8042_empty_output_buffer_reads_last_byte_again() -> None:
    rig = Rig()
    rig.command(kbc.CMD_SELF_TEST, replies=1)

    assert rig.io.inb(DATA) == kbc.SELF_TEST_OK
    assert not rig.status() & kbc.STS_OBF


# --- reset lines ---

def test_i8042_pulse_fe_resets_cpu() -> None:
    rig = Rig()

    rig.io.outb(STATUS, 0xFE)

    assert rig.resets == 1
    assert rig.kbc.stats()["resets"] == 1


def test_i8042_pulse_ff_pulses_nothing() -> None:
    rig = Rig()

    rig.io.outb(STATUS, 0xFF)

    assert rig.resets == 0


def test_i8042_output_port_write_with_reset_bit_clear_resets() -> None:
    rig = Rig()

    rig.command(kbc.CMD_WRITE_OUTPUT_PORT, 0xDF)   # A20 on, reset line released
    calm = rig.resets
    rig.command(kbc.CMD_WRITE_OUTPUT_PORT, 0xDE)   # reset line pulled low

    assert (calm, rig.resets) == (0, 1)


def test_i8042_output_port_reads_a20_on() -> None:
    rig = Rig()

    port = rig.command(kbc.CMD_READ_OUTPUT_PORT, replies=1)[0]

    assert port & kbc.OUTPUT_PORT_A20 and port & kbc.OUTPUT_PORT_RESET


# --- aux port: present, nothing plugged in ---

def test_i8042_aux_loop_echoes_with_auxb_and_raises_irq12() -> None:
    rig = Rig()
    rig.command(0x60, kbc.CTR_AUXINT | kbc.CTR_KBDINT | kbc.CTR_SYS | kbc.CTR_XLAT)

    rig.command(kbc.CMD_WRITE_AUX_BUFFER, 0x5A)
    status = rig.status()
    irqs = (rig.aux_irq.level, rig.kbd_irq.level)

    assert status & kbc.STS_AUXB and status & kbc.STS_OBF
    assert irqs == (True, False)
    assert rig.io.inb(DATA) == 0x5A
    assert rig.aux_irq.level is False


def test_i8042_aux_toggle_commands_flip_command_byte_bit() -> None:
    # i8042_check_aux's "bit assignment test"
    rig = Rig()

    rig.command(kbc.CMD_AUX_DISABLE)
    disabled = rig.command(0x20, replies=1)[0] & kbc.CTR_AUXDIS
    rig.command(kbc.CMD_AUX_ENABLE)
    enabled = rig.command(0x20, replies=1)[0] & kbc.CTR_AUXDIS

    assert (disabled, enabled) == (kbc.CTR_AUXDIS, 0)


def test_i8042_byte_to_absent_mouse_times_out() -> None:
    rig = Rig()

    rig.command(kbc.CMD_WRITE_AUX, 0xF2)          # psmouse GETID
    status = rig.status()

    assert status & (kbc.STS_AUXB | kbc.STS_TIMEOUT) == kbc.STS_AUXB | kbc.STS_TIMEOUT
    assert rig.io.inb(DATA) == kbc.AUX_NO_DEVICE


def test_i8042_without_aux_irq_still_answers_aux_loop() -> None:
    rig = Rig(aux_irq=False)

    assert rig.command(kbc.CMD_WRITE_AUX_BUFFER, 0xA5, replies=1) == [0xA5]


# --- keyboard, as atkbd probes it ---

def test_i8042_atkbd_getid_through_translation_reads_ab41() -> None:
    rig = Rig()
    rig.linux_init()

    assert rig.kbd_command(0xF2, replies=3) == [0xFA, 0xAB, 0x41]


def test_i8042_atkbd_getid_untranslated_reads_ab83() -> None:
    rig = Rig()
    rig.command(0x60, kbc.CTR_KBDINT | kbc.CTR_SYS)

    assert rig.kbd_command(0xF2, replies=3) == [0xFA, 0xAB, 0x83]


def test_i8042_each_keyboard_byte_is_a_new_irq1_edge() -> None:
    rig = Rig()
    rig.linux_init()
    edges = rig.kbd_irq.edges

    rig.kbd_command(0xF2, replies=3)

    assert rig.kbd_irq.edges == edges + 3
    assert rig.kbd_irq.level is False


def test_i8042_atkbd_bind_sequence_is_acknowledged() -> None:
    rig = Rig()
    rig.linux_init()

    deactivate = rig.kbd_command(0xF5, replies=1)
    leds = rig.kbd_command(0xED, 0x02, replies=2)
    rate = rig.kbd_command(0xF3, 0x00, replies=2)
    activate = rig.kbd_command(0xF4, replies=1)

    assert deactivate + leds + rate + activate == [0xFA] * 6
    assert rig.kbc.keyboard.leds == 0x02 and rig.kbc.keyboard.scanning


def test_i8042_keyboard_reset_answers_ack_then_bat() -> None:
    rig = Rig()
    rig.linux_init()

    assert rig.kbd_command(0xFF, replies=2) == [0xFA, 0xAA]


def test_i8042_scancode_set_query_answers_current_set() -> None:
    rig = Rig()
    rig.command(0x60, kbc.CTR_KBDINT | kbc.CTR_SYS)    # untranslated

    rig.kbd_command(0xF0, 0x03, replies=2)
    current = rig.kbd_command(0xF0, 0x00, replies=3)

    assert current == [0xFA, 0xFA, 0x03]


def test_i8042_scancode_set_query_is_translated_like_any_keyboard_byte() -> None:
    rig = Rig()
    rig.linux_init()

    assert rig.kbd_command(0xF0, 0x00, replies=3) == [0xFA, 0xFA, 0x41]


def test_i8042_unknown_keyboard_command_answers_resend() -> None:
    rig = Rig()
    rig.linux_init()

    assert rig.kbd_command(0xE5, replies=1) == [0xFE]


def test_i8042_echo_answers_ee() -> None:
    rig = Rig()
    rig.linux_init()

    assert rig.kbd_command(0xEE, replies=1) == [0xEE]


# --- keys ---

def test_i8042_ctrl_alt_del_arrives_as_set1_with_translation() -> None:
    rig = Rig()
    rig.linux_init()

    accepted = rig.kbc.send_ctrl_alt_del()

    assert accepted
    assert rig.flush() == [0x1D, 0x38, 0xE0, 0x53, 0xE0, 0xD3, 0xB8, 0x9D]


def test_i8042_ctrl_alt_del_arrives_as_set2_without_translation() -> None:
    rig = Rig()
    rig.command(0x60, kbc.CTR_KBDINT | kbc.CTR_SYS)

    rig.kbc.send_ctrl_alt_del()

    assert rig.flush() == [0x14, 0x11, 0xE0, 0x71, 0xE0, 0xF0, 0x71, 0xF0, 0x11, 0xF0, 0x14]


def test_i8042_key_release_prefix_is_folded_into_bit7() -> None:
    rig = Rig()
    rig.linux_init()

    rig.kbc.send_scancodes(bytes([0x1C, 0xF0, 0x1C]))    # 'a' pressed, released

    assert rig.flush() == [0x1E, 0x9E]


def test_i8042_keys_raise_irq1_only_when_kbdint_set() -> None:
    rig = Rig()
    rig.command(0x60, kbc.CTR_XLAT | kbc.CTR_SYS)        # KBDINT clear

    rig.kbc.send_scancodes(bytes([0x1C]))

    assert rig.status() & kbc.STS_OBF
    assert rig.kbd_irq.level is False


def test_i8042_disabled_interface_holds_keys_until_enabled() -> None:
    rig = Rig()
    rig.linux_init()
    rig.command(kbc.CMD_KBD_DISABLE)

    rig.kbc.send_scancodes(bytes([0x1C]))
    held = rig.status() & kbc.STS_OBF
    rig.command(kbc.CMD_KBD_ENABLE)

    assert held == 0
    assert rig.flush() == [0x1E]


def test_i8042_keyboard_with_scanning_off_drops_keys() -> None:
    rig = Rig()
    rig.linux_init()
    rig.kbd_command(0xF5, replies=1)

    accepted = rig.kbc.send_scancodes(bytes([0x1C]))

    assert accepted is False
    assert rig.flush() == []
    assert rig.kbc.stats()["keys_dropped"] == 1


def test_i8042_pending_keys_never_exceed_linux_flush_limit() -> None:
    rig = Rig()

    for _ in range(10):
        rig.kbc.send_ctrl_alt_del()

    flushed = rig.flush()
    assert 0 < len(flushed) <= 16


def test_i8042_garbage_from_guest_never_raises_and_controller_recovers() -> None:
    rig = Rig()
    rng = random.Random(42)

    for _ in range(5000):
        port, width = rng.choice((DATA, STATUS)), rng.choice((1, 2, 4))
        if rng.random() < 0.5:
            rig.io.bus.write(port, rng.randbytes(width))
        else:
            rig.io.bus.read(port, memoryview(bytearray(width)))
        if rng.random() < 0.05:
            rig.kbc.send_scancodes(rng.randbytes(3))
    rig.command(0x60, kbc.CTR_AFTER_POST)
    while rig.status() & kbc.STS_OBF:
        rig.io.inb(DATA)

    assert rig.command(kbc.CMD_SELF_TEST, replies=1) == [kbc.SELF_TEST_OK]
