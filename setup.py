"""Build `mask2former._C`, the compiled multi-scale deformable attention op (metadata: pyproject.toml).

Install: `pip install --no-build-isolation -e .` (torch must be installed first).

Which kernels are built:
- the C++ CPU kernels, always;
- the CUDA kernels when torch is a CUDA build, nvcc is found (CUDA_HOME, else /usr/local/cuda) and either a
  GPU is visible (`torch.cuda.is_available()`) or `FORCE_CUDA=1` is set. A CPU-only machine therefore gets a
  quick CPU build even when nvcc is installed; `FORCE_CUDA=1` builds the CUDA kernels anyway (e.g. in a
  Docker image built without a GPU), `FORCE_CUDA=0` never builds them.

`TORCH_CUDA_ARCH_LIST` picks the GPU architectures ("9.0", "8.0;8.6;9.0+PTX"). Unset, the visible GPUs'
architectures are used, or "7.5;8.0;8.6;9.0+PTX" when no GPU is visible. `MAX_JOBS` limits parallel
compilation when ninja is installed.
"""

import glob
import os
import sys
import sysconfig

from setuptools import setup

# torch.utils.cpp_extension reads CUDA_HOME when it is imported; the nvcc on PATH may be a wrapper script
# outside the toolkit, so point it at the toolkit itself.
if "CUDA_HOME" not in os.environ and "CUDA_PATH" not in os.environ and os.path.isdir("/usr/local/cuda"):
    os.environ["CUDA_HOME"] = "/usr/local/cuda"

import torch  # noqa: E402
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402

CSRC = os.path.join("mask2former", "layers", "csrc")
DEFAULT_ARCH_LIST = "7.5;8.0;8.6;9.0+PTX"


def _want_cuda() -> bool:
    """Whether to compile the CUDA kernels (see the module docstring)."""
    force = os.environ.get("FORCE_CUDA", "")
    if force not in ("", "0", "1"):
        raise ValueError(f"setup.py: FORCE_CUDA must be 0 or 1, got {force!r}")
    if force == "0":
        return False
    has_toolkit = torch.version.cuda is not None and CUDA_HOME is not None
    if force == "1" and not has_toolkit:
        raise RuntimeError(
            "setup.py: FORCE_CUDA=1 but no CUDA build of torch or no CUDA toolkit was found "
            f"(torch.version.cuda={torch.version.cuda}, CUDA_HOME={CUDA_HOME}); set CUDA_HOME to the toolkit"
        )
    return has_toolkit and (force == "1" or torch.cuda.is_available())


def _cuda_header_dirs() -> list[str]:
    """Headers that PyTorch's CUDA headers include (cuBLAS, cuSPARSE) and that ship in the nvidia wheels."""
    site = sysconfig.get_paths()["purelib"]
    return sorted(glob.glob(os.path.join(site, "nvidia", "cu[0-9]*", "include")))


def _openmp_flags() -> list[str]:
    """ATen's `parallel_for` is a header template: compiled without OpenMP it runs every CPU kernel on one
    thread. With `-fopenmp` the extension needs libgomp.so.1, which torch has loaded already, so the kernels
    share torch's own thread pool."""
    if sys.platform != "linux" or "ATen parallel backend: OpenMP" not in torch.__config__.parallel_info():
        print(
            "setup.py: torch does not run on OpenMP here; the CPU kernels of mask2former._C run on one thread"
        )
        return []
    return ["-fopenmp"]


def extensions() -> list:
    sources = sorted(glob.glob(os.path.join(CSRC, "*.cpp")) + glob.glob(os.path.join(CSRC, "cpu", "*.cpp")))
    openmp = _openmp_flags()
    cxx_flags = ["-O3", *openmp]
    if not _want_cuda():
        print("setup.py: building mask2former._C with CPU kernels only (FORCE_CUDA=1 adds the CUDA kernels)")
        return [
            CppExtension(
                "mask2former._C", sources, extra_compile_args={"cxx": cxx_flags}, extra_link_args=openmp
            )
        ]
    if not torch.cuda.is_available():
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCH_LIST)
    arch_list = os.environ.get("TORCH_CUDA_ARCH_LIST", "visible GPUs")
    print(
        f"setup.py: building mask2former._C with CPU and CUDA kernels (CUDA_HOME={CUDA_HOME}, archs: {arch_list})"
    )
    sources += sorted(glob.glob(os.path.join(CSRC, "cuda", "*.cu")))
    return [
        CUDAExtension(
            "mask2former._C",
            sources,
            include_dirs=_cuda_header_dirs(),
            define_macros=[("WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3"]},
            extra_link_args=openmp,
        )
    ]


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExtension})
