"""sparseoccvla_core never imports ROS: every core module imports with rclpy (and all ROS Python) blocked."""

import ast
import pkgutil
import re
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


ROS_MODULE = re.compile(r"\b(sparseoccvla_ros|sparseoccvla_msgs|rclpy)\.[A-Za-z_]")


def _code_strings(tree: ast.AST) -> list[ast.Constant]:
    """String constants of a module that are not docstrings (prose may name ROS modules; code may not)."""
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]


def test_core_names_no_ros_module():
    """No core string names a ROS module for a dynamic import (``importlib.import_module("sparseoccvla_ros....")``,
    a command table): the CLI finds the ROS package's commands through the 'sparseoccvla.commands' entry points,
    which the ROS package declares in setup.py."""
    root = Path(sparseoccvla_core.__file__).parent
    named = [
        f"{path.relative_to(root.parent)}:{node.lineno}: {node.value!r}"
        for path in sorted(root.rglob("*.py"))
        for node in _code_strings(ast.parse(path.read_text()))
        if ROS_MODULE.search(node.value)
    ]
    assert not named, f"the core names ROS modules: {named}"


def test_cli_lists_the_ros_commands_from_entry_points():
    """'sparseoccvla --help' lists the ROS package's commands, registered by the package itself."""
    from sparseoccvla_core import cli
    from sparseoccvla_core.commands import COMMANDS as CORE

    ros = {name for name, (module, _) in cli.COMMANDS.items() if name not in CORE}
    assert {"bag", "play", "record", "drive", "demo", "bench"} <= ros
    assert all(cli.COMMANDS[name][0].startswith("sparseoccvla_ros.") for name in ros)
    assert all(module.startswith("sparseoccvla_core.") for module, _ in CORE.values())
