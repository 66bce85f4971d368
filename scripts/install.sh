#!/usr/bin/env bash
# Install SparseOccVLA for ROS 2 into a virtual environment, from scratch, with no ROS 2 on the machine.
#
#   bash scripts/install.sh            # creates ./.venv, installs everything, builds msg/ into the venv
#
# What it does (idempotent: a second run with nothing changed finishes in seconds):
#   1. creates the venv (Python >= 3.10; $PYTHON picks the interpreter, $VENV the location);
#   2. installs PyTorch ($TORCH_SPEC, default torch==2.13.0 - the CPU build here; a CUDA user sets e.g.
#      TORCH_SPEC="torch==2.13.0" TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128);
#   3. installs ROS 2 Kilted from PyPI (rclpy + the message packages the nodes use) and the ament_cmake /
#      rosidl wheels that compile custom interfaces;
#   4. installs this project in editable mode with its Python dependencies (setup.py);
#   5. builds the interface package msg/ (sparseoccvla_msgs) with cmake against the venv and installs it
#      into the venv, so `from sparseoccvla_msgs.msg import DrivingPlan` works with no environment variables.
# Steps 2-4 are skipped when their inputs (this script, setup.py, package.xml, $TORCH_SPEC) are unchanged;
# step 5 when msg/ is unchanged and the package imports.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
TORCH_INDEX_URL="${TORCH_INDEX_URL:-}"
BUILD_DIR="$ROOT/build/sparseoccvla_msgs"

log() { printf '[install] %s\n' "$*"; }

# --- 1. interpreter and venv -------------------------------------------------------------------------
if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' 2>/dev/null; then
  echo "error: $PYTHON is missing or older than Python 3.10; set PYTHON=/path/to/python3.10+" >&2
  exit 1
fi
for tool in cmake make; do
  command -v "$tool" >/dev/null || { echo "error: '$tool' not found (Debian/Ubuntu: sudo apt-get install cmake build-essential)" >&2; exit 1; }
done
if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtual environment $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check -q)

# --- 2-4. Python packages ------------------------------------------------------------------------------
ROS_WHEELS=(
  "ros-kilted-rclpy[fastrtps]"
  ros-kilted-std-msgs ros-kilted-geometry-msgs ros-kilted-sensor-msgs ros-kilted-nav-msgs
  ros-kilted-visualization-msgs ros-kilted-diagnostic-msgs ros-kilted-rosgraph-msgs ros-kilted-builtin-interfaces
  # build tools for msg/ (the ament_cmake meta wheel does not pull these in; ROS_NOTES 1.a)
  ros-kilted-ament-cmake ros-kilted-ament-cmake-include-directories ros-kilted-ament-cmake-ros-core
  ros-kilted-ament-cmake-python ros-kilted-ament-package ros-python-cmake-module
  ros-kilted-rosidl-default-generators ros-kilted-rosidl-default-runtime ros-kilted-rosidl-core-generators
  ros-kilted-rosidl-cmake ros-kilted-rosidl-generator-c ros-kilted-rosidl-generator-cpp ros-kilted-rosidl-generator-py
  ros-kilted-rosidl-generator-type-description ros-kilted-rosidl-typesupport-c ros-kilted-rosidl-typesupport-cpp
  ros-kilted-rosidl-typesupport-fastrtps-c ros-kilted-rosidl-typesupport-fastrtps-cpp
  ros-kilted-rosidl-typesupport-introspection-c ros-kilted-rosidl-typesupport-introspection-cpp
  ros-kilted-rmw-implementation-cmake catkin-pkg
)
deps_key=$( { cat "$ROOT/scripts/install.sh" "$ROOT/setup.py" "$ROOT/package.xml"; echo "$TORCH_SPEC $TORCH_INDEX_URL"; } | sha256sum | cut -d' ' -f1)
deps_stamp="$VENV/.sparseoccvla-deps"
if [ "$(cat "$deps_stamp" 2>/dev/null)" != "$deps_key" ]; then
  log "installing $TORCH_SPEC"
  if [ -n "$TORCH_INDEX_URL" ]; then
    "${PIP[@]}" install "$TORCH_SPEC" --index-url "$TORCH_INDEX_URL"
  else
    "${PIP[@]}" install "$TORCH_SPEC"
  fi
  log "installing ROS 2 Kilted wheels and interface build tools"
  "${PIP[@]}" install "${ROS_WHEELS[@]}"
  log "installing sparseoccvla (editable) and its Python dependencies"
  # The already-installed torch satisfies setup.py's range, so pip does not replace it.
  "${PIP[@]}" install -e "$ROOT[test]"
  echo "$deps_key" > "$deps_stamp"
else
  log "Python packages up to date"
fi

# --- 5. interface package msg/ ----------------------------------------------------------------------
msgs_key=$( { find "$ROOT/msg" -type f | LC_ALL=C sort | xargs cat; echo "$VENV"; } | sha256sum | cut -d' ' -f1)
msgs_stamp="$VENV/.sparseoccvla-msgs"
if [ "$(cat "$msgs_stamp" 2>/dev/null)" = "$msgs_key" ] && \
   "$PY" -c 'from sparseoccvla_msgs.msg import DrivingPlan, OccupancyForecast; from sparseoccvla_msgs.srv import AskScene' 2>/dev/null; then
  log "sparseoccvla_msgs up to date"
else
  log "building sparseoccvla_msgs (cmake -> $VENV)"
  rm -rf "$BUILD_DIR"; mkdir -p "$BUILD_DIR"
  # ament_index lookups in CMake read only AMENT_PREFIX_PATH (ROS_NOTES 1.a); the venv is the ROS prefix.
  AMENT_PREFIX_PATH="$VENV" PATH="$VENV/bin:$PATH" cmake -S "$ROOT/msg" -B "$BUILD_DIR" \
    -DCMAKE_INSTALL_PREFIX="$VENV" -DCMAKE_PREFIX_PATH="$VENV" -DBUILD_TESTING=OFF \
    -DPython3_EXECUTABLE="$PY" -DPython3_FIND_VIRTUALENV=ONLY -DCMAKE_BUILD_TYPE=Release > "$BUILD_DIR.log" 2>&1 \
    || { tail -40 "$BUILD_DIR.log" >&2; echo "error: cmake configure of msg/ failed (full log: $BUILD_DIR.log)" >&2; exit 1; }
  AMENT_PREFIX_PATH="$VENV" PATH="$VENV/bin:$PATH" cmake --build "$BUILD_DIR" --target install -j "$(nproc)" >> "$BUILD_DIR.log" 2>&1 \
    || { tail -40 "$BUILD_DIR.log" >&2; echo "error: building msg/ failed (full log: $BUILD_DIR.log)" >&2; exit 1; }
  "$PY" -c 'from sparseoccvla_msgs.msg import DrivingPlan, OccupancyForecast; from sparseoccvla_msgs.srv import AskScene' \
    || { echo "error: sparseoccvla_msgs was built but does not import from $VENV" >&2; exit 1; }
  echo "$msgs_key" > "$msgs_stamp"
fi

log "done: activate with 'source $VENV/bin/activate' (or call $VENV/bin/python directly)"
