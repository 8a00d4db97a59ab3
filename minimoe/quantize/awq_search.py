"""AWQ, the algorithm: activation-aware weight quantization (Lin et al., 2023, arXiv:2306.00978).

Read next to the paper (section numbers are the paper's). The format the result is stored in, and plain
round-to-nearest (RTN), live in minimoe/awq.py; this file decides *what* gets rounded.

The observation (3.1): a few input channels of each linear layer carry much larger activations than the rest,
and the weights that multiply them matter most. Rounding error on a weight w_jk reaches the output as
x_k * (Q(w_jk) - w_jk): the larger |x_k|, the more it costs.

The trick (3.2): scale input channel k of the weight up by s_k and its activation down by 1/s_k,

    y = x W^T = (x / s) (W * s)^T   ->   quantize W * s instead of W.

A channel scaled up spreads over more of its group's 16 levels, so its relative rounding error falls (the
group's step grows only if that channel held the group's max). The 1/s on the activation costs nothing at run
time: it is folded into the operation that produced x (an RMSNorm weight, or the rows of the previous linear),
so the model computes the same function before rounding (`fold_*` below; tests/test_awq_search.py checks it).

The search (3.3): s = mean|x|^alpha per channel, one alpha per group of linears sharing an input, chosen over a
grid of alpha in [0, 1] to minimise the mean squared error of the *block's* output (the attention, the MoE
block, not the single linear) on calibration text. alpha = 0 is s = 1, i.e. plain RTN, so the search never
does worse than RTN on its objective. Then (also 3.3, "clipping") the max of each weight group is shrunk over
a grid when that lowers the group's output error: a smaller range means a finer step for all the other weights.

Per decoder layer, in order (the groups AutoAWQ uses for Mixtral, with v -> o generalised to grouped heads):

    input_layernorm          -> q_proj, k_proj, v_proj           objective: the attention's output
    v_proj (rows)            -> o_proj (columns)                  objective: o_proj's output
    post_attention_layernorm -> gate, every expert's w1 and w3    objective: the MoE block's output
    expert e's w3 (rows)     -> expert e's w2 (columns)          objective: w2's output, on e's tokens
    then clipping for every linear but q_proj and k_proj (their errors pass through q k^T and the softmax, so a
    per-linear output error says little); then round to nearest (awq.quantize).

MoE-aware calibration. Each expert is calibrated on the tokens the router actually sends it (an expert's w2
sees its own tokens only, exactly as at inference). An expert that receives fewer than `min_expert_tokens`
calibration tokens has too little evidence to search on: it is calibrated on *every* token of the layer
instead, as if all were routed to it (its activation statistics are then those of the layer's input, the
best guess available), and the report lists it. The router (`gate`) is never quantized; the scale folded into
post_attention_layernorm is multiplied into its columns, so its logits are unchanged before rounding to fp16.
The report measures what quantization did to routing: the fraction of calibration tokens whose set of top-k
experts differs from the fp model's, for RTN and for AWQ.

What each layer sees. The calibration tokens run through the layers one at a time; layer i's input is the
output of the already-quantized layers 0..i-1 (inputs="quantized", the default: each layer is calibrated for
the inputs it will really get, and corrects for the error before it). AutoAWQ instead feeds each layer the
output of the unquantized layers before it (inputs="fp"); both are available.

Memory: one decoder layer is in memory at a time (in fp32, plus an RTN copy to measure against), plus the
calibration activations; `quantize_checkpoint_awq` reads each layer from the memory-mapped source and writes
it to its own shard before the next, so a model much larger than RAM quantizes in about one layer's memory.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import time
from typing import Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from minimoe import awq
from minimoe.config import ModelConfig
from minimoe.linear import Linear
from minimoe.model import DecoderLayer, RotaryEmbedding, Transformer


@dataclasses.dataclass
class Settings:
    group_size: int = 128
    bits: int = 4                 # 4 is what the AWQ GEMM format stores; 2..8 can be simulated (fake_quantize)
    grid: int = 20                # alpha in linspace(0, 1, grid): 0 (= RTN), ..., 1
    clip: bool = True
    clip_grid: int = 20           # clip candidates: max * (1 - i / clip_grid) for i < clip_grid * max_shrink
    max_shrink: float = 0.5
    clip_tokens: int = 512        # the clip search looks at this many calibration tokens (evenly spaced)
    min_expert_tokens: int = 16   # fewer routed tokens than this: calibrate the expert on all tokens
    duo_scaling: bool = False     # s = mean|x|^alpha / weight_magnitude^(1-alpha) instead of mean|x|^alpha
    inputs: str = "quantized"     # layer i's calibration input: output of the quantized ("quantized") or
                                  # unquantized ("fp") layers before it

    def check(self) -> None:
        awq._check_group_size(self.group_size)
        if not 2 <= self.bits <= 8:
            raise ValueError(f"bits must be in 2..8, found {self.bits}")
        if self.grid < 1 or self.clip_grid < 1 or not 0 <= self.max_shrink < 1:
            raise ValueError(f"grid and clip_grid must be >= 1 and max_shrink in [0, 1), found {self.grid}, "
                             f"{self.clip_grid}, {self.max_shrink}")
        if self.inputs not in ("quantized", "fp"):
            raise ValueError(f"inputs must be 'quantized' or 'fp', found {self.inputs!r}")

    @property
    def alphas(self) -> list[float]:
        return [i / (self.grid - 1) for i in range(self.grid)] if self.grid > 1 else [0.0]


# ------------------------------------------------------------------------------------- rounding to the grid


def fake_quantize(w: torch.Tensor, group_size: int, bits: int = 4) -> torch.Tensor:
    """Q(W): W [N, K] rounded to nearest on its groups' grids and dequantized, in fp32.

    For bits = 4 this is dequantize(quantize(W)) of minimoe/awq.py bit for bit (the same fp16-rounded scale, the
    same zero point, the same half-to-even rounding); other widths only change the number of levels, 2**bits."""
    N, K = w.shape
    top = 2**bits - 1
    g = w.float().reshape(N, K // group_size, group_size)
    lo, hi = torch.aminmax(g, dim=-1, keepdim=True)
    s = ((hi - lo).clamp(min=awq.MIN_RANGE) / top).half().float()   # the scale as stored (fp16)
    z = (-torch.round(lo / s)).clamp(0, top)
    # q = clamp(round(w / s) + z, 0, top); return (q - z) * s. In place on one buffer: the searches call this
    # hundreds of times on 4096 x 14336 matrices, where every extra temporary costs a pass over 235 MB.
    q = g / s
    q.round_().add_(z).clamp_(0, top).sub_(z).mul_(s)
    return q.reshape(N, K)


# ------------------------------------------------------------------------------------------ the scale search


def mean_abs(x: torch.Tensor) -> torch.Tensor:
    """Per-channel mean |x| over all tokens: the activation statistic s is built from (3.2)."""
    return x.reshape(-1, x.shape[-1]).float().abs().mean(0)


def weight_magnitude(linears: list[Linear], group_size: int) -> torch.Tensor:
    """Per input channel, the mean over all output rows of |w| / max|w| of its group: how much of its groups'
    range a channel's weights use (AutoAWQ's "duo scaling" statistic)."""
    w = torch.cat([layer.weight.detach().float() for layer in linears])
    g = w.abs().view(w.shape[0], -1, group_size)
    return (g / (g.amax(-1, keepdim=True) + 1e-6)).view(w.shape).mean(0)


def scales_for(stat: torch.Tensor, alpha: float, w_stat: torch.Tensor | None = None) -> torch.Tensor:
    """s = stat^alpha (the paper), or stat^alpha / w_stat^(1 - alpha) (duo scaling, when w_stat is given),
    normalised so that max(s) * min(s) = 1 (s and 1/s stay in a similar range).

    alpha = 0 without w_stat gives s = 1 exactly (RTN). The clamp keeps a dead channel (mean |x| = 0) from
    giving s = 0."""
    # [task 5.1]
    s = stat.pow(alpha)
    if w_stat is not None:
        s = s / (w_stat.pow(1 - alpha) + 1e-4)
    s = s.clamp(min=1e-4)
    return s / (s.max() * s.min()).sqrt()
    # [/task 5.1]


@dataclasses.dataclass
class ScaleChoice:
    alpha: float
    scales: torch.Tensor          # per channel of the shared input (before any expansion to the linears)
    errors: list[float]           # the objective at every alpha of the grid
    rtn_error: float              # ... at alpha = 0


@torch.no_grad()
def search_scale(run: Callable[[], torch.Tensor], linears: list[Linear], stat: torch.Tensor, settings: Settings,
                 share: SharedKV | None = None) -> ScaleChoice:
    """The alpha minimising ||run() with every W of `linears` replaced by Q(W * s) / s  -  run()||^2.

    run() computes the inspected block's output from fixed calibration inputs with the layers' current weights.
    Replacing W by Q(W * s) / s while the input stays x is the same as feeding x / s to Q(W * s), without
    having to touch the op that produced x during the search. `share` maps the per-channel s to the linears'
    input channels when they differ (o_proj under grouped-query attention)."""
    # [task 5.2]
    reference = run()
    originals = [layer.weight.detach().clone() for layer in linears]
    w_stat = None
    if settings.duo_scaling:
        w_stat = weight_magnitude(linears, settings.group_size)
        if share is not None:    # o_proj: averaged over the query heads that share a v channel
            w_stat = share.reduce(w_stat)
    errors, candidates = [], []
    for alpha in settings.alphas:
        s = scales_for(stat, alpha, w_stat)
        s_in = share.expand(s) if share else s
        for layer, w in zip(linears, originals):
            layer.weight.copy_(fake_quantize(w * s_in, settings.group_size, settings.bits).div_(s_in))
        errors.append((run() - reference).float().pow(2).mean().item())
        candidates.append(s)
    for layer, w in zip(linears, originals):
        layer.weight.copy_(w)
    best = min(range(len(errors)), key=errors.__getitem__)   # the first minimum: a tie keeps the smaller alpha
    return ScaleChoice(settings.alphas[best], candidates[best], errors, errors[0])
    # [/task 5.2]


# Folding the chosen s into the op before, so the model's function is unchanged (before rounding).

@torch.no_grad()
def fold_into_norm(norm: nn.Module, linears: list[nn.Module], s: torch.Tensor) -> None:
    """RMSNorm weight / s, and s into every consumer's input columns (the router's too: it reads the same x)."""
    # [task 5.3]
    norm.weight.div_(s.to(norm.weight.dtype))
    for layer in linears:
        layer.weight.mul_(s.to(layer.weight.dtype)[None, :])
    # [/task 5.3]


@torch.no_grad()
def fold_into_linear(producer: Linear, consumer: Linear, s: torch.Tensor, share: SharedKV | None = None) -> None:
    """producer's output rows / s (its output channels are the consumer's input channels), consumer * s.

    Exact only when nothing non-linear sits between them: v_proj -> (softmax-weighted sums) -> o_proj is linear
    in v; w3 -> (silu(w1 x) * .) -> w2 is linear in w3's output."""
    producer.weight.div_(s[:, None])
    consumer.weight.mul_((share.expand(s) if share else s)[None, :])


class SharedKV:
    """v_proj -> o_proj under grouped-query attention: o_proj's input channel (h, d) is a softmax-weighted sum of
    v channel (h // G, d) (G = H / Hkv query heads per kv head), so one scale per v channel is shared by the G
    o_proj channels that read it. expand: Hkv*D scales -> o_proj's H*D input channels; reduce: an H*D statistic
    -> Hkv*D (the mean over the G heads)."""

    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int):
        self.Hkv, self.G, self.D = num_kv_heads, num_heads // num_kv_heads, head_dim

    def expand(self, s: torch.Tensor) -> torch.Tensor:
        return s.view(self.Hkv, 1, self.D).expand(self.Hkv, self.G, self.D).reshape(-1)

    def reduce(self, stat: torch.Tensor) -> torch.Tensor:
        return stat.view(self.Hkv, self.G, self.D).mean(1).reshape(-1)


# --------------------------------------------------------------------------------------------- clipping


@torch.no_grad()
def search_clip(w: torch.Tensor, x: torch.Tensor, settings: Settings) -> torch.Tensor:
    """Per output channel n and group g, the range m (clamp to [-m, m] before rounding) minimising the group's
    output error mean_t (x_tg . (Q(clamp(w_ng)) - w_ng))^2 over a grid m = max|w_ng| * (1 - i / clip_grid).

    i = 0 is no clipping (RTN), so clipping never raises this error. Returns m [N, K/G, 1]."""
    N, K = w.shape
    G = settings.group_size
    x = x.reshape(-1, K).float()
    x = x[:: max(1, x.shape[0] // settings.clip_tokens)]
    xg = x.reshape(x.shape[0], K // G, G)                                         # [T, K/G, G]
    wg = w.float().reshape(N, K // G, G)                                          # [N, K/G, G]
    best_max = wg.abs().amax(-1, keepdim=True).clone()                            # [N, K/G, 1]
    chunk = max(8, (1 << 24) // max(1, x.shape[0] * (K // G)))                   # rows per step: ~64 MB floats
    steps = max(1, int(settings.max_shrink * settings.clip_grid))
    for r in range(0, N, chunk):
        wc = wg[r:r + chunk]
        reference = torch.einsum("tgk,ngk->ntg", xg, wc)
        top = wc.abs().amax(-1, keepdim=True)
        best_error = torch.full(top.shape, math.inf)
        for i in range(steps):
            m = top * (1 - i / settings.clip_grid)
            q = fake_quantize(torch.maximum(torch.minimum(wc, m), -m).reshape(-1, K), G, settings.bits)
            error = (torch.einsum("tgk,ngk->ntg", xg, q.reshape(wc.shape)) - reference).pow(2).mean(1)[..., None]
            better = error < best_error
            best_error = torch.where(better, error, best_error)
            best_max[r:r + chunk] = torch.where(better, m, best_max[r:r + chunk])
    return best_max


@torch.no_grad()
def apply_clip(layer: Linear, m: torch.Tensor, group_size: int) -> None:
    w = layer.weight
    g = w.view(w.shape[0], -1, group_size)
    g.copy_(torch.maximum(torch.minimum(g, m), -m))


# ------------------------------------------------------------------------------------------- one layer


def quantized_linears(layer: DecoderLayer) -> dict[str, Linear]:
    """The layer's linears that get int4 weights: everything but the router (which is not a Linear)."""
    return {name: m for name, m in layer.named_modules() if isinstance(m, Linear)}


def ffn_parts(layer: DecoderLayer) -> tuple[nn.Module, nn.Module | None, list[tuple[Linear, Linear, Linear]]]:
    """(the feed-forward block, its router or None, [(gate-side w1, up-side w3, down w2) per expert])."""
    if hasattr(layer, "block_sparse_moe"):
        moe = layer.block_sparse_moe
        return moe, moe.gate, [(e.w1, e.w3, e.w2) for e in moe.experts]
    mlp = layer.mlp
    return mlp, None, [(mlp.gate_proj, mlp.up_proj, mlp.down_proj)]


class Capture:
    """Records the input of chosen modules while a function runs (forward hooks), then removes the hooks."""

    def __init__(self, modules: dict[str, nn.Module]):
        self.modules, self.inputs = modules, {name: [] for name in modules}

    def run(self, fn: Callable[[], object]) -> dict[str, torch.Tensor | None]:
        handles = [m.register_forward_hook(lambda mod, args, out, name=name: self.inputs[name].append(args[0]))
                   for name, m in self.modules.items()]
        try:
            fn()
        finally:
            for h in handles:
                h.remove()
        return {name: torch.cat([t.reshape(-1, t.shape[-1]) for t in v]) if v else None
                for name, v in self.inputs.items()}


def relative_error(out: torch.Tensor, reference: torch.Tensor, x: torch.Tensor) -> float:
    """||out - reference|| / ||reference - x||: the error relative to what the layer adds to its input."""
    return ((out - reference).norm() / (reference - x).norm().clamp(min=1e-30)).item()


def changed_routes(a, b) -> float | None:
    """The fraction of tokens whose set of top-k experts differs between two runs of the same router."""
    if a is None:
        return None
    return (a.experts.sort(-1).values != b.experts.sort(-1).values).any(-1).float().mean().item()


@torch.no_grad()
def quantize_layer(layer: DecoderLayer, x: torch.Tensor, cos, sin, mask, settings: Settings,
                   keep_stats: bool = False) -> dict:
    """Search, fold, clip and round one fp32 decoder layer in place (its weights become Q(...) in fp32).

    x (S, T, C): the layer's calibration input. Returns the report (chosen alphas, error curves, expert token
    counts) and the AWQ tensors of every quantized linear under report["tensors"] (bits = 4 only)."""
    G, bits = settings.group_size, settings.bits
    attn = layer.self_attn
    ffn, router, experts = ffn_parts(layer)
    report: dict = {"alpha": {}, "errors": {}, "stats": {}}

    # 1. input_layernorm -> q, k, v; the attention's output is the objective
    a = layer.input_layernorm(x)
    qkv = [attn.q_proj, attn.k_proj, attn.v_proj]
    choice = search_scale(lambda: attn(a, cos, sin, mask, None), qkv, mean_abs(a), settings)
    fold_into_norm(layer.input_layernorm, qkv, choice.scales)
    _record(report, "qkv", choice, mean_abs(a), keep_stats)

    # 2. v_proj -> o_proj: the attention's output before o_proj, per v channel (averaged over its query heads)
    a = layer.input_layernorm(x)
    o_in = Capture({"o": attn.o_proj}).run(lambda: attn(a, cos, sin, mask, None))["o"]
    share = SharedKV(attn.num_heads, attn.num_kv_heads, attn.head_dim)
    stat = share.reduce(mean_abs(o_in))
    choice = search_scale(lambda: attn.o_proj(o_in), [attn.o_proj], stat, settings, share=share)
    fold_into_linear(attn.v_proj, attn.o_proj, choice.scales, share)
    _record(report, "v->o", choice, stat, keep_stats)

    # 3. post_attention_layernorm -> router + every expert's w1, w3; the whole MoE block's output is the objective
    h = x + attn(layer.input_layernorm(x), cos, sin, mask, None)
    b = layer.post_attention_layernorm(h)
    ins = [w for w1, w3, _ in experts for w in (w1, w3)]
    choice = search_scale(lambda: ffn(b)[0], ins, mean_abs(b), settings)
    fold_into_norm(layer.post_attention_layernorm, ins + ([router] if router is not None else []), choice.scales)
    _record(report, "ffn_in", choice, mean_abs(b), keep_stats)

    # 4. each expert: w3 -> w2, on the tokens routed to it (or all tokens, by the rule in the module docstring)
    b = layer.post_attention_layernorm(h)
    expert_in = _expert_inputs(ffn, experts, b, settings, report)
    for e, (w1, w3, w2) in enumerate(experts):
        down_in = expert_in[e]["w2"]
        choice = search_scale(lambda: w2(down_in), [w2], mean_abs(down_in), settings)
        fold_into_linear(w3, w2, choice.scales)
        _record(report, f"expert{e}.w3->w2", choice, mean_abs(down_in), keep_stats)

    # 5. clipping, on the inputs each linear sees now that the scales are folded in
    if settings.clip:
        a = layer.input_layernorm(x)
        o_in = Capture({"o": attn.o_proj}).run(lambda: attn(a, cos, sin, mask, None))["o"]
        b = layer.post_attention_layernorm(x + attn(a, cos, sin, mask, None))
        expert_in = _expert_inputs(ffn, experts, b, settings, None)
        targets = [(attn.v_proj, a), (attn.o_proj, o_in)]
        for e, (w1, w3, w2) in enumerate(experts):
            targets += [(w1, expert_in[e]["w1"]), (w3, expert_in[e]["w1"]), (w2, expert_in[e]["w2"])]
        for linear, inputs in targets:
            apply_clip(linear, search_clip(linear.weight, inputs, settings), G)

    # 6. round to nearest, on the transformed weights
    tensors = {}
    for name, linear in quantized_linears(layer).items():
        if bits == awq.SUPPORTED_BITS:
            tensors[name] = awq.quantize(linear.weight, group_size=G)
        linear.weight.copy_(fake_quantize(linear.weight, G, bits))
    report["tensors"] = tensors
    return report


def _record(report: dict, group: str, choice: ScaleChoice, stat: torch.Tensor, keep_stats: bool) -> None:
    report["alpha"][group] = choice.alpha
    report["errors"][group] = choice.errors
    if keep_stats:
        report["stats"][group] = stat.tolist()


def _expert_inputs(ffn, experts, b: torch.Tensor, settings: Settings, report: dict | None) -> list[dict]:
    """Each expert's w1 and w2 inputs on calibration tokens: the routed ones, or all of them (the stated rule)."""
    names = {}
    for e, (w1, _, w2) in enumerate(experts):
        names[f"{e}.w1"], names[f"{e}.w2"] = w1, w2
    seen = Capture(names).run(lambda: ffn(b))
    tokens = b.reshape(-1, b.shape[-1])
    out, counts, fallback = [], [], []
    for e, (w1, w3, _) in enumerate(experts):
        routed = seen[f"{e}.w1"]
        count = 0 if routed is None else routed.shape[0]
        counts.append(count)
        if count < settings.min_expert_tokens:
            fallback.append(e)
            out.append({"w1": tokens, "w2": F.silu(w1(tokens)) * w3(tokens)})
        else:
            out.append({"w1": routed, "w2": seen[f"{e}.w2"]})
    if report is not None:
        report["expert_tokens"], report["fallback_experts"] = counts, fallback
    return out


# ------------------------------------------------------------------------------------------- the model


def calibration_windows(ids: list[int] | torch.Tensor, samples: int, seq_len: int) -> torch.Tensor:
    """The first `samples` consecutive windows of `seq_len` tokens: (samples, seq_len)."""
    ids = torch.as_tensor(ids, dtype=torch.long)
    if samples < 1 or seq_len < 2:
        raise ValueError(f"samples must be >= 1 and seq_len >= 2, found {samples}, {seq_len}")
    if ids.numel() < samples * seq_len:
        raise ValueError(f"calibration text has {ids.numel()} tokens, {samples} samples of {seq_len} need "
                         f"{samples * seq_len}; give more text or fewer --samples / a smaller --seq-len")
    return ids[: samples * seq_len].view(samples, seq_len)


@torch.no_grad()
def quantize_layers(config: ModelConfig, embed_weight: torch.Tensor, windows: torch.Tensor,
                    layers: Iterator[DecoderLayer], settings: Settings,
                    on_layer: Callable[[int, DecoderLayer, dict], None] | None = None,
                    progress: Callable[[int, int, dict], None] | None = None, keep_stats: bool = False) -> dict:
    """The layer-by-layer loop. `layers` yields fp32 DecoderLayers in order (from memory or a file); each is
    quantized in place, then handed to on_layer(i, layer, report) (to be written, or kept). Three streams of
    the calibration tokens run alongside: through the fp layers, the RTN layers and the AWQ layers, so that
    per-layer errors and routing changes compare like with like. progress(done, total, report) after each."""
    settings.check()
    S, T = windows.shape
    if T > config.max_position_embeddings:
        raise ValueError(f"calibration windows of {T} tokens exceed the model's context of "
                         f"{config.max_position_embeddings}")
    with torch.device("meta"):
        shell = Transformer(config)                            # for the model's own attention-mask rule
    real = torch.ones(S, T, dtype=torch.bool)
    mask = shell._attention_mask(torch.arange(T), real)
    positions = torch.arange(T)[None].expand(S, T)
    cos, sin = RotaryEmbedding(config.head_dim, config.rope_theta)(positions, torch.float32)
    x0 = F.embedding(windows, embed_weight.float())
    streams = {"fp": x0, "rtn": x0, "awq": x0}
    summary: dict = {"settings": dataclasses.asdict(settings), "calibration_tokens": S * T, "layers": []}
    start = time.perf_counter()
    for i, layer in enumerate(layers):
        layer_start = time.perf_counter()
        x = streams["awq"] if settings.inputs == "quantized" else streams["fp"]
        rtn = _round_to_nearest(copy.deepcopy(layer), settings.group_size, settings.bits)
        fp_next, fp_route = layer(streams["fp"], cos, sin, mask, None)
        fp_here = fp_next if x is streams["fp"] else layer(x, cos, sin, mask, None)[0]
        rtn_here = rtn(x, cos, sin, mask, None)[0]
        rtn_next, rtn_route = rtn(streams["rtn"], cos, sin, mask, None)
        del rtn

        report = quantize_layer(layer, x, cos, sin, mask, settings, keep_stats=keep_stats)

        awq_next, awq_route = layer(streams["awq"], cos, sin, mask, None)
        awq_here = awq_next if x is streams["awq"] else layer(x, cos, sin, mask, None)[0]
        report.update(index=i, rtn_error=relative_error(rtn_here, fp_here, x),
                      awq_error=relative_error(awq_here, fp_here, x),
                      routes_changed_rtn=changed_routes(fp_route, rtn_route),
                      routes_changed_awq=changed_routes(fp_route, awq_route),
                      seconds=time.perf_counter() - layer_start)
        streams = {"fp": fp_next, "rtn": rtn_next, "awq": awq_next}
        if on_layer:
            on_layer(i, layer, report)
        report.pop("tensors", None)
        summary["layers"].append(report)
        if progress:
            progress(i + 1, config.num_hidden_layers, report)
    summary["seconds"] = time.perf_counter() - start
    return summary


@torch.no_grad()
def quantize_model(model: Transformer, windows: torch.Tensor, settings: Settings | None = None,
                   keep_stats: bool = False, progress=None) -> dict:
    """AWQ on a model in memory (fp32, reference modules): its weights become their quantized values in place,
    so the same model object then computes what the int4 checkpoint would (for perplexity experiments,
    including bit widths the file format cannot store). Returns the summary; the AWQ tensors of every linear
    are in summary["tensors"], keyed by the linear's full name, when bits = 4."""
    settings = settings or Settings()
    if model.dtype != torch.float32:
        raise ValueError(f"quantize_model needs an fp32 model (load_model(..., dtype='float32')), found "
                         f"{model.dtype}")
    from minimoe.linear import AWQLinear

    if any(isinstance(m, AWQLinear) for m in model.model.layers.modules()):
        raise ValueError("quantize_model needs a model with plain weights, found AWQ int4 layers")
    tensors = {}

    def keep(i, layer, report):
        for name, t in report["tensors"].items():
            tensors[f"model.layers.{i}.{name}"] = t

    summary = quantize_layers(model.config, model.model.embed_tokens.weight, windows, iter(model.model.layers),
                              settings, on_layer=keep, progress=progress, keep_stats=keep_stats)
    summary["tensors"] = tensors
    return summary


def round_to_nearest_model(model: Transformer, group_size: int, bits: int = 4) -> Transformer:
    """RTN on a model in memory, in place: every decoder linear W -> Q(W). The baseline AWQ is measured against."""
    for layer in model.model.layers:
        _round_to_nearest(layer, group_size, bits)
    return model


@torch.no_grad()
def _round_to_nearest(layer: DecoderLayer, group_size: int, bits: int) -> DecoderLayer:
    for linear in quantized_linears(layer).values():
        linear.weight.copy_(fake_quantize(linear.weight, group_size, bits))
    return layer


def load_layer(checkpoint, config: ModelConfig, i: int) -> DecoderLayer:
    """Decoder layer i, in fp32, from a (memory-mapped) checkpoint: only this layer's tensors are read."""
    with torch.device("meta"):
        layer = DecoderLayer(config, i, dtype=torch.float32)
    layer.to_empty(device="cpu")
    with torch.no_grad():
        for name, p in layer.named_parameters():
            p.copy_(checkpoint.tensor(f"model.layers.{i}.{name}").float())
    return layer


def write_summary(summary: dict, path: str) -> None:
    with open(path, "w") as f:
        json.dump({k: v for k, v in summary.items() if k != "tensors"}, f, indent=1)


def layer_line(report: dict) -> str:
    """One line per layer: the chosen alphas and the errors, for progress output."""
    alphas = report["alpha"]
    experts = [v for k, v in alphas.items() if k.startswith("expert")]
    routes = ""
    if report["routes_changed_rtn"] is not None:
        routes = (f", top-k changed RTN {100 * report['routes_changed_rtn']:.1f}% "
                  f"AWQ {100 * report['routes_changed_awq']:.1f}%")
    fallback = f", experts on all tokens (too few routed): {report['fallback_experts']}" \
        if report.get("fallback_experts") else ""
    return (f"layer {report['index']}: alpha qkv {alphas['qkv']:.2f} v->o {alphas['v->o']:.2f} "
            f"ffn {alphas['ffn_in']:.2f} w3->w2 {sum(experts) / len(experts):.2f}; "
            f"error RTN {report['rtn_error']:.4f} AWQ {report['awq_error']:.4f}{routes}{fallback} "
            f"({report['seconds']:.1f} s)")


@torch.no_grad()
def add_outlier_channels(model: Transformer, channels: int = 4, factor: float = 30.0, seed: int = 0) -> list[int]:
    """Give a model the outlier activation channels large language models have, without changing its function.

    For `channels` hidden channels k (the same in every layer, as the emergent outliers of LLMs are), each
    RMSNorm weight's k is multiplied by `factor` and the columns k of the linears reading that norm (q/k/v;
    the router and w1/w3) are divided by it: the logits are unchanged (up to fp32 rounding), but the
    activations those linears see now have a few channels `factor` times larger, and their weights in those
    columns are `factor` times smaller than the rest of their groups: the case RTN handles worst and AWQ was
    made for. Returns the channels."""
    g = torch.Generator().manual_seed(seed)
    picked = torch.randperm(model.config.hidden_size, generator=g)[:channels]
    s = torch.ones(model.config.hidden_size)
    s[picked] = factor
    for layer in model.model.layers:
        attn = layer.self_attn
        fold_into_norm(layer.input_layernorm, [attn.q_proj, attn.k_proj, attn.v_proj], 1 / s)
        ffn, router, experts = ffn_parts(layer)
        consumers = [w for w1, w3, _ in experts for w in (w1, w3)] + ([router] if router is not None else [])
        fold_into_norm(layer.post_attention_layernorm, consumers, 1 / s)
    return picked.tolist()
