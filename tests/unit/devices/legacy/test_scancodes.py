"""The 8042's set 2 -> set 1 translation."""

from __future__ import annotations

from kvmlite.devices.legacy.scancodes import CTRL_ALT_DEL, SET2_TO_SET1, Translator


def translate(codes: bytes) -> bytes:
    t = Translator()
    return bytes(b for b in (t.feed(c) for c in codes) if b is not None)


def test_scancodes_translation_maps_low_codes_onto_distinct_set1_codes() -> None:
    low = [SET2_TO_SET1[c] for c in range(0x80) if c != 0x02]   # 0x02 shares F7's code

    assert len(set(low)) == 127


def test_scancodes_translation_passes_prefixes_and_replies_through() -> None:
    assert [SET2_TO_SET1[c] for c in (0xE0, 0xFA, 0xAA, 0xAB, 0xFE)] == [0xE0, 0xFA, 0xAA, 0xAB, 0xFE]


def test_scancodes_translation_maps_f7_and_mf2_id_byte() -> None:
    assert (SET2_TO_SET1[0x83], SET2_TO_SET1[0x00]) == (0x41, 0xFF)


def test_scancodes_release_prefix_sets_bit7_of_next_code_only() -> None:
    assert translate(bytes([0xF0, 0x1C, 0x1C])) == bytes([0x9E, 0x1E])


def test_scancodes_set2_ctrl_alt_del_translates_to_set1_sequence() -> None:
    assert translate(CTRL_ALT_DEL[2]) == CTRL_ALT_DEL[1]
