"""folk_ros: an ament_python ROS 2 package that is also pip-installable.

`colcon build` installs it into a ROS 2 workspace; `pip install -e .` installs the
library (folk_ros.core, folk_ros.ros) into a plain venv.
"""

from glob import glob
from pathlib import Path

from setuptools import find_packages, setup

package_name = "folk_ros"


def _data(folder, pattern="*"):
    files = sorted(f for f in glob(f"{folder}/{pattern}"))
    return [(f"share/{package_name}/{folder}", files)] if files else []


def _tree(root):
    """Every file under ``root`` (e.g. a model bundle with sub-folders), keeping the layout."""
    files = sorted(p for p in Path(root).rglob("*") if p.is_file())
    return [(f"share/{package_name}/{d}", [str(p) for p in files if str(p.parent) == d])
            for d in sorted({str(p.parent) for p in files})]


setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(include=["folk_ros", "folk_ros.*"]),
    package_data={"folk_ros.core": ["model_configs/*.json"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{package_name}"]),
        (f"share/{package_name}", ["package.xml"]),
        *_data("launch", "*.launch.py"),
        *_data("config", "*.yaml"),
        *_data("config", "*.rviz"),
        *_data("msg", "*.msg"),
        *_data("srv", "*.srv"),
        *_tree("models"),
    ],
    python_requires=">=3.10",
    # what folk_ros imports at run time (test/test_package.py checks it); the training tools need more:
    # requirements.txt pins everything
    install_requires=["setuptools", "numpy", "scipy", "PyYAML", "transforms3d", "torch", "open-clip-torch",
                      "safetensors"],
    zip_safe=True,
    maintainer="folk_ros developers",
    maintainer_email="folk-ros@example.com",
    description="Open-vocabulary 3D instance segmentation for robots (FOLK) as a ROS 2 package.",
    license="Apache-2.0",
    entry_points={"console_scripts": ["folk_segmenter = folk_ros.ros.node:run",
                                      "folk_segmenter_managed = folk_ros.ros.lifecycle_node:run"]},
)
