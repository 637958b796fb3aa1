#!/usr/bin/env bash
# Build MinkowskiEngine 0.5.4 (CPU-only, OpenBLAS) into a wheel cache and install it into the venv.
#
# MinkowskiEngine is an OPTIONAL backend of folk_ros.core.sparse (see folk_ros/core/sparse/minkowski.py);
# the pure-PyTorch backend needs none of this. The upstream sdist does not build as shipped on a current
# stack, so this script applies three documented fixes, none of which vendors upstream code:
#
#   1. BLAS: setup.py auto-detects BLAS through numpy.distutils.system_info, which is deprecated, gone on
#      Python >= 3.12 and not present in isolated build environments. We never rely on it: the BLAS is
#      passed on setup.py's own command line (--blas=openblas --blas_include_dirs=<pkg-config dir>).
#   2. Python >= 3.10: five modules do `from collections import Sequence` (removed in 3.10; it lives in
#      collections.abc). A sed over the unpacked sdist rewrites exactly those imports; the script then
#      fails if any old-style import is left.
#   3. The build runs `python setup.py bdist_wheel` from the unpacked sdist (not `pip wheel`), because the
#      options of fix 1 are read by setup.py from sys.argv and pip cannot pass them through; setup.py also
#      calls `pip uninstall MinkowskiEngine` itself, so the venv's bin/ is put first on PATH.
#   Fetching the sdist (`pip download --no-binary :all:`) runs setup.py for metadata; that step needs torch
#   (hence --no-build-isolation) and finds OpenBLAS through numpy.distutils once libopenblas-dev is present
#   (so apt comes first). The sdist is cached in $FOLK_WHEEL_CACHE/sdist/; where that metadata step cannot
#   work (Python >= 3.12: no numpy.distutils), put MinkowskiEngine-0.5.4.tar.gz there by hand.
#   torch 2.14 itself needs no patch: torch's cpp_extension compiles with -std=c++20 and the CPU sources of
#   0.5.4 build under it (deprecation warnings about std::iterator only).
#
# Idempotent: does nothing when the venv already imports a working MinkowskiEngine 0.5.4; otherwise reuses
# a cached wheel built against the same torch version and Python tag, else builds one (11.5 CPU-minutes; 21 min wall
# on 2 cores shared at load 6-11; about 6 min expected on 2 idle cores).
# The compiler runs under `nice -n 10` with MAX_JOBS=2 (shared machine).
#
# Usage: scripts/build_minkowski.sh [--force]
#   --force          rebuild the wheel even when a cached one exists.
# Environment:
#   FOLK_VENV          venv to install into (default: <repo>/.venv)
#   FOLK_WHEEL_CACHE   wheel cache root (default: ~/.cache/folk_ros/wheels)
#   MAX_JOBS           parallel compile jobs (default: 2)
set -euo pipefail

ME_VERSION=0.5.4
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${FOLK_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
CACHE_ROOT="${FOLK_WHEEL_CACHE:-$HOME/.cache/folk_ros/wheels}"
export MAX_JOBS="${MAX_JOBS:-2}"
FORCE=0

for arg in "$@"; do
    case "$arg" in
        --force) FORCE=1 ;;
        -h|--help) sed -n '2,/^set -euo/{/^#/p}' "$0"; exit 0 ;;
        *) echo "build_minkowski.sh: unknown argument '$arg' (expected --force)" >&2; exit 2 ;;
    esac
done

log() { echo "[build_minkowski] $*"; }

if [[ ! -x "$PY" ]]; then
    echo "build_minkowski.sh: no Python at $PY; create the venv first (scripts/setup.sh) or set FOLK_VENV" >&2
    exit 1
fi
export PATH="$VENV/bin:$PATH"   # setup.py shells out to `pip`; make it the venv's

# A smoke test that exercises the compiled backend (a 3x3x3 conv on two points), not just the import.
smoke_test() {
    "$PY" - <<'EOF'
import torch, MinkowskiEngine as ME
assert ME.__version__ == "0.5.4", ME.__version__
x = ME.SparseTensor(torch.ones(2, 1), torch.tensor([[0, 0, 0, 0], [0, 1, 0, 0]], dtype=torch.int32))
y = ME.MinkowskiConvolution(1, 1, kernel_size=3, dimension=3)(x)
assert y.F.shape == (2, 1)
print(f"MinkowskiEngine {ME.__version__} OK (torch {torch.__version__})")
EOF
}

if [[ "$FORCE" == 0 ]] && smoke_test 2>/dev/null; then
    log "already installed and working in $VENV; nothing to do (use --force to rebuild)"
    exit 0
fi

# System BLAS (headers + shared library).
if ! dpkg -s libopenblas-dev >/dev/null 2>&1; then
    log "installing libopenblas-dev"
    SUDO=""; [[ "$(id -u)" != 0 ]] && SUDO="sudo"
    $SUDO apt-get install -y --no-install-recommends libopenblas-dev \
        || { $SUDO apt-get update && $SUDO apt-get install -y --no-install-recommends libopenblas-dev; }
fi
BLAS_INCLUDE="$(pkg-config --variable=includedir openblas 2>/dev/null || true)"
[[ -n "$BLAS_INCLUDE" && -f "$BLAS_INCLUDE/cblas.h" ]] \
    || BLAS_INCLUDE="$(dirname "$(find /usr/include -name cblas.h -path '*openblas*' | head -n1)")"
[[ -f "$BLAS_INCLUDE/cblas.h" ]] || { echo "build_minkowski.sh: cblas.h not found after installing libopenblas-dev" >&2; exit 1; }

# Cache key: the exact torch build and the Python ABI tag (the extension links against both).
TORCH_VERSION="$("$PY" -c 'import torch; print(torch.__version__)')"
PY_TAG="$("$PY" -c 'import sys; print(f"cp{sys.version_info.major}{sys.version_info.minor}")')"
CACHE_DIR="$CACHE_ROOT/minkowskiengine-$ME_VERSION/torch-${TORCH_VERSION//+/_}-$PY_TAG-cpu"
mkdir -p "$CACHE_DIR"
# (setuptools >= 75 names the wheel in lower case: minkowskiengine-0.5.4-...; older ones MinkowskiEngine-...)
find_wheel() { find "$1" -maxdepth 1 -iname "minkowskiengine-$ME_VERSION-*.whl" 2>/dev/null | head -n1; }
WHEEL="$(find_wheel "$CACHE_DIR")"

if [[ "$FORCE" == 1 || -z "$WHEEL" ]]; then
    WORK="$(mktemp -d "${TMPDIR:-/tmp}/folk_me_build.XXXXXX")"
    trap 'rm -rf "$WORK"' EXIT
    log "building MinkowskiEngine $ME_VERSION for torch $TORCH_VERSION ($PY_TAG) in $WORK (MAX_JOBS=$MAX_JOBS)"
    START=$(date +%s)

    SDIST_CACHE="$CACHE_ROOT/sdist"
    mkdir -p "$SDIST_CACHE"
    SDIST="$SDIST_CACHE/MinkowskiEngine-$ME_VERSION.tar.gz"
    if [[ ! -f "$SDIST" ]]; then
        "$PY" -m pip download --no-deps --no-binary :all: --no-build-isolation \
            "MinkowskiEngine==$ME_VERSION" -d "$SDIST_CACHE"
    fi
    tar -xzf "$SDIST" -C "$WORK"
    SRC="$WORK/MinkowskiEngine-$ME_VERSION"

    # Fix 2: collections.Sequence -> collections.abc.Sequence (removed from collections in Python 3.10).
    sed -i -E \
        -e 's/^from collections import Sequence, namedtuple$/from collections import namedtuple\nfrom collections.abc import Sequence/' \
        -e 's/^from collections import Sequence$/from collections.abc import Sequence/' \
        "$SRC"/MinkowskiEngine/*.py "$SRC"/MinkowskiEngine/utils/*.py "$SRC"/MinkowskiEngine/modules/*.py
    if grep -rnE '^from collections import .*\bSequence\b' "$SRC/MinkowskiEngine"; then
        echo "build_minkowski.sh: collections.Sequence imports left after patching (see above)" >&2
        exit 1
    fi

    # Fix 1 + 3: BLAS on setup.py's command line, CPU-only, niced, MAX_JOBS compile jobs.
    (cd "$SRC" && CPU_ONLY=1 nice -n 10 "$PY" setup.py bdist_wheel \
        --cpu_only --blas=openblas --blas_include_dirs="$BLAS_INCLUDE" --dist-dir "$WORK/dist")
    BUILT="$(find_wheel "$WORK/dist")"
    [[ -n "$BUILT" ]] || { echo "build_minkowski.sh: setup.py produced no wheel in $WORK/dist" >&2; exit 1; }
    find "$CACHE_DIR" -maxdepth 1 -iname 'minkowskiengine-*.whl' -delete
    cp "$BUILT" "$CACHE_DIR/"
    WHEEL="$CACHE_DIR/$(basename "$BUILT")"
    echo "torch=$TORCH_VERSION python=$PY_TAG blas=openblas($BLAS_INCLUDE) built=$(date -Is) seconds=$(( $(date +%s) - START ))" \
        > "$CACHE_DIR/BUILD_INFO"
    log "built $WHEEL in $(( $(date +%s) - START )) s"
else
    log "reusing cached wheel $WHEEL"
fi

"$PY" -m pip install --no-deps --force-reinstall "$WHEEL"
smoke_test
