"""Engines: how the reference model (minimoe/model.py) is run fast, always from outside it.

An engine is chosen by one name everywhere: `load_model(..., engine=...)`, `generate(..., engine=...)`,
`minimoe generate/chat/route --engine ...`, `pytest --engine ...`, or $MINIMOE_ENGINE (the default for all).

    reference   the Python of model.py as written, every op, the int4 product too (linear layers' kernel=False)
    native      the compiled fast paths: int4 kernels (kernel=True) and the modules of minimoe/engines/native.py
                swapped in for the reference ones they mirror (CPU: fused norm, decode attention, whole-layer
                decode step; every device: batched expert products)
    compile     int4 kernels, and the decode steps through torch.compile of the same Python (a fixed-shape step
                over a StaticKVCache; the first generation of a shape compiles for tens of seconds)
    cuda-graph  int4 kernels, and the decode steps replayed from one captured CUDA graph of the same Python
    auto        the default: the fastest measured engine for the model's device: cuda-graph on a GPU, native on
                a CPU (docs/benchmarks.md)

An engine changes the model only by visible means: the linear layers' `kernel` flag and module classes swapped
for subclasses, both shown by `print(model)`, and `model.engine`, which generate() reads to pick how decode
steps run. A fast path never silently replaces an edited reference function: see minimoe/engines/mirror.py.
"""

from __future__ import annotations

import os
import warnings

import torch.nn as nn

from minimoe.engines.mirror import EngineFallbackWarning, explain, fingerprint  # noqa: F401  (public)
from minimoe.linear import AWQLinear, Linear

NAMES = ("reference", "native", "compile", "cuda-graph", "auto")

# engine -> (linear kernels on?, which reference classes get their native twin, how decode steps run)
_SPEC = {
    "reference": (False, (), "eager"),
    "native": (True, ("RMSNorm", "Attention", "SparseMoeBlock", "MLP", "DecoderLayer"), "eager"),
    # A CUDA graph cannot capture the reference SparseMoeBlock's data-dependent gather (torch.where), nor can
    # torch.compile trace it without splitting the graph; the native block has a fixed-shape path for top-E of E.
    "compile": (True, ("SparseMoeBlock",), "compile"),
    "cuda-graph": (True, ("SparseMoeBlock",), "cuda-graph"),
}


def default_name() -> str:
    """$MINIMOE_ENGINE if set (pytest --engine sets it), else "auto"."""
    return os.environ.get("MINIMOE_ENGINE") or "auto"


def check_name(name: str | None) -> str:
    """`name` (or the default when None) if it names an engine; else one clear error."""
    name = default_name() if name is None else name
    if name not in NAMES:
        raise ValueError(f"engine must be one of {', '.join(NAMES)}; found {name!r}")
    return name


def resolve(name: str | None, device) -> str:
    """The concrete engine `name` means for a model on `device` ("auto" -> what is fastest there)."""
    name = check_name(name)
    device_type = getattr(device, "type", str(device))
    if name == "auto":
        return "cuda-graph" if device_type == "cuda" else "native"
    if name == "cuda-graph" and device_type != "cuda":
        raise ValueError(f"engine 'cuda-graph' needs the model on a CUDA device, found it on {device}")
    return name


def decode_mode(model) -> str:
    """How generate() runs decode steps for this model: "eager", "compile" or "cuda-graph"."""
    return _SPEC[getattr(model, "engine", "reference")][2]


def use(model: nn.Module, name: str | None = None) -> nn.Module:
    """Make `engine` run `model` (in place; returns it). Undoes whatever engine ran it before."""
    from minimoe.engines import native

    name = resolve(name, model.device)
    kernel, swapped, _ = _SPEC[name]
    twins = {cls: twin for cls, twin in native.NATIVE.items() if cls.__name__ in swapped}
    stale = {}
    for twin in twins.values():
        changed = twin.mirror.changed()
        if changed:
            stale[twin] = changed
            warnings.warn(explain(f"engine {name!r}'s {twin.__name__}", changed), EngineFallbackWarning,
                          stacklevel=2)
    reference_of = {twin: cls for cls, twin in native.NATIVE.items()}
    for module in model.modules():
        cls = reference_of.get(type(module), type(module))
        if cls is not type(module):
            module.__class__ = cls                     # back to the reference first
        twin = twins.get(cls)
        if twin is not None and twin not in stale:
            module.__class__ = twin
        if isinstance(module, (Linear, AWQLinear)):
            module.kernel = kernel
    model.engine = name
    native.structure_changed()   # classes were swapped: what a native module gathered may be stale
    return model
