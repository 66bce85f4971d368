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
#      into the venv, so `from sparseoccvla_msgs.msg import DrivingPlan` works with no environment variables;
#   6. where `import tf2_msgs` fails (it is not on PyPI), builds tf2_msgs/msg/TFMessage from
#      scripts/interfaces/tf2_msgs the same way, so the node reads camera extrinsics from /tf_static.
# Steps 2-4 are skipped when their inputs (this script, setup.py, package.xml, $TORCH_SPEC) are unchanged;
# steps 5-6 when their sources are unchanged and the package imports.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
TORCH_INDEX_URL="${TORCH_INDEX_URL:-}"

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
  # build tools for msg/ and scripts/interfaces/ (the ament_cmake meta wheel does not pull these in)
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

# --- 5-6. interface packages --------------------------------------------------------------------------
# build_interfaces NAME SRC_DIR IMPORT_CHECK STAMP: cmake-build the rosidl interface package in SRC_DIR against the
# venv and install it into the venv; skipped when SRC_DIR is unchanged since the build recorded in STAMP and
# IMPORT_CHECK runs.
build_interfaces() {
  local name="$1" src="$2" check="$3" stamp="$4"
  local build_dir="$ROOT/build/$name" key
  key=$( { find "$src" -type f | LC_ALL=C sort | xargs cat; echo "$VENV"; } | sha256sum | cut -d' ' -f1)
  if [ "$(cat "$stamp" 2>/dev/null)" = "$key" ] && "$PY" -c "$check" 2>/dev/null; then
    log "$name up to date"
    return 0
  fi
  log "building $name (cmake -> $VENV)"
  rm -rf "$build_dir"; mkdir -p "$build_dir"
  # ament_index lookups in CMake read only AMENT_PREFIX_PATH; the venv is the ROS prefix.
  AMENT_PREFIX_PATH="$VENV" PATH="$VENV/bin:$PATH" cmake -S "$src" -B "$build_dir" \
    -DCMAKE_INSTALL_PREFIX="$VENV" -DCMAKE_PREFIX_PATH="$VENV" -DBUILD_TESTING=OFF \
    -DPython3_EXECUTABLE="$PY" -DPython3_FIND_VIRTUALENV=ONLY -DCMAKE_BUILD_TYPE=Release > "$build_dir.log" 2>&1 \
    || { tail -40 "$build_dir.log" >&2; echo "error: cmake configure of $name failed (full log: $build_dir.log)" >&2; exit 1; }
  AMENT_PREFIX_PATH="$VENV" PATH="$VENV/bin:$PATH" cmake --build "$build_dir" --target install -j "$(nproc)" >> "$build_dir.log" 2>&1 \
    || { tail -40 "$build_dir.log" >&2; echo "error: building $name failed (full log: $build_dir.log)" >&2; exit 1; }
  "$PY" -c "$check" || { echo "error: $name was built but does not import from $VENV" >&2; exit 1; }
  echo "$key" > "$stamp"
}

# 5. this project's interfaces (sparseoccvla_msgs): `from sparseoccvla_msgs.msg import DrivingPlan` works with no
#    environment variables.
build_interfaces sparseoccvla_msgs "$ROOT/msg" \
  'from sparseoccvla_msgs.msg import DrivingPlan, OccupancyForecast; from sparseoccvla_msgs.srv import AskScene' \
  "$VENV/.sparseoccvla-msgs"

# 6. tf2_msgs/msg/TFMessage (the type of /tf and /tf_static) is not on PyPI: where it does not import, build it from
#    scripts/interfaces/tf2_msgs (same message definition, so the type hash matches a full ROS 2 install and bags).
#    A tf2_msgs that imports and was not built here (a full ROS 2 install) is left alone.
tf2_stamp="$VENV/.sparseoccvla-tf2-msgs"
if [ -f "$tf2_stamp" ] || ! "$PY" -c 'from tf2_msgs.msg import TFMessage' 2>/dev/null; then
  build_interfaces tf2_msgs "$ROOT/scripts/interfaces/tf2_msgs" 'from tf2_msgs.msg import TFMessage' "$tf2_stamp"
else
  log "tf2_msgs provided by the ROS 2 installation"
fi

log "done: activate with 'source $VENV/bin/activate' (or call $VENV/bin/python directly)"
