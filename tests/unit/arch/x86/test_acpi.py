"""ACPI tables (ACPI 6.3 §5.2): layout, checksums, fields parsed back, and
the real ACPICA tools (iasl -d, acpiexec) reading what we produce."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest

from kvmlite.arch.x86 import layout
from kvmlite.arch.x86.acpi import AcpiConfig, VirtioMmioDevice, build_acpi_tables, pm
from kvmlite.arch.x86.acpi.builder import AcpiImage
from kvmlite.errors import ConfigError

from .acpica_tools import acpiexec, compile_data_table, disassemble, problems, recompile

MMIO64 = (0x10_0000_0000, 0x10_0000_0000)
VIRTIO = (VirtioMmioDevice(0xD000_0000, 0x1000, 16), VirtioMmioDevice(0xD000_1000, 0x1000, 17))


def full_config(num_cpus: int = 4) -> AcpiConfig:
    return AcpiConfig(num_cpus=num_cpus, serial_ports=(1, 2), i8042=True,
                      pci_mmio64=MMIO64, virtio_mmio=VIRTIO)


def tables_by_signature(image: AcpiImage) -> dict[str, tuple[int, bytes]]:
    named = {}
    for addr, blob in image.blobs:
        sig = "RSDP" if blob.startswith(b"RSD PTR ") else blob[:4].decode()
        named[sig] = (addr, blob)
    return named


@pytest.fixture
def tables() -> dict[str, tuple[int, bytes]]:
    return tables_by_signature(build_acpi_tables(full_config()))


def sdt_blobs(tables: dict[str, tuple[int, bytes]]) -> dict[str, bytes]:
    return {sig: blob for sig, (_, blob) in tables.items() if sig not in ("RSDP", "FACS")}


def madt_entries(blob: bytes) -> list[tuple[int, bytes]]:
    """(type, entry bytes) for each interrupt controller structure."""
    entries, offset = [], 44
    while offset < len(blob):
        etype, elen = blob[offset], blob[offset + 1]
        entries.append((etype, blob[offset:offset + elen]))
        offset += elen
    return entries


# --- layout and checksums ---

def test_build_acpi_tables_rsdp_at_acpi_start(tables: dict[str, tuple[int, bytes]]) -> None:
    # Act
    image = build_acpi_tables(full_config())
    # Assert
    assert image.rsdp_addr == layout.ACPI_START == tables["RSDP"][0]


def test_build_acpi_tables_blobs_aligned_disjoint_inside_region() -> None:
    # Act
    image = build_acpi_tables(full_config())
    # Assert
    spans = sorted((addr, addr + len(blob)) for addr, blob in image.blobs)
    assert all(addr % 16 == 0 for addr, _ in spans)
    assert all(end <= nxt for (_, end), (nxt, _) in zip(spans, spans[1:]))
    assert spans[0][0] >= layout.ACPI_START and spans[-1][1] <= layout.ACPI_END


def test_sdt_tables_checksums_sum_to_zero_and_lengths_match(tables: dict[str, tuple[int, bytes]]) -> None:
    for sig, blob in sdt_blobs(tables).items():
        (length,) = struct.unpack_from("<I", blob, 4)
        assert length == len(blob), sig
        assert sum(blob) % 256 == 0, sig
        assert blob[10:16] == b"KVMLIT", sig


def test_rsdp_both_checksums_and_xsdt_pointer(tables: dict[str, tuple[int, bytes]]) -> None:
    # Arrange
    _, rsdp = tables["RSDP"]
    # Act
    sig, _, oem, rev, rsdt, length, xsdt, _ = struct.unpack("<8sB6sBIIQB3x", rsdp)
    # Assert
    assert (sig, oem, rev, rsdt, length) == (b"RSD PTR ", b"KVMLIT", 2, 0, 36)
    assert sum(rsdp[:20]) % 256 == 0 and sum(rsdp) % 256 == 0
    assert xsdt == tables["XSDT"][0]


def test_xsdt_points_at_fadt_and_madt(tables: dict[str, tuple[int, bytes]]) -> None:
    # Arrange
    _, xsdt = tables["XSDT"]
    # Act
    entries = struct.unpack_from(f"<{(len(xsdt) - 36) // 8}Q", xsdt, 36)
    # Assert
    assert sorted(entries) == sorted([tables["FACP"][0], tables["APIC"][0]])


def test_facs_is_64_byte_aligned_with_signature_and_length(tables: dict[str, tuple[int, bytes]]) -> None:
    addr, facs = tables["FACS"]
    assert addr % 64 == 0
    assert facs[:4] == b"FACS" and struct.unpack_from("<I", facs, 4)[0] == 64 == len(facs)


# --- FADT (§5.2.9) ---

def test_fadt_points_at_facs_and_dsdt_in_32_and_64_bit_fields(tables: dict[str, tuple[int, bytes]]) -> None:
    # Arrange
    _, fadt = tables["FACP"]
    # Act
    facs32, dsdt32 = struct.unpack_from("<II", fadt, 36)
    facs64, dsdt64 = struct.unpack_from("<QQ", fadt, 132)
    # Assert
    assert facs32 == facs64 == tables["FACS"][0]
    assert dsdt32 == dsdt64 == tables["DSDT"][0]


def test_fadt_pm_blocks_match_layout_ports(tables: dict[str, tuple[int, bytes]]) -> None:
    # Arrange
    _, fadt = tables["FACP"]
    # Act
    sci = struct.unpack_from("<H", fadt, 46)[0]
    smi_cmd = struct.unpack_from("<I", fadt, 48)[0]
    pm1a_evt, pm1b_evt, pm1a_cnt, _, pm2, tmr, gpe0, gpe1 = struct.unpack_from("<8I", fadt, 56)
    evt_len, cnt_len, pm2_len, tmr_len, gpe0_len, gpe1_len = struct.unpack_from("<6B", fadt, 88)
    # Assert
    assert (fadt[8], len(fadt), fadt[131]) == (6, 276, 3)
    assert sci == layout.IRQ_ACPI_SCI and smi_cmd == 0
    assert (pm1a_evt, pm1a_cnt, tmr) == (layout.PORT_ACPI_PM1A_EVT, layout.PORT_ACPI_PM1A_CNT,
                                         layout.PORT_ACPI_PM_TMR)
    assert (pm1b_evt, pm2, gpe0, gpe1) == (0, 0, layout.PORT_ACPI_GPE0, 0)
    assert (evt_len, cnt_len, pm2_len, tmr_len, gpe0_len, gpe1_len) == (4, 2, 0, 4, 2, 0)


@pytest.mark.parametrize("offset, port, bits", [
    (148, layout.PORT_ACPI_PM1A_EVT, 32),
    (172, layout.PORT_ACPI_PM1A_CNT, 16),
    (208, layout.PORT_ACPI_PM_TMR, 32),
    (220, layout.PORT_ACPI_GPE0, 16),
])
def test_fadt_x_blocks_are_system_io_generic_addresses(tables: dict[str, tuple[int, bytes]],
                                                       offset: int, port: int, bits: int) -> None:
    # Act
    space, width, bit_offset, _, address = struct.unpack_from("<BBBBQ", tables["FACP"][1], offset)
    # Assert
    assert (space, width, bit_offset, address) == (1, bits, 0, port)


def test_fadt_flags_full_acpi_with_reset_register(tables: dict[str, tuple[int, bytes]]) -> None:
    # Arrange
    _, fadt = tables["FACP"]
    # Act
    boot_arch = struct.unpack_from("<H", fadt, 109)[0]
    flags = struct.unpack_from("<I", fadt, 112)[0]
    reset = struct.unpack_from("<BBBBQ", fadt, 116)
    reset_value = fadt[128]
    # Assert
    assert flags & (1 << 20) == 0                      # not HW_REDUCED_ACPI
    assert flags & (1 << 10) and flags & (1 << 0)      # RESET_REG_SUP, WBINVD
    assert flags & (1 << 4) == 0                       # fixed power button present
    assert flags & (1 << 8)                            # 32-bit PM timer
    assert boot_arch & 0b11 == 0b11                    # LEGACY_DEVICES, 8042
    assert reset == (1, 8, 0, 1, layout.PORT_ACPI_RESET)
    assert reset_value == layout.ACPI_RESET_VALUE


def test_fadt_without_i8042_clears_8042_flag() -> None:
    # Arrange
    config = AcpiConfig(num_cpus=1, i8042=False)
    # Act
    _, fadt = tables_by_signature(build_acpi_tables(config))["FACP"]
    # Assert
    assert struct.unpack_from("<H", fadt, 109)[0] & 0b10 == 0


# --- MADT (§5.2.12) ---

@pytest.mark.parametrize("num_cpus", [1, 4, 254])
def test_madt_lists_one_enabled_lapic_per_vcpu(num_cpus: int) -> None:
    # Act
    _, madt = tables_by_signature(build_acpi_tables(AcpiConfig(num_cpus=num_cpus)))["APIC"]
    # Assert
    lapics = [struct.unpack("<BBBBI", e) for t, e in madt_entries(madt) if t == 0]
    assert [(uid, apic_id, flags) for _, _, uid, apic_id, flags in lapics] == \
        [(cpu, cpu, 1) for cpu in range(num_cpus)]
    assert sum(madt) % 256 == 0


def test_madt_header_lapic_address_and_pcat_compat(tables: dict[str, tuple[int, bytes]]) -> None:
    lapic_addr, flags = struct.unpack_from("<II", tables["APIC"][1], 36)
    assert (lapic_addr, flags) == (layout.LAPIC_ADDR, 1)


def test_madt_ioapic_after_cpus_at_gsi_zero(tables: dict[str, tuple[int, bytes]]) -> None:
    # Act
    ioapics = [struct.unpack("<BBBBII", e) for t, e in madt_entries(tables["APIC"][1]) if t == 1]
    # Assert
    assert ioapics == [(1, 12, 4, 0, layout.IOAPIC_ADDR, 0)]


def test_madt_overrides_irq0_to_gsi2_and_sci_level_high(tables: dict[str, tuple[int, bytes]]) -> None:
    # Act
    overrides = [struct.unpack("<BBBBIH", e)[2:] for t, e in madt_entries(tables["APIC"][1]) if t == 2]
    # Assert: (bus, source, gsi, flags); flags = trigger << 2 | polarity
    assert overrides == [(0, 0, 2, 0b0101), (0, 9, 9, 0b1101)]


def test_madt_nmi_on_lint1_of_all_processors(tables: dict[str, tuple[int, bytes]]) -> None:
    nmis = [struct.unpack("<BBBHB", e)[2:] for t, e in madt_entries(tables["APIC"][1]) if t == 4]
    assert nmis == [(0xFF, 0b0101, 1)]


# --- DSDT content, through the real disassembler ---

def test_dsdt_disassembles_with_s5_pci0_windows(tmp_path: Path, tables: dict[str, tuple[int, bytes]]) -> None:
    # Act
    output, dsl = disassemble(tmp_path, tables["DSDT"][1], "dsdt")
    # Assert
    assert problems(output) == [] and problems(dsl) == []
    s5 = re.search(r"Name \(\\_S5, Package \(0x04\)[^{]*\{\s*([^}]*)\}", dsl)
    assert s5 and [v.strip() for v in s5.group(1).split(",")] == ["0x05", "0x05", "Zero", "Zero"]
    pci0 = dsl[dsl.index("Device (PCI0)"):]
    assert 'Name (_HID, EisaId ("PNP0A03")' in pci0 and 'Name (_CID, EisaId ("PNP0A03")' in pci0
    for field in ("_ADR", "_UID", "_SEG", "_BBN"):
        assert f"Name ({field}, Zero)" in pci0


def flat(dsl: str) -> str:
    """Disassembly without comments, whitespace collapsed to single spaces."""
    dsl = re.sub(r"/\*.*?\*/", " ", dsl, flags=re.DOTALL)
    dsl = re.sub(r"//[^\n]*", " ", dsl)
    return re.sub(r"\s+", " ", dsl)


def crs_windows(dsl: str) -> list[tuple[str, int, int]]:
    """(kind, minimum, maximum) of each address descriptor in PCI0's _CRS."""
    text = flat(dsl)
    crs = text[text.index("Device (PCI0)"):]
    crs = crs[crs.index("Name (_CRS"):crs.index("Name (_PRT")]
    found = re.findall(r"(\w+) \(ResourceProducer,[A-Za-z, ]*, (0x\w+), (0x\w+), (0x\w+),", crs)
    return [(kind, int(lo, 16), int(hi, 16)) for kind, _, lo, hi in found]


def test_dsdt_pci0_crs_has_bus_io_and_mmio_windows(tmp_path: Path,
                                                   tables: dict[str, tuple[int, bytes]]) -> None:
    # Act
    _, dsl = disassemble(tmp_path, tables["DSDT"][1], "dsdt")
    # Assert
    assert crs_windows(dsl) == [
        ("WordBusNumber", 0, 0xFF),
        ("WordIO", 0, 0x0CF7),
        ("WordIO", 0x0D00, 0xFFFF),
        ("DWordMemory", layout.PCI_MMIO_START, layout.PCI_MMIO_END - 1),
        ("QWordMemory", MMIO64[0], MMIO64[0] + MMIO64[1] - 1),
    ]


def test_dsdt_without_mmio64_has_no_qword_window(tmp_path: Path) -> None:
    # Arrange
    image = build_acpi_tables(AcpiConfig(num_cpus=1))
    # Act
    _, dsl = disassemble(tmp_path, tables_by_signature(image)["DSDT"][1], "dsdt")
    # Assert
    assert [kind for kind, _, _ in crs_windows(dsl)] == \
        ["WordBusNumber", "WordIO", "WordIO", "DWordMemory"]


def test_dsdt_prt_routes_every_slot_pin_with_swizzle(tmp_path: Path,
                                                     tables: dict[str, tuple[int, bytes]]) -> None:
    # Act
    _, dsl = disassemble(tmp_path, tables["DSDT"][1], "dsdt")
    # Assert
    prt = dsl[dsl.index("Name (_PRT"):]
    entries = re.findall(r"Package \(0x04\)\s*\{\s*0x(\w+),\s*(\w+),\s*Zero,\s*(\w+)\s*\}", prt)
    pins = {"Zero": 0, "One": 1, "0x02": 2, "0x03": 3}
    routed = {(int(adr, 16) >> 16, pins[pin]): int(gsi, 16) for adr, pin, gsi in entries}
    assert len(entries) == 31 * 4 == len(routed)
    assert all(int(adr, 16) & 0xFFFF == 0xFFFF for adr, _, _ in entries)
    assert routed[(1, 0)] == 11 and routed[(2, 0)] == 14 and routed[(4, 3)] == 15
    assert all(gsi == layout.IRQ_PCI_INTX[(slot + pin) % 4] for (slot, pin), gsi in routed.items())


def test_dsdt_lists_uarts_keyboard_virtio_and_cpus(tmp_path: Path,
                                                   tables: dict[str, tuple[int, bytes]]) -> None:
    # Act
    _, dsl = disassemble(tmp_path, tables["DSDT"][1], "dsdt")
    # Assert
    text = flat(dsl)
    assert text.count('EisaId ("PNP0501")') == 2
    assert "IO (Decode16, 0x03F8, 0x03F8, 0x01, 0x08, ) IRQNoFlags () {4}" in text
    assert "IO (Decode16, 0x02F8, 0x02F8, 0x01, 0x08, ) IRQNoFlags () {3}" in text
    assert 'EisaId ("PNP0303")' in text
    assert "IO (Decode16, 0x0064, 0x0064, 0x01, 0x01, ) IRQNoFlags () {1}" in text
    assert text.count('"LNRO0005"') == 2
    assert ("Memory32Fixed (ReadWrite, 0xD0001000, 0x00001000, ) "
            "Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, ) { 0x00000011, }") in text
    assert text.count('"ACPI0007"') == 4


def test_dsdt_optional_devices_absent_when_not_configured(tmp_path: Path) -> None:
    # Arrange
    config = AcpiConfig(num_cpus=1, serial_ports=(), i8042=False)
    # Act
    _, dsl = disassemble(tmp_path, tables_by_signature(build_acpi_tables(config))["DSDT"][1], "dsdt")
    # Assert
    assert "PNP0501" not in dsl and "PNP0303" not in dsl and "LNRO0005" not in dsl
    assert "Device (PCI0)" in dsl


def test_dsdt_survives_iasl_round_trip(tmp_path: Path, tables: dict[str, tuple[int, bytes]]) -> None:
    # Arrange
    ours = tables["DSDT"][1]
    disassemble(tmp_path, ours, "dsdt")
    # Act
    theirs = recompile(tmp_path, "dsdt")
    # Assert: same AML except End Tag checksums, which iasl writes as 0
    assert len(theirs) == len(ours)
    diffs = [i for i in range(36, len(ours)) if ours[i] != theirs[i]]
    assert all(ours[i - 1] == 0x79 and theirs[i] == 0 for i in diffs)


# --- every data table through iasl ---

@pytest.mark.parametrize("sig", ["XSDT", "FACP", "APIC"])
def test_data_tables_disassemble_and_recompile_identically(tmp_path: Path, sig: str,
                                                           tables: dict[str, tuple[int, bytes]]) -> None:
    # Arrange
    ours = tables[sig][1]
    # Act
    output, dsl = disassemble(tmp_path, ours, sig.lower())
    theirs = recompile(tmp_path, sig.lower())
    # Assert
    assert problems(output) == [] and problems(dsl) == []
    assert sum(theirs) % 256 == 0
    # iasl stamps its own creator id/revision (offsets 28..35), hence its checksum
    assert theirs[:9] + theirs[10:28] + theirs[36:] == ours[:9] + ours[10:28] + ours[36:]


def test_facs_disassembles_and_recompiles_identically(tmp_path: Path,
                                                      tables: dict[str, tuple[int, bytes]]) -> None:
    # Arrange
    ours = tables["FACS"][1]
    # Act
    output, dsl = disassemble(tmp_path, ours, "facs")
    theirs = recompile(tmp_path, "facs")
    # Assert: the FACS has neither a standard header nor a checksum
    assert problems(output) == [] and problems(dsl) == []
    assert "Version : 02" in flat(dsl)
    assert theirs == ours


def test_rsdp_matches_iasl_data_table_compiler(tmp_path: Path, tables: dict[str, tuple[int, bytes]]) -> None:
    # Arrange: iasl -d cannot read a bare RSDP, but its compiler can build one
    xsdt_addr = tables["XSDT"][0]
    source = (
        '[0008] Signature : "RSD PTR "\n[0001] Checksum : 00\n[0006] Oem ID : "KVMLIT"\n'
        "[0001] Revision : 02\n[0004] RSDT Address : 00000000\n[0004] Length : 00000024\n"
        f"[0008] XSDT Address : {xsdt_addr:016X}\n[0001] Extended Checksum : 00\n"
        "[0003] Reserved : 000000\n"
    )
    # Act
    theirs = compile_data_table(tmp_path, source, "rsdp")
    # Assert
    assert theirs == tables["RSDP"][1]


# --- the ACPICA interpreter loading the namespace ---

def test_acpiexec_loads_tables_and_evaluates_s5_and_crs(tmp_path: Path,
                                                         tables: dict[str, tuple[int, bytes]]) -> None:
    # Arrange
    blobs = {sig: tables[sig][1] for sig in ("FACP", "DSDT", "APIC")}
    # Act
    out = acpiexec(tmp_path, blobs, ["evaluate \\_S5", "evaluate \\_SB.PCI0._PRT",
                                     "evaluate \\_SB.VR01._CRS"])
    # Assert
    assert "ACPI Error" not in out and "ACPI Warning" not in out and "Firmware Warning" not in out
    s5 = out[out.index("Evaluation of \\_S5"):]
    assert re.findall(r"\[Integer\] = (\w+)", s5)[:4] == [f"{pm.SLP_TYP_S5:016X}"] * 2 + ["0" * 16] * 2
    assert "Evaluation of \\_SB.PCI0._PRT" in out and "[Package] Contains 124 Elements" in out
    assert "86 09 00 01 00 10 00 D0 00 10 00 00 89 06 00 03" in out


# --- configuration errors ---

def test_build_acpi_tables_region_too_small_raises() -> None:
    with pytest.raises(ConfigError, match="do not fit"):
        build_acpi_tables(full_config(), end=layout.ACPI_START + 1024)


@pytest.mark.parametrize("kwargs", [
    {"num_cpus": 0},
    {"num_cpus": 255},
    {"num_cpus": 1, "serial_ports": (5,)},
    {"num_cpus": 1, "serial_ports": (1, 1)},
    {"num_cpus": 1, "pci_mmio64": (0xC000_0000, 0x1000)},
    {"num_cpus": 1, "virtio_mmio": (VirtioMmioDevice(0xD000_0000, 0x1000, 24),)},
    {"num_cpus": 1, "virtio_mmio": (VirtioMmioDevice(0xFFFF_F000, 0x2000, 16),)},
    {"num_cpus": 1, "virtio_mmio": tuple(VirtioMmioDevice(0xD000_0000 + i * 0x1000, 0x1000, 16)
                                         for i in range(layout.VIRTIO_MMIO_MAX + 1))},
], ids=["no-cpu", "too-many-cpus", "com5", "duplicate-com", "mmio64-low", "gsi-24",
        "virtio-past-4g", "too-many-virtio"])
def test_acpi_config_invalid_raises(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        AcpiConfig(**kwargs)  # type: ignore[arg-type]


def test_pm_is_poweroff_only_for_slp_en_with_s5_type() -> None:
    s5 = pm.SLP_TYP_S5 << pm.PM1_CNT_SLP_TYP_SHIFT
    assert pm.is_poweroff(s5 | pm.PM1_CNT_SLP_EN | pm.PM1_CNT_SCI_EN)
    assert not pm.is_poweroff(s5)                                   # SLP_EN not set yet
    assert not pm.is_poweroff((1 << pm.PM1_CNT_SLP_TYP_SHIFT) | pm.PM1_CNT_SLP_EN)


def test_acpiexec_vm_generation_id_device_and_gpe_handler(tmp_path: Path,
                                                          tables: dict[str, tuple[int, bytes]]) -> None:
    # Arrange
    blobs = {sig: tables[sig][1] for sig in ("FACP", "DSDT", "APIC")}
    # Act: what Linux's vmgenid driver evaluates, and the GPE method the SCI runs
    out = acpiexec(tmp_path, blobs, ["evaluate \\_SB.VGEN._CID", "evaluate \\_SB.VGEN.ADDR",
                                     f"evaluate \\_GPE._E{pm.GPE_VMGENID:02X}"])
    # Assert
    assert "ACPI Error" not in out and "ACPI Warning" not in out
    assert "VM_GEN_COUNTER" in out
    addr = out[out.index("Evaluation of \\_SB.VGEN.ADDR"):]
    assert re.findall(r"\[Integer\] = (\w+)", addr)[:2] == [f"{layout.VMGENID_ADDR:016X}", "0" * 16]
    assert "ACPI: Enabled 1 GPEs in block 00 to 07" in out          # ACPICA enables the GPE that has a method
    assert "Received a Device Notify on [VGEN]" in out and "Value 0x80" in out, out[-800:]
