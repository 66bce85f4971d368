"""Installs the ROS 2 package ``sparseoccvla_ros`` (ament_python) and the pure-Python ``sparseoccvla_core``.

Name and version come from package.xml, so the two files cannot disagree.  On a full ROS 2 install colcon
runs this file; on a pip-only machine ``scripts/install.sh`` runs ``pip install -e .``.
"""

import xml.etree.ElementTree as ET
from glob import glob
from pathlib import Path

from setuptools import find_packages, setup

_manifest = ET.parse(Path(__file__).resolve().parent / "package.xml").getroot()
PACKAGE_NAME = _manifest.findtext("name")
VERSION = _manifest.findtext("version")

# Every executable of the package: the research CLI and the ROS nodes.  The launch file may only name these.
CONSOLE_SCRIPTS = [
    "sparseoccvla = sparseoccvla_core.cli:main",
    "driving_node = sparseoccvla_ros.driving_node:main",
    "sim_node = sparseoccvla_ros.closed_loop.sim_node:main",
]

# Commands this package adds to the core's CLI (sparseoccvla_core/cli.py reads the group; the core never names ROS)
COMMAND_REGISTRIES = ["ros = sparseoccvla_ros.commands:COMMANDS"]

setup(
    name=PACKAGE_NAME,
    version=VERSION,
    packages=find_packages(
        include=["sparseoccvla_core", "sparseoccvla_core.*", "sparseoccvla_ros", "sparseoccvla_ros.*"]
    ),
    package_data={
        "sparseoccvla_core": ["resources/*", "synthetic/*.json"],
        # the demo report's Jinja2 templates (sparseoccvla_ros/demo/report.py)
        "sparseoccvla_ros": ["demo/templates/*.j2"],
    },
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE_NAME}"]),
        (f"share/{PACKAGE_NAME}", ["package.xml"]),
        (f"share/{PACKAGE_NAME}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE_NAME}/config", glob("config/*.yaml")),
        (f"share/{PACKAGE_NAME}/rviz", glob("rviz/*.rviz")),
        # the committed default checkpoint (sparseoccvla_core/default_checkpoint.py finds it here after colcon build)
        (f"share/{PACKAGE_NAME}/checkpoints/default", glob("checkpoints/default/*.*")),
        (f"share/{PACKAGE_NAME}/checkpoints/default/tokenizer", glob("checkpoints/default/tokenizer/*")),
    ],
    python_requires=">=3.10",
    install_requires=[
        # torch is pinned by scripts/install.sh (CPU wheel here); any CUDA build in this range works too.
        "torch>=2.1",
        "numpy",
        "transformers>=4.45",
        "tokenizers",
        "peft>=0.12",
        "accelerate>=0.30",
        "safetensors",
        "nuscenes-devkit>=1.1.11",
        "rosbags>=0.10",
        "mcap",
        "mcap-ros2-support",
        "pycocoevalcap",
        # HERMES's METEOR (nltk.translate.meteor_score); WordNet 3.0 comes from the OS package wordnet-base (docs/install.md §1)
        "nltk==3.10.4",
        "opencv-python-headless",
        # strict JPEG decoding (libjpeg-turbo warnings such as "Corrupt JPEG data" become errors): driving_node
        "simplejpeg>=1.9",
        "tqdm",
        "matplotlib",
        # the demo report's HTML / markdown templates (autoescaped HTML)
        "Jinja2>=3.0",
        "pyyaml",
        "scipy",
        "setuptools",
    ],
    extras_require={"test": ["pytest", "pytest-timeout", "ruff==0.17.6", "colcon-common-extensions"]},
    zip_safe=True,
    maintainer="SparseOccVLA maintainers",
    maintainer_email="sparseoccvla@example.org",
    description=_manifest.findtext("description").strip().split("\n")[0],
    license="Apache-2.0",
    entry_points={"console_scripts": CONSOLE_SCRIPTS, "sparseoccvla.commands": COMMAND_REGISTRIES},
)
