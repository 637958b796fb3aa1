#!/usr/bin/env bash
# Build the folk_ros_interfaces message package (msg/*.msg, srv/*.srv) with colcon and install it
# into the project venv itself (merge install): its Python module lands in site-packages
# and its libraries in $VENV/lib, which the ROS wheels' bootstrapper already puts on
# LD_LIBRARY_PATH, so `from folk_ros_interfaces.msg import InstanceArray` works with no
# sourcing. Idempotent: skips the build when the
# generated Python module is newer than every .msg/.srv file.
# The two environment fixes the wheels need are in ../shared/notes/ros2-from-pypi.md:
#   1. AMENT_PREFIX_PATH / CMAKE_PREFIX_PATH must include the venv;
#   2. the wheels' exported CMake files name the include dirs of the interpreter they
#      were built with (/opt/python/cpXY-cpXY/...): point them at this venv's.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=$(realpath -m "${VENV:-$root/.venv}")
py=$venv/bin/python
stamp=$venv/share/folk_ros_interfaces/.built

newest_msg=$(ls -t "$root"/msg/*.msg "$root"/srv/*.srv "$root"/interfaces/folk_ros_interfaces/* | head -1)
if [ -f "$stamp" ] && [ "$stamp" -nt "$newest_msg" ]; then
  echo "folk_ros_interfaces: up to date"
  exit 0
fi

py_inc=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
np_inc=$("$py" -c 'import numpy; print(numpy.get_include())')
# Rewrite only what still names a foreign interpreter (idempotent).
{ grep -rlE '/opt/python/cp[0-9]+-cp[0-9]+' "$venv/share" --include='*.cmake' 2>/dev/null || true; } | while read -r f; do
  sed -i -E \
    -e "s#/opt/python/cp[0-9]+-cp[0-9]+/lib/python3\.[0-9]+/site-packages/numpy/_core/include#${np_inc}#g" \
    -e "s#/opt/python/cp[0-9]+-cp[0-9]+/include/python3\.[0-9]+#${py_inc}#g" "$f"
done

export PATH=$venv/bin:$PATH
export AMENT_PREFIX_PATH=$venv${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}
export CMAKE_PREFIX_PATH=$venv${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}
export PYTHON_EXECUTABLE=$py

cd "$root"
colcon --log-base "$root/log" build \
  --base-paths interfaces \
  --build-base "$root/build" --install-base "$venv" --merge-install \
  --cmake-args -DPython3_EXECUTABLE="$py" -DBUILD_TESTING=OFF \
  --event-handlers console_cohesion-
touch "$stamp"
