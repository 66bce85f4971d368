"""Package metadata is consistent: package.xml / setup.py / installed metadata / launch file / msg package.

The launch library is not installable from PyPI, so the launch file is checked by parsing its AST.
"""

import ast
import importlib
import importlib.metadata
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _setup_console_scripts() -> dict[str, str]:
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "CONSOLE_SCRIPTS" for t in node.targets):
            entries = ast.literal_eval(node.value)
            return {name.strip(): target.strip() for name, target in (e.split("=") for e in entries)}
    raise AssertionError("setup.py defines no CONSOLE_SCRIPTS list")


def _launch_executables() -> list[tuple[str, str]]:
    """(package, executable) of every Node(...) / ComposableNode(...) call in launch/driving.launch.py."""
    tree = ast.parse((ROOT / "launch" / "driving.launch.py").read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) == "Node":
            kwargs = {k.arg: k.value for k in node.keywords}
            if "package" in kwargs and "executable" in kwargs:
                found.append((ast.literal_eval(kwargs["package"]), ast.literal_eval(kwargs["executable"])))
    return found


def test_package_xml_and_setup_agree():
    manifest = ET.parse(ROOT / "package.xml").getroot()
    assert manifest.get("format") == "3"
    name, version = manifest.findtext("name"), manifest.findtext("version")
    assert name == "sparseoccvla_ros" and re.fullmatch(r"\d+\.\d+\.\d+", version)
    assert manifest.find("export/build_type").text == "ament_python"
    assert (ROOT / "resource" / name).is_file(), "ament resource marker missing"
    setup_src = (ROOT / "setup.py").read_text()
    assert 'findtext("name")' in setup_src and 'findtext("version")' in setup_src, "setup.py must read package.xml"
    dist = importlib.metadata.distribution(name)  # the installed (editable) package
    assert dist.version == version, "installed metadata is stale: re-run scripts/install.sh"
    assert "sparseoccvla_msgs" in {d.text for d in manifest.findall("depend")}


def test_every_console_script_imports_and_is_installed():
    scripts = _setup_console_scripts()
    assert "sparseoccvla" in scripts
    for name, target in scripts.items():
        module_name, func_name = target.split(":")
        module = importlib.import_module(module_name)
        assert callable(getattr(module, func_name)), f"{name}: {target} is not callable"
    installed = {
        ep.name: ep.value
        for ep in importlib.metadata.entry_points(group="console_scripts")
        if ep.dist is not None and ep.dist.name == "sparseoccvla_ros"
    }
    assert installed == scripts, "installed console scripts differ from setup.py: re-run scripts/install.sh"


def test_launch_file_names_only_installed_executables():
    scripts = _setup_console_scripts()
    launched = _launch_executables()
    ours = [exe for pkg, exe in launched if pkg == "sparseoccvla_ros"]
    missing = [exe for exe in ours if exe not in scripts]
    assert not missing, f"launch/driving.launch.py starts executables missing from setup.py: {missing}"
    compile((ROOT / "launch" / "driving.launch.py").read_text(), "driving.launch.py", "exec")


def test_data_files_exist():
    for pattern in ("launch/*.launch.py", "config/*.yaml", "rviz/*.rviz"):
        assert list(ROOT.glob(pattern)), f"no files match {pattern} (installed as data_files)"


def test_interface_package_lists_every_interface():
    manifest = ET.parse(ROOT / "msg" / "package.xml").getroot()
    assert manifest.findtext("name") == "sparseoccvla_msgs"
    assert "rosidl_interface_packages" in {g.text for g in manifest.findall("member_of_group")}
    cmake = (ROOT / "msg" / "CMakeLists.txt").read_text()
    files = sorted(str(p.relative_to(ROOT / "msg")) for p in (ROOT / "msg").glob("*/*") if p.suffix in (".msg", ".srv"))
    assert files, "msg/ has no interface files"
    for f in files:
        assert f'"{f}"' in cmake, f"{f} is not listed in msg/CMakeLists.txt rosidl_generate_interfaces"
    assert "strip_stale_imported_includes.cmake" in cmake


def test_cli_help_lists_commands(capsys):
    from sparseoccvla_core import cli

    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for command in cli.COMMANDS:
        assert command in out
