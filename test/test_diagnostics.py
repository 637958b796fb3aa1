"""The node's /diagnostics status from its counters (pure: no node spinning)."""

from diagnostic_msgs.msg import DiagnosticStatus

from folk_ros.ros.diagnostics import STEADY_PERIODS, DiagnosticsState, NodeStats, status


def _status(stats, state, alive=True, max_latency_s=5.0):
    return status(stats.snapshot(), state, name="folk_segmenter: segmentation", hardware_id="cpu",
                  worker_alive=alive, max_latency_s=max_latency_s, extra={"device": "cpu"})


def test_levels_rates_and_values():
    now = [100.0]
    stats = NodeStats(clock=lambda: now[0])
    state = DiagnosticsState(stats.snapshot())
    now[0] += 1.0
    st = _status(stats, state)
    assert st.level == DiagnosticStatus.OK and st.message == "waiting for clouds"
    stats.add(received=4, rejected=2)
    stats.processed_ok({"proposals": 300.0, "student": 5.0})
    stats.processed_ok({"proposals": 400.0, "student": 5.0})
    now[0] += 2.0
    st = _status(stats, state)
    values = {kv.key: kv.value for kv in st.values}
    assert st.level == DiagnosticStatus.OK and st.message == "ok"
    assert values["input rate (Hz)"] == "2.00" and values["processed rate (Hz)"] == "1.00"
    assert values["last latency proposals (ms)"] == "400.0" and values["last latency total (ms)"] == "405.0"
    assert values["rejected total"] == "2" and values["device"] == "cpu"
    slow = _status(stats, state, max_latency_s=0.1)
    assert slow.level == DiagnosticStatus.WARN and "took 0.41 s" in slow.message


def test_steady_drops_warn_and_failures_are_errors():
    now = [0.0]
    stats = NodeStats(clock=lambda: now[0])
    state = DiagnosticsState(stats.snapshot())
    for k in range(STEADY_PERIODS):
        stats.add(received=3, dropped=2)
        now[0] += 1.0
        st = _status(stats, state)
        assert st.level == (DiagnosticStatus.WARN if k == STEADY_PERIODS - 1 else DiagnosticStatus.OK)
    assert "dropped in each of the last" in st.message
    now[0] += 1.0
    assert _status(stats, state).level == DiagnosticStatus.OK          # a period without drops
    stats.failure("publishing failed: RuntimeError: boom")
    st = _status(stats, state)
    assert st.level == DiagnosticStatus.ERROR and "publishing failed" in st.message
    stats.processed_ok({"proposals": 1.0})
    assert _status(stats, state).level == DiagnosticStatus.OK          # the next cloud went through
    assert _status(stats, state, alive=False).level == DiagnosticStatus.ERROR
