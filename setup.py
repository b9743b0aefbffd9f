"""Builds the `flexsp` wheel with the project's CMake: the native module `flexsp._flexsp` and the
`flexsp` command, which the wheel carries as `flexsp/bin/flexsp` behind the `flexsp` entry point.

Needs the Debian packages `scripts/bootstrap.sh` installs (a C++20 compiler, CMake, Cap'n Proto,
CBC, ...). Environment:
  FLEXSP_BUILD_DIR     reuse this configured build tree (e.g. build/) instead of a fresh one
  FLEXSP_ENABLE_CUDA   AUTO, ON or OFF (default OFF: the package plans and drives clusters)
  CMAKE_BUILD_PARALLEL_LEVEL  compile jobs (default: the CPU count)
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        dest = Path(self.get_ext_fullpath(ext.name)).resolve().parent  # .../flexsp
        build = Path(os.environ["FLEXSP_BUILD_DIR"]).resolve() if os.environ.get("FLEXSP_BUILD_DIR") else \
            Path(self.build_temp).resolve() / "cmake"
        if not (build / "CMakeCache.txt").exists():
            configure = ["cmake", "-S", str(ROOT), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
                         "-DFLEXSP_BUILD_TESTS=OFF", "-DFLEXSP_BUILD_BENCHMARKS=OFF", "-DFLEXSP_WERROR=OFF",
                         "-DFLEXSP_ENABLE_CUDA=" + os.environ.get("FLEXSP_ENABLE_CUDA", "OFF"),
                         "-DPython3_EXECUTABLE=" + sys.executable]
            if shutil.which("ninja"):
                configure += ["-G", "Ninja"]
            print("flexsp: configuring", " ".join(configure), flush=True)
            subprocess.check_call(configure)
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL") or str(os.cpu_count() or 1)
        print(f"flexsp: building the Python module and the flexsp command in {build} ({jobs} jobs); "
              "a fresh build takes minutes", flush=True)
        subprocess.check_call(["cmake", "--build", str(build), "--target", "flexsp_python", "flexsp",
                               "--parallel", jobs])
        dest.mkdir(parents=True, exist_ok=True)
        modules = sorted((build / "python" / "flexsp").glob("_flexsp*.so"))
        if not modules:
            raise RuntimeError(f"the build in {build} made no python/flexsp/_flexsp*.so")
        shutil.copy2(modules[-1], Path(self.get_ext_fullpath(ext.name)))
        (dest / "bin").mkdir(exist_ok=True)
        shutil.copy2(build / "apps" / "flexsp" / "flexsp", dest / "bin" / "flexsp")


PIP_BUILD = ROOT / "build" / "pip"
PIP_BUILD.mkdir(parents=True, exist_ok=True)
# Setuptools' own build folders go under build/pip, beside (never into) a CMake build in build/.
setup(ext_modules=[CMakeExtension("flexsp._flexsp")], cmdclass={"build_ext": CMakeBuild},
      options={"build": {"build_base": str(PIP_BUILD)}, "egg_info": {"egg_base": str(PIP_BUILD)}})
