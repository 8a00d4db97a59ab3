"""Build minimoe and its one native extension, `minimoe._C`.

The extension always gets the C++ CPU sources (csrc/*.cpp, csrc/cpu/*.cpp). It also gets the CUDA sources
(csrc/cuda/*.cu) when the installed torch was built with CUDA *and* a CUDA toolkit can be found.

Environment knobs:
    MINIMOE_CUDA=0             build CPU-only, even if CUDA is available
    MINIMOE_CUDA=1             require CUDA: fail loudly if torch has no CUDA or no toolkit is found
    CUDA_HOME / CUDA_PATH      the toolkit folder to use (must hold bin/nvcc and include/cuda_runtime.h)
    TORCH_CUDA_ARCH_LIST       GPU targets (default "8.0;9.0": A100-class and H100/H200). sm_80 is the minimum:
                               the kernels use cp.async, ldmatrix and bf16 mma, and stop the build below it.
    MAX_JOBS                   parallel compile jobs for ninja
    MINIMOE_SKIP_EXTENSION=1   install the Python package only (the Makefile then builds the extension in place
                               with `setup.py build_ext --inplace`, so the compile happens once and later
                               rebuilds are incremental)

setup.py imports torch, so install with `pip install --no-build-isolation -e ".[dev]"` (the Makefile does).
"""

import glob
import os
import shutil
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CUDA_ARCHS = "8.0;9.0"


def fail(message):
    sys.exit(f"minimoe setup: {message}")


def is_toolkit(folder):
    """A CUDA toolkit folder has the real compiler and the runtime headers."""
    return (
        folder is not None
        and os.path.isfile(os.path.join(folder, "bin", "nvcc"))
        and os.path.isfile(os.path.join(folder, "include", "cuda_runtime.h"))
    )


def toolkit_from_nvcc(nvcc):
    """The toolkit behind an `nvcc` found on PATH.

    On some machines PATH's nvcc is a small shell script that execs the real one (e.g.
    `exec /usr/local/cuda-13.0/bin/nvcc "$@"`). torch's own guess takes the grandparent folder of whatever it
    finds, which is then not a toolkit and the link fails with `cannot find -lcudart`. So: follow symlinks,
    and if the file is a script, read the absolute nvcc path it runs.
    """
    real = os.path.realpath(nvcc)
    candidate = os.path.dirname(os.path.dirname(real))
    if is_toolkit(candidate):
        return candidate
    try:
        with open(real, "rb") as f:
            head = f.read(4096)
    except OSError:
        return None
    if not head.startswith(b"#!"):
        return None
    for token in head.decode("utf-8", "replace").replace('"', " ").replace("'", " ").split():
        if token.endswith("/bin/nvcc") and os.path.isabs(token) and os.path.realpath(token) != real:
            inner = toolkit_from_nvcc(token)
            if inner:
                return inner
    return None


def find_cuda_toolkit():
    """Return (toolkit folder or None, how it was found or why not)."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        folder = os.environ.get(var)
        if folder:
            if is_toolkit(folder):
                return folder, f"${var}"
            return None, f"${var}={folder} is not a CUDA toolkit (no bin/nvcc or include/cuda_runtime.h)"
    nvcc = shutil.which("nvcc")
    if nvcc:
        folder = toolkit_from_nvcc(nvcc)
        if folder:
            return folder, f"nvcc on PATH ({nvcc})"
    if is_toolkit("/usr/local/cuda"):
        return "/usr/local/cuda", "/usr/local/cuda"
    return None, "no nvcc on PATH and no /usr/local/cuda"


def library_headers_for(toolkit):
    """Extra include folders for CUDA library headers that torch's headers include but a toolkit may lack.

    torch's ATen/cuda headers include cusparse.h and cublas_v2.h. A slim toolkit (only nvcc + runtime) has
    neither, while torch's pip dependencies ship them under site-packages/nvidia/*/include.
    """
    if os.path.isfile(os.path.join(toolkit, "include", "cusparse.h")):
        return []
    try:
        import nvidia  # namespace package installed with CUDA builds of torch
    except ImportError:
        return []
    found = []
    for base in list(getattr(nvidia, "__path__", [])):
        for include in sorted(glob.glob(os.path.join(base, "*", "include"))):
            if os.path.isfile(os.path.join(include, "cusparse.h")) or os.path.isfile(
                os.path.join(include, "cublas_v2.h")
            ):
                found.append(include)
    return found


def decide_cuda(torch):
    """Decide whether to compile the CUDA sources; returns (toolkit or None, a one-line reason)."""
    wish = os.environ.get("MINIMOE_CUDA", "").strip()
    if wish not in ("", "0", "1"):
        fail(f"MINIMOE_CUDA must be 0, 1 or unset, found {wish!r}")
    if wish == "0":
        return None, "MINIMOE_CUDA=0"
    if torch.version.cuda is None:
        if wish == "1":
            fail(f"MINIMOE_CUDA=1 but the installed torch {torch.__version__} has no CUDA support")
        return None, f"torch {torch.__version__} is a CPU-only build"
    toolkit, how = find_cuda_toolkit()
    if toolkit is None:
        if wish == "1":
            fail(f"MINIMOE_CUDA=1 but no CUDA toolkit was found: {how}")
        return None, how
    return toolkit, f"CUDA toolkit {toolkit} (from {how}), torch CUDA {torch.version.cuda}"


def extensions():
    import torch

    toolkit, reason = decide_cuda(torch)
    if toolkit:
        # torch.utils.cpp_extension reads CUDA_HOME once, when it is imported: set it first.
        os.environ["CUDA_HOME"] = toolkit
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)
    from torch.utils import cpp_extension

    print(f"minimoe setup: CUDA sources {'ON' if toolkit else 'OFF'} ({reason})")
    sources = sorted(glob.glob("csrc/*.cpp")) + sorted(glob.glob("csrc/cpu/*.cpp"))
    # No -std flag: cpp_extension picks the standard the installed torch needs (C++17 up to torch 2.12,
    # C++20 from 2.13). -fopenmp makes at::parallel_for parallel (it is an OpenMP pragma in a header); the
    # libgomp it links is the one torch has already loaded.
    cxx = ["-O3", "-fopenmp"]
    include_dirs = [os.path.join(ROOT, "csrc")]
    macros = []
    kwargs = {}
    if toolkit:
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        archs = os.environ["TORCH_CUDA_ARCH_LIST"]
        include_dirs += library_headers_for(toolkit)
        macros += [("MINIMOE_WITH_CUDA", None), ("MINIMOE_CUDA_ARCHS", f'"{archs}"')]
        kwargs["extra_compile_args"] = {
            "cxx": cxx,
            # 3189: pages of warnings about torch headers' C++20 "module" identifiers, not about our code.
            "nvcc": ["-O3", "--use_fast_math", "-lineinfo", "--expt-relaxed-constexpr", "-diag-suppress", "3189"],
        }
        ext_class = cpp_extension.CUDAExtension
    else:
        kwargs["extra_compile_args"] = {"cxx": cxx}
        ext_class = cpp_extension.CppExtension
    ext = ext_class(
        "minimoe._C",
        sources,
        include_dirs=include_dirs,
        define_macros=macros,
        extra_link_args=["-fopenmp"],
        **kwargs,
    )
    return [ext], cpp_extension.BuildExtension.with_options(use_ninja=True)


# Guarded so the tests can import this file for find_cuda_toolkit() without building anything.
if __name__ == "__main__":
    if os.environ.get("MINIMOE_SKIP_EXTENSION") == "1":
        from setuptools.command.build_ext import build_ext

        ext_modules = []
    else:
        ext_modules, build_ext = extensions()

    setup(
        name="minimoe",
        version="0.1.0",
        description="A readable from-scratch Mixtral-style sparse MoE inference engine with AWQ int4 kernels",
        long_description=open(os.path.join(ROOT, "README.md"), encoding="utf-8").read(),
        long_description_content_type="text/markdown",
        python_requires=">=3.10",
        packages=find_packages(include=["minimoe", "minimoe.*"]),
        include_package_data=True,
        package_data={"minimoe": ["default_model/*", "eval/tasks/*.jsonl"]},
        ext_modules=ext_modules,
        cmdclass={"build_ext": build_ext},
        # jinja2: chat templates in tokenizer_config.json are Jinja (rendered sandboxed by `minimoe chat`).
        # tqdm: the progress bars of `minimoe train` and `minimoe eval ppl` (rates and time left, pure Python).
        install_requires=["torch>=2.4", "numpy", "safetensors>=0.4", "ninja", "pybind11", "jinja2", "tqdm"],
        extras_require={
            # Reference implementations the tests compare against, and the test runners.
            "dev": [
                "pytest>=8",
                "hypothesis>=6.100",
                "transformers>=4.46",
                "sentencepiece",
                "mistral_common",
                "matplotlib",
                # the docs site is built (mkdocs --strict) by the test suite, so broken links fail CI
                "mkdocs-material",
                "mkdocstrings[python]",
                # the harness model's tests run the harness itself, against its own Hugging Face model
                "lm-eval>=0.4.5",
                "accelerate",
            ],
            # `minimoe eval harness` and `python -m minimoe.eval`: EleutherAI's lm-evaluation-harness
            "eval": ["lm-eval>=0.4.5"],
            "plot": ["matplotlib"],
            "docs": ["mkdocs-material", "mkdocstrings[python]"],
        },
        entry_points={"console_scripts": ["minimoe=minimoe.cli:main"]},
    )
