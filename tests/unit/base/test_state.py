"""kvmlite.base.state: the checked reader of saved state."""

import pytest

from kvmlite.base.state import Reader, StateError, pack_bytes, unpack_bytes


def test_pack_bytes_round_trips() -> None:
    data = bytes(range(256))
    assert unpack_bytes(pack_bytes(data), size=256) == data


@pytest.mark.parametrize("text, size, message", [
    (5, None, "expected base64 text"),
    ("!!notbase64", None, "not valid base64"),
    (pack_bytes(b"abc"), 4, "3 bytes, expected 4"),
])
def test_unpack_bytes_bad_input_is_one_line_state_error(text, size, message) -> None:
    with pytest.raises(StateError, match=message):
        unpack_bytes(text, "lapic", size)


def test_reader_int_checks_presence_type_and_range() -> None:
    r = Reader({"a": 3, "b": True, "c": "x", "d": 300}, "serial COM1")
    assert r.int("a", 0, 7) == 3
    for key, message in (("z", "lacks 'z'"), ("b", "expected an integer"), ("c", "expected an integer"),
                         ("d", "outside 0..255")):
        with pytest.raises(StateError, match=f"serial COM1: .*{message}"):
            r.int(key, 0, 255)


def test_reader_lists_and_nested_parts_name_the_path() -> None:
    r = Reader({"q": [1, 2, 3], "sub": {"x": "y"}, "bad": [1, -1]}, "virtio-blk0")
    assert r.ints("q", 3) == [1, 2, 3]
    with pytest.raises(StateError, match="has 3 entries, expected 2"):
        r.ints("q", 2)
    with pytest.raises(StateError, match=r"bad\[1\]=-1"):
        r.ints("bad")
    with pytest.raises(StateError, match="virtio-blk0 queue0: x is str"):
        r.sub("sub", "queue0").int("x")
    with pytest.raises(StateError, match="saved state is list"):
        Reader([], "rtc")
