"""The nested network and 9p benchmarks' parsing: medians, ratios in the
right direction, and a failed side reported with its reason, never a blank."""

from __future__ import annotations

from bench import net_nested, p9_nested


def _net_lines(vmm: str, case: str, rtt: str, up: str, down: str) -> str:
    return "\n".join(f"@@NET {vmm} {case} {m} {v}" for m, v in
                     (("rtt_ms", rtt), ("up_mbits", up), ("down_mbits", down))) + "\n"


def test_net_parse_medians_and_ratios() -> None:
    console = (_net_lines("kvmlite", "tap", "2.0", "100", "300") + _net_lines("qemu", "tap", "1.0", "200", "100")
               + _net_lines("kvmlite", "tap", "4.0", "300", "500") + _net_lines("qemu", "tap", "3.0", "400", "300"))
    tap = net_nested.parse(console)["tap"]
    assert tap["kvmlite_up_mbits"] == 200.0 and tap["qemu_up_mbits"] == 300.0
    assert tap["ratio_qemu_up_mbits"] == round(200 / 300, 2)
    assert tap["ratio_qemu_down_mbits"] == 2.0
    # a shorter round trip is better: the RTT ratio is QEMU's over kvmlite's
    assert tap["ratio_qemu_rtt_ms"] == round(2.0 / 3.0, 2)


def test_net_parse_failed_side_names_its_error() -> None:
    console = (_net_lines("kvmlite", "user", "failed", "100", "50")
               + _net_lines("qemu", "user", "1.0", "10", "20")
               + "qemu-system-x86_64: -netdev stream: Could not connect\n")
    user = net_nested.parse(console)["user"]
    assert user["kvmlite_rtt_ms"].startswith("failed: ")
    assert user["ratio_qemu_rtt_ms"].startswith("none: kvmlite")
    assert user["qemu_passt_up_mbits"] == "failed: -netdev stream: Could not connect" or \
        "Could not connect" in user["qemu_passt_up_mbits"]
    assert user["ratio_qemu_up_mbits"] == 10.0
    assert "NaN" not in repr(net_nested.parse(""))


def test_net_guest_command_reads_receiver_rate() -> None:
    cmd = net_nested.guest_command("tap", "192.168.33.1")
    assert "-R" in cmd and "receiver" in cmd and "@@NET $VMM tap up_mbits" in cmd


def test_p9_parse_medians_ratios_and_failures() -> None:
    rows = [("kvmlite", 100, 50), ("qemu", 50, 100), ("kvmlite", 300, 70), ("qemu", 150, 90)]
    console = "".join(f"VMM={v} p9bench mode=seqread bytes=1 files=0 seconds=1 mbps={m} rate={m}\n"
                      f"VMM={v} p9bench mode=meta bytes=0 files=10 seconds=1 mbps=0 rate={r}\n"
                      for v, m, r in rows)
    out = p9_nested.parse(console + "kvmlite: error: cannot open share\n")
    assert out["kvmlite_seqread_MBps"] == 200.0 and out["qemu_seqread_MBps"] == 100.0
    assert out["ratio_seqread"] == 2.0
    assert out["ratio_meta"] == round(60 / 95, 2)
    assert out["kvmlite_seqwrite_MBps"] == "failed: cannot open share" or \
        "cannot open share" in out["kvmlite_seqwrite_MBps"]
    assert out["ratio_seqwrite"].startswith("none: kvmlite")


def test_vsock_parse_medians_ratios_sdk_and_errors() -> None:
    from bench import vsock_nested

    console = ("@@VS kvmlite up_MBps 50\n@@VS qemu up_MBps 100\n@@VS kvmlite up_MBps 70\n@@VS qemu up_MBps 120\n"
               "@@VS kvmlite down_error ConnectionRefusedError: [Errno 111] refused\n"
               "@@VS qemu down_MBps 80\n"
               "@@VS kvmlite run_true_ms 30\n@@VS kvmlite echo_ms 20\n@@VS kvmlite create_to_first_result_s 55.5\n")
    out = vsock_nested.parse(console)
    assert out["kvmlite_up_MBps"] == 60.0 and out["qemu_up_MBps"] == 110.0
    assert out["ratio_up_MBps"] == round(60 / 110, 2)
    assert "ConnectionRefusedError" in out["kvmlite_down_MBps"] and out["kvmlite_down_MBps"].startswith("failed: ")
    assert out["ratio_down_MBps"].startswith("none: kvmlite")
    assert out["run_true_over_echo"] == 1.5 and out["create_to_first_result_s"] == 55.5
    assert out["file_write_MBps"].startswith("failed: ")
    assert "NaN" not in repr(out)


def test_vsock_guest_command_sends_then_receives() -> None:
    from bench import vsock_nested

    cmd = vsock_nested.guest_command()
    assert cmd.index("VSOCK-CONNECT:2:5000") < cmd.index("VSOCK-LISTEN:5001")


def test_snapshot_nested_parse_ratios_and_failures() -> None:
    from bench.snapshot_nested import parse

    out = parse("@@SN kvmlite restore_256_ms 100\n@@SN qemu restore_256_ms 1500\n"
                "@@SN kvmlite warm_restore_256_ms 40\n@@SN qemu warm_restore_256_ms 800\n"
                "@@SN kvmlite warm_restore_2048_ms_error SystemExit: no tick\n@@SN qemu warm_restore_2048_ms 900\n"
                "@@SN kvmlite restore_2048_ms 120\n@@SN qemu restore_2048_ms_error RuntimeError: no tick\n"
                "@@SN kvmlite one_clone_pss_MiB 60\n@@SN kvmlite one_clone_guest_ram_pss_MiB 20\n"
                "@@SN kvmlite clones_10_pss_MiB 400\n@@SN kvmlite clones_10_guest_ram_pss_MiB 30\n"
                "@@SN kvmlite api_one_clone_pss_MiB 40\n@@SN kvmlite api_one_clone_guest_ram_pss_MiB 16\n"
                "@@SN kvmlite api_clones_10_pss_MiB 70\n@@SN kvmlite api_clones_10_guest_ram_pss_MiB 32\n"
                "@@SN kvmlite sdk_cold_create_s 50\n@@SN kvmlite sdk_snapshot_create_s 10\n")
    assert out["qemu_over_kvmlite_restore_256"] == 15.0
    assert out["api_clones_10_over_one"] == 1.75 and out["api_clones_10_guest_ram_pss_MiB"] == 32
    assert out["qemu_restore_2048_ms"] == "failed: RuntimeError: no tick"
    assert out["qemu_over_kvmlite_restore_2048"].startswith("none: the baseline failed")
    assert out["kvmlite_restore_2048_over_256"] == 1.2
    assert out["qemu_over_kvmlite_warm_restore_256"] == 20.0
    assert out["kvmlite_warm_restore_2048_ms"] == "failed: SystemExit: no tick"
    assert out["qemu_over_kvmlite_warm_restore_2048"].startswith("none: kvmlite failed")
    assert out["clones_10_over_one"] == 6.67 and out["clones_10_guest_ram_over_one"] == 1.5
    assert out["sdk_cold_over_snapshot"] == 5.0


def test_snapshot_nested_parse_nothing_printed_names_the_gap() -> None:
    from bench.snapshot_nested import parse

    out = parse("")
    assert all(isinstance(v, str) and v for v in out.values())
    assert "NaN" not in str(out)


def test_snapshot_nested_steps_choose_the_script_lines(monkeypatch) -> None:
    from bench import snapshot_nested as b

    monkeypatch.setenv("KVMLITE_BENCH_STEPS", "restore2048,sdk")
    text = b.script(b.chosen_steps())
    assert "restore 2048" in text and "sdk" in text and "restore 256" not in text and "clones" not in text
    monkeypatch.setenv("KVMLITE_BENCH_STEPS", "nonsense")
    with __import__("pytest").raises(SystemExit, match="unknown step 'nonsense'"):
        b.chosen_steps()
