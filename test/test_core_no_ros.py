"""sparseoccvla_core never imports ROS: every core module imports with rclpy (and all ROS Python) blocked."""

import pkgutil
import subprocess
import sys
from pathlib import Path

import sparseoccvla_core

CHECK = r"""
import importlib, importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        if top in {"rclpy", "rosidl_runtime_py", "sensor_msgs", "std_msgs", "nav_msgs", "geometry_msgs",
                   "visualization_msgs", "diagnostic_msgs", "sparseoccvla_msgs", "sparseoccvla_ros"}:
            raise ImportError(f"ROS module {name} imported from sparseoccvla_core")
        return None
sys.meta_path.insert(0, Block())
for name in sys.argv[1:]:
    importlib.import_module(name)
print("ok", len(sys.argv) - 1)
"""


def test_core_imports_without_ros():
    root = Path(sparseoccvla_core.__file__).parent
    modules = ["sparseoccvla_core"] + [
        m.name
        for m in pkgutil.walk_packages([str(root)], prefix="sparseoccvla_core.")
        if not m.name.endswith("__main__")
    ]
    proc = subprocess.run([sys.executable, "-c", CHECK, *modules], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == f"ok {len(modules)}"
