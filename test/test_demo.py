"""`make demo` end to end on a tiny scene set: generation, read-back summary, preview image."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_demo_generates_summarises_and_previews(tmp_path):
    args = [sys.executable, "-m", "demo", "--scenes", "1", "--frames", "12", "--seed", "3",
            "--data", str(tmp_path / "data"), "--out", str(tmp_path / "out")]
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = json.loads((tmp_path / "out/summary.json").read_text())
    assert len(rows) == 1 and rows[0]["frames"] == 12 and rows[0]["instances"] >= 8
    assert rows[0]["bag_cloud_points"] and rows[0]["bag_cloud_points"][-1] > 1000
    png = (tmp_path / "out/preview.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 50_000
    assert "instances per class" in proc.stdout
    # a second run reuses the scene instead of generating it again
    meta = next((tmp_path / "data").glob("*/synth_meta.json"))
    stamp = meta.stat().st_mtime_ns
    again = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "instances per class" in again.stdout
    assert meta.stat().st_mtime_ns == stamp
