"""Build entry: installs gradres_fused (with kernels/ as gradres_fused.kernels) and, once csrc/
holds sources, builds the gradres_fused._C extension from them.

Build with `pip install --no-build-isolation -e .` so the installed torch is the one compiled against.
"""
import glob
import os

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


def extension_modules():
    """gradres_fused._C from csrc/, or nothing while csrc/ has no sources."""
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    if not sources:
        return [], {}
    from torch.utils.cpp_extension import BuildExtension, CppExtension

    ext = CppExtension("gradres_fused._C", sources, extra_compile_args={"cxx": ["-O3"]})
    return [ext], {"build_ext": BuildExtension}


ext_modules, cmdclass = extension_modules()

setup(
    packages=["gradres_fused", "gradres_fused.kernels"],
    package_dir={"gradres_fused": "gradres_fused", "gradres_fused.kernels": "kernels"},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
