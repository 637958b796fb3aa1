"""Test-session settings: offline model hub and an isolated ROS 2 graph.

Set at import so that every subprocess a test starts (nodes, players) inherits them.
"""

import atexit
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# One ROS domain per test run, localhost only, logs out of the home directory
# (../shared/notes/ros2-from-pypi.md, "Habits that keep tests reliable").
os.environ.setdefault("ROS_DOMAIN_ID", str(random.Random(os.getpid()).randint(1, 101)))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
_ros_home = tempfile.mkdtemp(prefix="folk_ros_test_")
atexit.register(shutil.rmtree, _ros_home, ignore_errors=True)
os.environ.setdefault("ROS_HOME", _ros_home)
os.environ.setdefault("ROS_LOG_DIR", os.path.join(_ros_home, "log"))


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a module (``pytestmark = pytest.mark.usefixtures(...)``): exact,
    deterministic reductions and no oversubscription of the shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
