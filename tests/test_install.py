"""Packaging: the package imports without a C++ build or GPU, and the Triton kernels are installed
as the subpackage gradres_fused.kernels by both editable and regular installs."""
import os
import subprocess
import sys

import pytest

import gradres_fused
import gradres_fused.kernels

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_kernels_subpackage_imports():
    assert gradres_fused.kernels.__name__ == "gradres_fused.kernels"


@pytest.mark.slow
def test_regular_install_ships_kernels_subpackage(tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps",
                    "-q", "--target", str(target), ROOT], check=True, cwd=tmp_path,
                   env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    assert (target / "gradres_fused" / "kernels" / "__init__.py").is_file()
    out = subprocess.run([sys.executable, "-c", "import gradres_fused.kernels as k; print(k.__file__)"],
                         check=True, cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(target)})
    assert out.stdout.strip().startswith(str(target))
