"""The foundation: the native extension builds, loads, registers its ops and dispatches by device."""

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

import minimoe
from minimoe import ops
from tests.conftest import devices

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cuda_toolkit_present() -> bool:
    """Ask setup.py's own finder (importing setup.py builds nothing: its setup() call is __main__-guarded)."""
    spec = importlib.util.spec_from_file_location("minimoe_setup", os.path.join(ROOT, "setup.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.find_cuda_toolkit()[0] is not None


def test_extension_imports():
    info = ops.build_info()
    assert info["extension_loaded"], f"minimoe._C failed to import: {info['import_error']}"
    assert info["import_error"] is None
    assert info["torch_version"] == torch.__version__


def test_cuda_compiled_when_torch_and_toolkit_have_cuda():
    info = ops.build_info()
    forced_off = os.environ.get("MINIMOE_CUDA") == "0"
    expected = torch.version.cuda is not None and cuda_toolkit_present() and not forced_off
    assert info["cuda_compiled"] == expected, info
    if expected:
        assert info["cuda_archs"], "a CUDA build must record its target architectures"
        assert "cuda" in info["kernels"]["awq_unpack"]


def test_cpu_isa_tier_matches_the_cpu_flags():
    # Independent of the extension's cpuid calls: the kernel tier must agree with the flags Linux reports.
    info = ops.build_info()
    flags = set()
    if os.path.exists("/proc/cpuinfo"):
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    if not flags:
        pytest.skip("no /proc/cpuinfo flags on this system")
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq", "fma"} <= flags:
        expected = "avx512"
    elif {"avx2", "fma", "f16c"} <= flags:
        expected = "avx2"
    else:
        expected = "scalar"
    assert info["cpu_isa"] == expected
    if info["cpu_amx"]:
        assert {"amx_tile", "amx_bf16", "avx512_bf16"} <= flags


def test_ops_registered_under_torch_ops_minimoe():
    assert hasattr(torch.ops.minimoe, "awq_unpack")
    assert hasattr(torch.ops.minimoe, "awq_gemm")
    schema = str(torch.ops.minimoe.awq_gemm.default._schema)
    assert "group_size" in schema


@pytest.mark.parametrize("device", devices())
def test_unpack_dispatches_by_device_and_matches_spec(device):
    # A word whose channels 0..7 hold codes 1..8, built by hand from the nibble table REVERSE=[0,4,1,5,2,6,3,7]:
    # channel j goes to nibble REVERSE[j], so nibble i holds code ORDER[i] + 1 with ORDER=[0,2,4,6,1,3,5,7]:
    #   nibbles 0..7 = 1, 3, 5, 7, 2, 4, 6, 8  ->  word 0x86427531 (top nibble 8: a negative int32)
    word = 0x86427531 - (1 << 32)
    packed = torch.tensor([[word, 0]], dtype=torch.int32, device=device)
    codes = torch.ops.minimoe.awq_unpack(packed)
    assert codes.device.type == device and codes.dtype == torch.uint8
    assert codes.cpu().tolist() == [[1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 0, 0, 0, 0]]


def test_unpack_kernel_agrees_with_reference_on_random_words():
    packed = torch.randint(-(2**31), 2**31 - 1, (37, 5), dtype=torch.int32)
    assert torch.equal(torch.ops.minimoe.awq_unpack(packed), minimoe.awq.unpack(packed).to(torch.uint8))


def test_unpack_rejects_wrong_dtype_with_a_clear_message():
    with pytest.raises(RuntimeError, match="packed must be int32, found Float"):
        torch.ops.minimoe.awq_unpack(torch.zeros(2, 2))


def test_fake_impl_traces_under_torch_compile_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        out = torch.ops.minimoe.awq_unpack(torch.empty(3, 4, dtype=torch.int32))
    assert tuple(out.shape) == (3, 32) and out.dtype == torch.uint8


def test_backend_names_the_kernel_in_use():
    assert ops.awq_backend("cpu") in ("cpu", "reference")
    if "cpu" in ops.build_info()["kernels"].get("awq_gemm", []):
        assert ops.awq_backend("cpu") == "cpu"
    kernels = ops.kernels("cpu")
    assert kernels["awq_gemm"] == (ops.awq_backend("cpu") == "cpu")
    assert kernels == {op: "cpu" in ops.build_info()["kernels"].get(op, []) for op in kernels}
    if not torch.cuda.is_available() and not ops.build_info()["cuda_compiled"]:
        assert ops.awq_backend("cuda") == "reference"


def test_package_works_without_the_extension():
    # A fresh interpreter in which importing minimoe._C fails (as when the build was skipped or broke):
    # one warning, build_info says why, and the ops fall back to the pure-PyTorch spec.
    code = (
        "import sys, warnings, torch\n"
        "class NoExtension:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'minimoe._C':\n"
        "            raise ImportError('simulated: extension not built')\n"
        "sys.meta_path.insert(0, NoExtension())\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    import minimoe.ops as ops\n"
        "assert sum('native extension not loaded' in str(w.message) for w in caught) == 1, caught\n"
        "info = ops.build_info()\n"
        "assert not info['extension_loaded'] and 'simulated' in info['import_error'], info\n"
        "assert ops.awq_backend('cpu') == 'reference' and ops.awq_backend('cuda') == 'reference'\n"
        "packed = torch.randint(-2**31, 2**31 - 1, (3, 2), dtype=torch.int32)\n"
        "assert ops.awq_unpack(packed).shape == (3, 16)\n"
        "import tempfile, minimoe\n"
        "from minimoe.testing import make_tiny_checkpoint\n"
        "path = make_tiny_checkpoint(tempfile.mkdtemp(), quantized=True)\n"
        "ids = torch.randint(0, 256, (2, 5))\n"
        "fast, ref = minimoe.load_model(path, dtype=torch.float32), minimoe.load_model(path, dtype=torch.float32, engine='reference')\n"
        "assert fast.engine == 'native' and 'kernel=reference' in str(fast), str(fast)[:2000]\n"
        "torch.testing.assert_close(fast(ids), ref(ids), rtol=0, atol=1e-5)\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
