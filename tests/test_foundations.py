"""The package's own house-keeping: one manifest, one version, lint clean, reproducible installs."""
from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import tomllib

import napari_clis

ROOT = Path(__file__).resolve().parent.parent


def test_packaged_manifest_is_a_plain_copy_of_the_top_level_one():
    # a symbolic link becomes a text file holding "../../napari.yaml" on Windows and in some archives: the package
    # holds a real file, and it must say exactly what the top-level manifest says
    packaged = ROOT / "src" / "napari_clis" / "napari.yaml"
    assert not packaged.is_symlink(), "src/napari_clis/napari.yaml must be a file, not a link"
    assert packaged.read_text() == (ROOT / "napari.yaml").read_text(), (
        "src/napari_clis/napari.yaml differs from napari.yaml: copy the top-level manifest over it")


def test_manifest_is_what_npe2_reads_for_the_installed_plugin():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("napari-clis")
    assert manifest.name == "napari-clis"
    assert manifest.contributions.widgets and manifest.contributions.sample_data


def test_version_is_written_once():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert metadata.version("napari-clis") == napari_clis.__version__


def test_python_classifiers_name_the_versions_tested():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    tested = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert f"Programming Language :: Python :: {tested}" in project["classifiers"]


def test_constraints_pin_every_direct_dependency_but_torch():
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + [d for extra in project["optional-dependencies"].values() for d in extra]
    for requirement in wanted:
        name = re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower().replace("_", "-")
        if name == "torch":
            assert name not in pins  # setup.sh pins torch (the CPU build)
        else:
            assert name in pins, f"constraints.txt has no pin for {name}: run scripts/freeze_constraints.py"


def test_lint_is_clean():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "src", "tests", "scripts"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_gpu_check_runs_and_compares_devices(capsys):
    # on CI (no GPU) the script checks itself CPU against CPU: every step runs, the comparison is exact
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    assert gpu_check.main(["--device", "cpu", "--models", "nuclei", "--learn-steps", "3"]) == 0
    out = capsys.readouterr().out
    for check in ("segment labels", "clicked labels", "after learn", "saved on cpu, loaded on cpu",
                  "batch = segment()"):
        assert f"| nuclei | {check} | 1.0000 |" in out


def test_apple_gpu_is_refused_with_a_reason_where_torch_cannot_use_it():
    import torch

    from napari_clis.session import resolve_device

    if torch.backends.mps.is_available():
        assert resolve_device("mps").type == "mps"
    else:
        with pytest.raises(ValueError, match="mps"):
            resolve_device("mps")
