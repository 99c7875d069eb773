"""bench/device_cost.py measures the devices' Python natively (no KVM), and
its nested variant reads the test host's figures back."""

import json

from bench import device_cost
from bench.device_cost_nested import MARK, parse


def test_device_cost_measures_every_figure(monkeypatch) -> None:
    monkeypatch.setattr(device_cost, "P9_ROUNDS", 5)
    monkeypatch.setattr(device_cost, "NET_FRAMES", 10)
    got = device_cost.measure()
    assert set(got) == {"p9_server_us", "p9_device_us", "net_rx_buffers_per_frame", "net_rx_us_per_frame"}
    assert got["net_rx_buffers_per_frame"] == 16
    assert 0 < got["p9_server_us"] < got["p9_device_us"]    # the device path includes the server
    assert got["net_rx_us_per_frame"] > 0


def test_device_cost_nested_parse_gives_slowdowns() -> None:
    here = {"p9_server_us": 10.0, "net_rx_buffers_per_frame": 16}
    console = "boot noise\r\n" + MARK + json.dumps({"p9_server_us": 250.0, "net_rx_buffers_per_frame": 16}) + "\r\n"
    assert parse(console, here) == {"here_p9_server_us": 10.0, "nested_p9_server_us": 250.0,
                                    "slowdown_p9_server_us": 25.0,
                                    "here_net_rx_buffers_per_frame": 16, "nested_net_rx_buffers_per_frame": 16}


def test_device_cost_nested_parse_without_a_result_names_the_console() -> None:
    got = parse("Traceback (most recent call last):\nModuleNotFoundError: No module named 'pytest'\n",
                {"p9_server_us": 10.0})
    assert got["nested_p9_server_us"].startswith("failed: no result from the test host")
    assert "No module named 'pytest'" in got["nested_p9_server_us"]
    assert got["slowdown_p9_server_us"] == got["nested_p9_server_us"]
