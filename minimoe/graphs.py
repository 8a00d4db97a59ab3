"""Decode steps replayed from one captured CUDA graph.

A decode step of Confinus-2x7B is about 2,000 small GPU kernels (32 layers of norms, RoPE, attention, routing,
six int4 products and the element-wise glue). Launched one by one from Python, each costs several microseconds
of host time, far more than most of them take on the GPU: the GPU sits idle waiting for the host. A CUDA graph
records the whole step once; replaying it is one host call, and the GPU runs the kernels back to back.

A graph replays the same kernels with the same arguments and the same memory, so the step must not depend on
anything the host decides per step. `Transformer.decode_step` with a `StaticKVCache` is written that way: the
write slot, the positions and the attention mask live on the device and the step advances them itself. What
changes per step from the outside (the token just sampled) is copied into a fixed input tensor before replay.

    decoder = GraphDecoder(model, batch=1, capacity=prompt_len + new_tokens)
    decoder.start(prefilled_kv_cache)           # after an ordinary forward over the prompt
    logits = decoder.step(next_ids)             # (B, vocab); valid until the next step

`minimoe.generate.generate_ids` uses this on CUDA devices by default (`cuda_graph=None`).

On the CPU the same graph-ready step can go through `torch.compile` instead (`CompiledDecoder`,
`generate_ids(..., compile=True)`): inductor turns the step's ~60 small torch ops per layer and the Python
around them into a few generated C++ loops, which is what a CPU decode step spends a quarter of its time on.
"""

from __future__ import annotations

import functools

import torch

from minimoe.model import KVCache, StaticKVCache


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
                    model.decode_step(self.ids, self.cache)
            torch.cuda.current_stream(device).wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):  # records, does not run
                self.logits = model.decode_step(self.ids, self.cache)
        torch.cuda.synchronize(device)

    def _setup(self, model, batch: int, capacity: int) -> None:
        """What every decoder holds before its cache and step exist."""
        if batch < 1:
            raise ValueError(f"{type(self).__name__}: batch must be >= 1, found {batch}")
        self.model, self.batch, self.capacity = model, batch, capacity
        self.length = 0  # slots in use, tracked on the host (the device copy is cache.slot)
        self.graph = None

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

    def _run(self, ids: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            self.ids.copy_(ids)
            if self.graph is not None:
                self.graph.replay()
                return self.logits
            return self.model.decode_step(self.ids, self.cache)


class CompiledDecoder(GraphDecoder):
    """GraphDecoder's decode steps run through `torch.compile` instead of a CUDA graph: for the CPU.

    The step compiled is `Transformer.decode_step` over a `StaticKVCache`, the same step a CUDA graph replays:
    its shapes never change during a generation, so it compiles once (the first step, at construction: tens of
    seconds on a 2-core machine) and every call after runs the generated code. A new capacity or batch means a
    new compilation; `generate_ids` rounds the capacity up to a power of two so that most prompts share one.
    The compiled function is kept on the model, so later generations with the same shapes start at once.
    """

    def __init__(self, model, batch: int, capacity: int):
        device = model.device
        if device.type != "cpu":
            raise ValueError(f"CompiledDecoder: the compiled decode step is for the CPU, found the model on {device} "
                             f"(on a GPU, GraphDecoder's CUDA graph is the default)")
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
            return self._step(self.ids, self.cache)


def compiled_decode_step(model):
    """torch.compile of `model.decode_step` (made once per model and kept on it)."""
    step = model.__dict__.get("_compiled_decode_step")
    if step is None:
        # decode_step without its inference_mode decorator: dynamo cannot trace inside inference mode here.
        plain = type(model).decode_step.__wrapped__
        step = torch.compile(functools.partial(plain, model), dynamic=False)
        model.__dict__["_compiled_decode_step"] = step
    return step
