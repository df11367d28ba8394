"""What pyproject.toml cannot express: the packages and the optional CUDA extension.

The metadata, dependencies, entry point and package data are in pyproject.toml.

Three source folders map to package names, which pyproject's package
discovery cannot do: src/chatbaker_megatron -> chatbaker_megatron (its
subpackages are found here, new ones included), kernels -> chatbaker_kernels,
and conf -> chatbaker_megatron.conf (the Hydra config tree ships inside the
package, so that an installed, non-editable copy finds it as
pkg://chatbaker_megatron.conf).

The CUDA RMSNorm extension is optional (the Triton and PyTorch paths cover
every op). CHATBAKER_BUILD_CUDA=1 builds it, =0 never does; unset, it is built
when torch is a CUDA build (torch.version.cuda), a CUDA toolkit is found
(CUDA_HOME / nvcc) and the target GPUs are known: a visible GPU, or
TORCH_CUDA_ARCH_LIST (how `docker build`, which has no GPU, asks for sm_80 and
sm_90). So a GPU-less dev machine with nvcc and a CUDA torch wheel (`make
setup` in CI) installs without compiling.
"""

import os

from setuptools import find_packages, setup

PACKAGE_DIR = {"": "src", "chatbaker_kernels": "kernels", "chatbaker_megatron.conf": "conf"}
PACKAGES = [*find_packages("src"), "chatbaker_kernels", "chatbaker_megatron.conf"]


def _cuda_extensions() -> tuple[list, dict]:
    """The optional CUDA extension, when this machine can build it."""
    wanted = os.environ.get("CHATBAKER_BUILD_CUDA")
    if wanted == "0":
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension
    except ImportError:
        return [], {}
    # torch.version.cuda, not torch.cuda.is_available() alone: `docker build` has no GPU.
    targets_known = bool(os.environ.get("TORCH_CUDA_ARCH_LIST")) or torch.cuda.is_available()
    if wanted != "1" and (torch.version.cuda is None or CUDA_HOME is None or not targets_known):
        return [], {}
    ext = CUDAExtension(
        name="chatbaker_kernels._cuda_rmsnorm",
        sources=["kernels/csrc/rmsnorm_binding.cpp", "kernels/csrc/rmsnorm.cu"],
        # C++20 (templated lambdas in rmsnorm.cu), explicitly: torch < 2.8
        # defaults to C++17. scripts/check-cuda.sh compiles with the same flag.
        extra_compile_args={
            "cxx": ["-O3", "-std=c++20"],
            "nvcc": ["-O3", "--use_fast_math", "-std=c++20"],
        },
    )
    return [ext], {"build_ext": BuildExtension}


ext_modules, cmdclass = _cuda_extensions()

setup(packages=PACKAGES, package_dir=PACKAGE_DIR, ext_modules=ext_modules, cmdclass=cmdclass)
