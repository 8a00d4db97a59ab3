"""Text generation: prefill the prompt once, then decode one token at a time through the KV cache.

    result = generate(model, tokenizer, "Once upon a time", max_new_tokens=40, temperature=0.8, top_p=0.95, seed=0)
    result.texts[0], result.tokens[0], result.decode_tokens_per_s

Prefill runs all prompt tokens in one forward (compute-bound: big matmuls). Each decode step runs one token
per prompt (memory-bound: every weight is read once per step), which is why decode speed is quoted against
the bandwidth floor. A batch of prompts is left-padded so every row's newest token sits in the last column.

Sampling order per step, as in the reference implementations: repetition penalty -> temperature -> top-k ->
top-p -> sample. temperature 0 means greedy (argmax).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import threading
import time
import warnings
from typing import Callable, Sequence

import torch

from minimoe import engines


@dataclasses.dataclass
class SamplingConfig:
    max_new_tokens: int = 64
    temperature: float = 0.0          # 0: greedy
    top_k: int = 0                    # 0: no top-k filter
    top_p: float = 1.0                # 1: no nucleus filter
    repetition_penalty: float = 1.0   # 1: off; >1 discourages tokens already in the sequence (CTRL-style)
    seed: int | None = None
    stop: Sequence[str] = ()          # stop strings (the text is cut before them)
    stop_on_eos: bool = True

    def check(self) -> None:
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, found {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, found {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, found {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], found {self.top_p}")
        if self.seed is not None and not 0 <= self.seed < 2 ** 63:
            raise ValueError(f"seed must be in 0..2**63-1 (or None), found {self.seed}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, found {self.repetition_penalty}")


@dataclasses.dataclass
class GenerationResult:
    texts: list[str]                  # generated text per prompt (prompt not included)
    tokens: list[list[int]]           # generated ids per prompt
    prompt_tokens: list[int]          # prompt length per prompt, in tokens
    finish_reasons: list[str]         # "eos" | "stop" | "length" | "context"
    prefill_seconds: float
    decode_seconds: float
    decode_steps: int
    graph_seconds: float = 0.0        # capturing the CUDA decode graph (once per call; 0 without one)

    @property
    def prefill_tokens_per_s(self) -> float:
        return sum(self.prompt_tokens) / self.prefill_seconds if self.prefill_seconds > 0 else float("nan")

    @property
    def decode_tokens_per_s(self) -> float:
        """Generated tokens per second after the first (which prefill produced), summed over the batch."""
        rows = len(self.tokens)
        return rows * self.decode_steps / self.decode_seconds if self.decode_seconds > 0 else float("nan")


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """logits (B, V); seen (B, V) bool. Positive logits are divided by the penalty, negative multiplied."""
    if penalty == 1.0:
        return logits
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def filter_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def filter_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches p (Holtzman et al., 2019)."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    before = probs.cumsum(-1) - probs            # mass strictly before each token
    drop_sorted = before >= p                    # the best token always survives (before = 0 < p)
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def next_tokens(logits: torch.Tensor, cfg: SamplingConfig, seen: torch.Tensor,
                generator: torch.Generator | None) -> torch.Tensor:
    """logits (B, V) of the last position -> next ids (B,)."""
    logits = apply_repetition_penalty(logits.float(), seen, cfg.repetition_penalty)
    if cfg.temperature == 0:
        return logits.argmax(-1)
    logits = filter_top_p(filter_top_k(logits / cfg.temperature, cfg.top_k), cfg.top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(logits.device)


def generate_ids(model, prompts: Sequence[Sequence[int]], cfg: SamplingConfig | None = None, *,
                 eos_id: int | None = None,
                 on_step: Callable[[int, int], bool] | None = None,
                 engine: str | None = None) -> GenerationResult:
    """Token-level generation: prompts as id lists -> GenerationResult (texts left empty).

    on_step(row, token) is called for every generated token; returning True finishes that row (stop strings).
    engine: run the model with this engine from now on (minimoe.engines.use; None keeps the model's own,
    `model.engine`, which load_model chose). Its decode steps then run eagerly (reference, native), replayed
    from a CUDA graph (cuda-graph; if the capture fails, a warning says why and the steps run eagerly) or
    through torch.compile (compile: the first generation with a new batch size or capacity bucket compiles for
    tens of seconds, GenerationResult's graph_seconds; later ones reuse it; a failed compilation raises).
    """
    cfg = cfg or SamplingConfig()
    cfg.check()
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt must have at least one token (encode with bos=True)")
    context = model.config.max_position_embeddings
    longest = max(len(p) for p in prompts)
    if longest > context:
        raise ValueError(f"the prompt has {longest} tokens, longer than the model's context of {context}")
    device = model.device
    batch, vocab = len(prompts), model.config.vocab_size
    ids = torch.zeros(batch, longest, dtype=torch.long)
    mask = torch.zeros(batch, longest, dtype=torch.long)
    for row, prompt in enumerate(prompts):  # left padding: the newest token of every row is in the last column
        ids[row, longest - len(prompt):] = torch.tensor(list(prompt), dtype=torch.long)
        mask[row, longest - len(prompt):] = 1
    ids, mask = ids.to(device), mask.to(device)
    seen = torch.zeros(batch, vocab, dtype=torch.bool, device=device)  # for the repetition penalty
    for row, prompt in enumerate(prompts):
        seen[row, torch.tensor(list(prompt), device=device)] = True
    generator = torch.Generator().manual_seed(cfg.seed) if cfg.seed is not None else None

    out: list[list[int]] = [[] for _ in range(batch)]
    reasons = ["length"] * batch
    done = [False] * batch
    budget = min(cfg.max_new_tokens, context - longest)
    if engine is not None:
        engines.use(model, engine)
    mode = engines.decode_mode(model)  # "eager", "compile" or "cuda-graph"
    cache = model.new_cache()
    decoder = None
    prefill_s = decode_s = graph_s = 0.0
    steps = 0
    feed, feed_mask = ids, mask
    with cycle_collection(False):  # see its docstring: 4-8% of a CPU decode step
        for step in range(budget):
            if step == 1 and mode != "eager" and budget > 2:  # a graph or a compilation pays off from 2 steps
                t0 = time.perf_counter()
                decoder = _step_decoder(model, batch, longest + budget, mode)
                if decoder is not None:
                    decoder.start(cache)
                    cache = None  # the prompt's keys and values now live in the decoder's own cache
                    graph_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            if decoder is not None:
                logits = decoder.step(feed)
            else:
                with torch.inference_mode():
                    logits = model(feed, cache=cache, attention_mask=feed_mask, last_token_only=True)[:, -1]
            token = next_tokens(logits, cfg, seen, generator)
            if getattr(model, "expert_parallel", None) is not None:  # every rank goes on with rank 0's choice
                token = model.expert_parallel.broadcast(token, f"step {step}'s tokens")
            token_list = token.tolist()  # synchronises, so the timing below is honest on a GPU too
            elapsed = time.perf_counter() - t0
            if step == 0:
                prefill_s = elapsed
            else:
                decode_s += elapsed
                steps += 1
            for row, t in enumerate(token_list):
                if done[row]:
                    continue
                if cfg.stop_on_eos and eos_id is not None and t == eos_id:
                    done[row], reasons[row] = True, "eos"
                    continue
                out[row].append(t)
                if on_step is not None and on_step(row, t):
                    done[row], reasons[row] = True, "stop"
            if all(done):
                break
            seen.scatter_(1, token[:, None], True)
            feed, feed_mask = token[:, None], None
    if budget < cfg.max_new_tokens:
        reasons = [r if r != "length" else "context" for r in reasons]
    return GenerationResult([""] * batch, out, [len(p) for p in prompts], reasons, prefill_s, decode_s, steps,
                            graph_s)


@contextlib.contextmanager
def cycle_collection(enabled: bool):
    """Python's cycle collector on or off for the block, then as it was before (even on an exception).

    generate_ids decodes with it off. A decode step makes and drops about a thousand tensors. Every 700 new
    container objects Python runs its cycle collector; every tenth run also walks the older objects, and now and
    then a full run walks all of them: with torch imported that is 300,000+ objects, none of them garbage.
    Measured at the mid-size model on the CPU, interleaved: 4-8% of the decode time. Reference counting still
    frees every tensor at once; cycles made in the loop are collected once the collector is back on.
    """
    if not enabled:
        with _pause_collector():
            yield
        return
    was_enabled = gc.isenabled()
    gc.enable()
    try:
        yield
    finally:
        (gc.enable if was_enabled else gc.disable)()


_pause_lock = threading.Lock()
_pause_state = {"active": 0, "was_enabled": True}


@contextlib.contextmanager
def _pause_collector():
    """Collector off while any generation runs, in any thread; back as it was when the last one ends. (Each
    call restoring what *it* saw would leave it off for good when two threads overlap: the second saw it off.)"""
    with _pause_lock:
        if _pause_state["active"] == 0:
            _pause_state["was_enabled"] = gc.isenabled()
            gc.disable()
        _pause_state["active"] += 1
    try:
        yield
    finally:
        with _pause_lock:
            _pause_state["active"] -= 1
            if _pause_state["active"] == 0 and _pause_state["was_enabled"]:
                gc.enable()


def _step_decoder(model, batch: int, needed: int, mode: str):
    """The decoder generate_ids hands its steps to after the prompt: compiled or a CUDA graph. None when the
    capture is refused (a warning says why; the steps then run eagerly)."""
    from minimoe.engines.decoders import CompiledDecoder, GraphDecoder

    if mode == "compile":
        with cycle_collection(True):  # compiling makes much garbage, cycles included
            capacity = _capacity_bucket(needed, model.config.max_position_embeddings)
            return CompiledDecoder(model, batch, capacity)
    try:
        return GraphDecoder(model, batch, capacity=needed)
    except RuntimeError as error:  # capture refused by this torch / driver / op: decode eagerly
        warnings.warn(f"minimoe: CUDA graph capture failed, decoding without a graph "
                      f"({type(error).__name__}: {str(error).splitlines()[0][:200]})", RuntimeWarning, stacklevel=3)
        return None


def _capacity_bucket(needed: int, context: int) -> int:
    """The compiled decode step's cache capacity: `needed` rounded up to a power of two (at least 64, at most the
    context), so that generations of similar length share one compilation."""
    return min(context, max(64, 1 << (needed - 1).bit_length()))


def generate(model, tokenizer, prompts: str | Sequence[str], cfg: SamplingConfig | None = None, *,
             on_token: Callable[[int, str], None] | None = None, engine: str | None = None,
             **sampling) -> GenerationResult:
    """Generate text for one prompt or a batch. Other keyword arguments are SamplingConfig fields.

    on_token(row, text) streams each row's new text as soon as it forms whole characters.
    engine: as for generate_ids (None: the model's own engine, chosen when it was loaded).
    """
    cfg = dataclasses.replace(cfg or SamplingConfig(), **sampling)
    single = isinstance(prompts, str)
    prompt_list = [prompts] if single else list(prompts)
    encoded = [tokenizer.encode(p, bos=True) for p in prompt_list]
    decoders = [tokenizer.stream_decoder() for _ in prompt_list]
    for decoder, ids in zip(decoders, encoded):
        # Prime each decoder with its prompt: a continuation's first piece "▁time" must print " time", and
        # only the start of a whole text loses its dummy-prefix space.
        for i in ids:
            decoder.push(i)
    texts = [""] * len(prompt_list)
    stops = [s for s in cfg.stop if s]

    def on_step(row: int, token: int) -> bool:
        piece = decoders[row].push(token)
        if not piece:
            return False
        before = len(texts[row])
        texts[row] += piece
        hit = min((i for i in (texts[row].find(s, max(0, before - len(s))) for s in stops) if i >= 0), default=-1)
        if hit >= 0:  # cut before the stop string; stream only what precedes it
            piece = texts[row][before:hit] if hit > before else ""
            texts[row] = texts[row][:hit]
        if on_token is not None and piece:
            on_token(row, piece)
        return hit >= 0

    result = generate_ids(model, encoded, cfg, eos_id=tokenizer.eos_id, on_step=on_step, engine=engine)
    for row, decoder in enumerate(decoders):
        if result.finish_reasons[row] != "stop":
            tail = decoder.flush()
            texts[row] += tail
            if on_token is not None and tail:
                on_token(row, tail)
    result.texts = texts
    return result
