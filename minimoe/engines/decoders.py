"""The decode steps of the `cuda-graph` and `compile` engines: one fixed-shape step, replayed or compiled.

A decode step of Confinus-2x7B is about 2,000 small GPU kernels (32 layers of norms, RoPE, attention, routing,
six int4 products and the element-wise glue). Launched one by one from Python, each costs several microseconds
of host time, far more than most of them take on the GPU: the GPU sits idle waiting for the host. A CUDA graph
records the whole step once; replaying it is one host call, and the GPU runs the kernels back to back.

A graph replays the same kernels with the same arguments and the same memory, so the step must not depend on
anything the host decides per step. `Transformer.forward` over a `StaticKVCache` (minimoe/cache.py) is that
step: the write slot, the positions and the attention mask live on the device and the cache advances them
itself. What changes per step from the outside (the token just sampled) is copied into a fixed input tensor
before replay.

    decoder = GraphDecoder(model, batch=1, capacity=prompt_len + new_tokens)
    decoder.start(prefilled_kv_cache)           # after an ordinary forward over the prompt
    logits = decoder.step(next_ids)             # (B, vocab); valid until the next step

`minimoe.generate.generate_ids` uses this for models run by the `cuda-graph` engine (the default on GPUs).

The same fixed-shape step can go through `torch.compile` instead (`CompiledDecoder`, the `compile` engine):
inductor turns the step's ~60 small torch ops per layer and the Python around them into a few generated loops.

Both run the reference Python as it was when they captured or compiled it. So each step first checks that the
functions of the model's modules are still the same objects (a few microseconds); if one was replaced since,
the decoder warns once and runs the step eagerly from then on, so the edit takes effect.
"""

from __future__ import annotations

import functools
import sys
import types
import warnings

import torch

from minimoe.cache import KVCache, StaticKVCache
from minimoe.engines.mirror import EngineFallbackWarning


def _code_snapshot() -> tuple:
    """Every function and method of the modules the model's forward runs, as objects (compared by identity)."""
    found = []
    for module_name in ("minimoe.model", "minimoe.cache", "minimoe.linear", "minimoe.engines.native"):
        module = sys.modules.get(module_name)
        for value in vars(module).values() if module is not None else ():
            if callable(value) and getattr(value, "__module__", None) == module_name:
                found.append(value)
                if isinstance(value, type):
                    found.extend(vars(value).values())
    return tuple(found)


def _step(model, ids, cache):
    """One decode step: the model's own forward over a StaticKVCache."""
    return model(ids, cache=cache)


class GraphDecoder:
    """One-token decode steps of `model` for `batch` rows, replayed from a CUDA graph captured at construction.

    capacity: the most tokens (prompt, padding included, plus generated) the cache will hold. Attention reads all
    of them every step, so size it to the generation at hand rather than to the model's whole context.
    graph=False runs the same steps eagerly (any device): the bookkeeping without the capture, for tests.
    """

    def __init__(self, model, batch: int, capacity: int, warmup_steps: int = 2, graph: bool = True):
        device = model.device
        if graph and device.type != "cuda":
            raise ValueError(f"GraphDecoder: CUDA graphs need the model on a CUDA device, found it on {device}")
        self._setup(model, batch, capacity)
        # Everything the steps touch is made under inference_mode (as the model's forward runs), and every later
        # in-place write to it happens under inference_mode too: torch refuses to update an inference tensor
        # outside it.
        with torch.inference_mode():
            self.cache = StaticKVCache(model.config, batch, capacity, model.dtype, device)
            self.ids = torch.zeros(batch, 1, dtype=torch.long, device=device)
            if not graph:
                return
            # Warm-up on a side stream, as torch.cuda.graphs asks: lazy initialisation (cuBLAS handles and
            # workspaces, the allocator's first blocks) must happen before capture, not inside it. The steps
            # write junk into the cache; start() overwrites every slot that will be read.
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(warmup_steps):
                    _step(model, self.ids, self.cache)
            torch.cuda.current_stream(device).wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):  # records, does not run
                self.logits = _step(model, self.ids, self.cache)
        torch.cuda.synchronize(device)

    def _setup(self, model, batch: int, capacity: int) -> None:
        """What every decoder holds before its cache and step exist."""
        if batch < 1:
            raise ValueError(f"{type(self).__name__}: batch must be >= 1, found {batch}")
        self.model, self.batch, self.capacity = model, batch, capacity
        self.length = 0  # slots in use, tracked on the host (the device copy is cache.slot)
        self.graph = None
        self._code = _code_snapshot()  # the Python this decoder captured or compiled
        self._stale = False

    def start(self, cache: KVCache) -> None:
        """Continue from a prefilled ordinary cache (the prompt's forward); resets anything decoded before."""
        if cache.keys[0] is None or cache.keys[0].shape[0] != self.batch:
            found = None if cache.keys[0] is None else cache.keys[0].shape[0]
            raise ValueError(f"GraphDecoder.start: expected a prefilled cache of batch {self.batch}, found {found}")
        with torch.inference_mode():
            self.length = self.cache.load(cache)

    def step(self, ids: torch.Tensor) -> torch.Tensor:
        """Feed one new token per row, ids (B,) or (B, 1) on the model's device; return the logits (B, vocab).

        The returned tensor is the graph's output buffer: the next step overwrites it. Clone it to keep it.
        """
        if self.length >= self.capacity:
            raise ValueError(f"GraphDecoder: the cache is full ({self.capacity} tokens); build the decoder with a "
                             f"larger capacity")
        ids = ids.reshape(-1, 1)
        if ids.shape[0] != self.batch:
            raise ValueError(f"GraphDecoder.step: expected {self.batch} ids, found {ids.shape[0]}")
        logits = self._run(ids)
        self.length += 1
        return logits[:, -1]

    def _code_changed(self) -> bool:
        """Was a function of the model's Python replaced since capture? Then warn once, and run eagerly."""
        if not self._stale and _code_snapshot() != self._code:
            self._stale = True
            warnings.warn(f"minimoe: {type(self).__name__}: the model's Python changed since its decode step was "
                          f"captured/compiled; running the steps eagerly from now on, so that your edit runs",
                          EngineFallbackWarning, stacklevel=3)
        return self._stale

    def _run(self, ids: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            self.ids.copy_(ids)
            if self.graph is not None and not self._code_changed():
                self.graph.replay()
                return self.logits
            return _step(self.model, self.ids, self.cache)


class CompiledDecoder(GraphDecoder):
    """GraphDecoder's decode steps run through `torch.compile` instead of a CUDA graph: for the CPU.

    The step compiled is `Transformer.forward` over a `StaticKVCache`, the same step a CUDA graph replays:
    its shapes never change during a generation, so it compiles once (the first step, at construction: tens of
    seconds on a 2-core machine) and every call after runs the generated code. A new capacity or batch means a
    new compilation; `generate_ids` rounds the capacity up to a power of two so that most prompts share one.
    The compiled function is kept on the model, so later generations with the same shapes start at once.
    """

    def __init__(self, model, batch: int, capacity: int):
        device = model.device
        self._setup(model, batch, capacity)
        # Ordinary tensors, not inference tensors: torch.compile will not trace in-place updates of inference
        # tensors (the cache write). no_grad gives the same "no autograd" without that restriction.
        with torch.no_grad():
            self.cache = StaticKVCache(model.config, batch, capacity, model.dtype, device)
            self.ids = torch.zeros(batch, 1, dtype=torch.long, device=device)
            self._step = compiled_decode_step(model)
            try:  # compile now, not in the middle of the first timed step; start() overwrites the junk it writes
                self._step(self.ids, self.cache)
            except Exception as error:
                raise RuntimeError(f"minimoe: torch.compile of the decode step failed ({type(error).__name__}: "
                                   f"{str(error).splitlines()[0][:300] if str(error) else ''})") from error

    def _run(self, ids: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            self.ids.copy_(ids)
            if self._code_changed():
                return _step(self.model, self.ids, self.cache)
            return self._step(self.ids, self.cache)


def compiled_decode_step(model):
    """torch.compile of one decode step, `model(ids, cache=static_cache)`: made once per model and per version
    of its Python (kept on the model), so later generations with the same shapes start at once.

    torch.compile keeps what it compiled per code object, guarded on the tensors and modules it saw but not on
    the code of the functions it inlined: a reference function edited between two generations would silently
    keep running the old compiled code. So each version of the Python (`_code_snapshot`) gets its own copy of
    `_step`'s code object, whose compile cache starts empty."""
    code = _code_snapshot()
    cached = model.__dict__.get("_compiled_decode_step")
    if cached is not None and cached[0] == code:
        return cached[1]
    fresh = types.FunctionType(_step.__code__.replace(), _step.__globals__, _step.__name__)
    step = torch.compile(functools.partial(fresh, model), dynamic=False)
    model.__dict__["_compiled_decode_step"] = (code, step)
    return step
