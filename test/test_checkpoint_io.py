"""Checkpoints are loaded as weights only: a file whose unpickling would run code is refused."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from folk_ros.core.checkpoint_io import UnsafeCheckpointError, load_weights
from folk_ros.core.mask3d.checkpoint import load_checkpoint
from folk_ros.core.segmenter import Segmenter
from test.fixtures import make_untrained_bundle

REPO = Path(__file__).resolve().parents[1]


class WritesAFile:
    """Unpickling this calls ``open(path, 'w').write('ran')``: what a malicious checkpoint would do."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return exec, (f"open({self.path!r}, 'w').write('ran')",)


def _evil_copy(src, dst, marker):
    obj = torch.load(src, weights_only=True)
    obj["note"] = WritesAFile(marker)
    torch.save(obj, dst)


def test_a_crafted_checkpoint_is_refused_and_runs_nothing(tmp_path):
    bundle = make_untrained_bundle(tmp_path / "bundle")
    marker = tmp_path / "pwned.txt"
    evil = tmp_path / "evil_mask3d.pt"
    _evil_copy(bundle / "mask3d.pt", evil, marker)
    with pytest.raises(UnsafeCheckpointError, match=r"holds more than weights \(it names (builtins\.)?exec\)") as err:
        load_checkpoint(evil)
    assert "allow_unsafe_checkpoints:=true" in str(err.value) and len(str(err.value).splitlines()) == 1
    assert not marker.exists(), "nothing from the file ran"
    evil_student = tmp_path / "evil_student.pt"
    _evil_copy(bundle / "student.pt", evil_student, marker)
    with pytest.raises(UnsafeCheckpointError, match="student checkpoint"):
        Segmenter.from_bundle(bundle, device="cpu", files={"student": evil_student})
    assert not marker.exists()
    # the explicit opt-in loads it (and shows why it is refused by default: the file's code ran)
    model, _ = load_checkpoint(evil, allow_unsafe=True)
    assert marker.read_text() == "ran"


def test_our_checkpoints_load_as_weights(tmp_path):
    bundle = make_untrained_bundle(tmp_path / "bundle")
    for name in ("mask3d.pt", "student.pt"):
        assert "state_dict" in load_weights(bundle / name)
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_weights(tmp_path / "missing.pt")


def test_the_node_refuses_it_in_one_line(tmp_path):
    bundle = make_untrained_bundle(tmp_path / "bundle")
    marker = tmp_path / "pwned.txt"
    _evil_copy(bundle / "mask3d.pt", tmp_path / "evil.pt", marker)
    proc = subprocess.run([sys.executable, "-m", "folk_ros.ros.node", "--ros-args", "-p", f"model_bundle:={bundle}",
                           "-p", "device:=cpu", "-p", f"mask3d_checkpoint:={tmp_path / 'evil.pt'}"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert proc.returncode == 1 and len(lines) == 1 and "refused" in lines[0], lines
    assert not marker.exists()
