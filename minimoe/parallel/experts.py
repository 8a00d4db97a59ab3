"""The expert-parallel MoE block, the rule that splits experts over ranks, and the byte accounting.

Read next to model.py's SparseMoeBlock: the router and each Expert are the very same modules (the reference
ones), only where an expert runs changes. Every rank runs attention and the router on all tokens (they are
replicated), so after the router every rank knows every token's experts. Then, by `dispatch`:

  all_reduce   no token has to travel: every rank already holds every token. Each rank runs its own experts
               on the tokens that chose them and adds the weighted outputs into a zero buffer, exactly as
               SparseMoeBlock does for all experts; one all_reduce sums the ranks' buffers. The right choice
               when every token visits every rank (top-E of E, Confinus-2x7B's top-2 of 2) and, as it turns
               out, whenever 2k >= N (fewer bytes than the all_to_all below; docs/expert-parallel.md).
  all_to_all   the textbook dispatch. Each rank owns a contiguous slice of the tokens; it sends each of its
               (token, chosen expert) pairs to the rank holding that expert, after exchanging how many it will
               send (counts first, so every receiver can size its buffer); the receivers run their experts and
               send the outputs back the same way; the owner combines them with the router weights; and an
               all_gather gives every rank every token's output again (the residual stream is replicated).

Both give the single-process result: the same terms summed, for k <= 2 in an order that cannot change the sum.
"""

from __future__ import annotations

import dataclasses
import re

import torch
import torch.nn as nn

from minimoe.model import Expert, Router, RouterOutput

DISPATCHES = ("auto", "all_reduce", "all_to_all")

_EXPERT_NAME = re.compile(r"^model\.layers\.(\d+)\.block_sparse_moe\.experts\.(\d+)\.")


class ExpertParallelError(RuntimeError):
    """A collective failed: a peer rank stopped, or did not answer within the timeout."""


def shard_experts(num_experts: int, world: int) -> list[range]:
    """Which experts each rank holds: contiguous blocks, the first `num_experts % world` ranks one more.

    E = 4, N = 2 -> [0, 1], [2, 3];  E = 3, N = 2 -> [0, 1], [2];  E = 8, N = 3 -> [0, 1, 2], [3, 4, 5], [6, 7].
    Every rank must hold at least one expert (a rank without one would only replicate the attention).
    """
    if world < 1:
        raise ValueError(f"expert parallelism needs at least 1 rank, found {world}")
    if world > num_experts:
        raise ValueError(f"expert parallelism over {world} ranks needs at least {world} experts per layer; this "
                         f"model has {num_experts}: run at most {num_experts} ranks")
    base, extra = divmod(num_experts, world)
    ranges, start = [], 0
    for rank in range(world):
        size = base + (1 if rank < extra else 0)
        ranges.append(range(start, start + size))
        start += size
    return ranges


def choose_dispatch(top_k: int, world: int) -> str:
    """`dispatch="auto"`: the collective that moves fewer bytes per rank, for S = tokens x hidden x itemsize.

    all_reduce (ring): 2 (N-1)/N S.  all_to_all of the pairs, out and back, plus the all_gather that restores the
    replicated stream: (N-1)/N S (2k/N + 1), counting each pair as remote with probability (N-1)/N. So the
    all_to_all wins only when 2k < N (top-1 from 3 ranks, top-2 from 5); top-E of E never.
    """
    return "all_to_all" if 2 * top_k < world else "all_reduce"


@dataclasses.dataclass
class ExpertParallel:
    """This process's place among the ranks, and the collectives the MoE blocks use (each failure is one clear
    ExpertParallelError naming the rank, the collective and the layer, never a hang: see `timeout_s`).

    rank, world: this process's rank and the number of ranks.
    group: the torch.distributed process group (None = the default group that parallel.init() joined).
    dispatch: "auto", "all_reduce" or "all_to_all" (module docstring).
    timeout_s: how long a collective waits for the other ranks (the process group's timeout).
    device: where the collectives' own small tensors live ("cpu" under gloo, "cuda:N" under NCCL).
    """

    rank: int
    world: int
    group: object = None
    dispatch: str = "auto"
    timeout_s: float = 120.0
    device: str = "cpu"

    def __post_init__(self):
        if self.dispatch not in DISPATCHES:
            raise ValueError(f"dispatch must be one of {', '.join(DISPATCHES)}; found {self.dispatch!r}")
        if not 0 <= self.rank < self.world:
            raise ValueError(f"rank must be in 0..{self.world - 1} for {self.world} ranks, found {self.rank}")

    def experts_of(self, rank: int, num_experts: int) -> range:
        return shard_experts(num_experts, self.world)[rank]

    def holds(self, name: str, num_experts: int) -> bool:
        """Does this rank load the checkpoint tensor (or linear prefix) `name`? Everything but other ranks' experts."""
        match = _EXPERT_NAME.match(name + ".")
        return match is None or int(match.group(2)) in self.experts_of(self.rank, num_experts)

    # ---- the collectives, each wrapped so that a dead or silent peer is one clear error ----------------------
    def _run(self, what: str, fn):
        try:
            return fn()
        except RuntimeError as error:  # DistBackendError and DistError are RuntimeErrors
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ExpertParallelError(
                f"expert-parallel rank {self.rank} of {self.world}: {what} failed; another rank stopped or did "
                f"not answer within {self.timeout_s:g} s ({first})") from None

    def all_reduce(self, tensor: torch.Tensor, what: str) -> None:
        import torch.distributed as dist

        self._run(f"all_reduce ({what})", lambda: dist.all_reduce(tensor, group=self.group))

    def all_to_all(self, out: torch.Tensor, inp: torch.Tensor, out_splits: list[int] | None,
                   in_splits: list[int] | None, what: str) -> None:
        import torch.distributed as dist

        self._run(f"all_to_all ({what})", lambda: dist.all_to_all_single(
            out, inp, output_split_sizes=out_splits, input_split_sizes=in_splits, group=self.group))

    def all_gather_rows(self, rows: torch.Tensor, sizes: list[int], what: str) -> torch.Tensor:
        """Concatenate every rank's `rows` (rank r has sizes[r] of them) on every rank. gloo's all_gather wants
        equal shapes, so each rank pads to the largest share and the padding is dropped after."""
        import torch.distributed as dist

        largest = max(sizes)
        padded = rows.new_zeros(largest, *rows.shape[1:])
        padded[:rows.shape[0]] = rows
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        self._run(f"all_gather ({what})", lambda: dist.all_gather(parts, padded, group=self.group))
        return torch.cat([part[:size] for part, size in zip(parts, sizes)])

    def broadcast(self, tensor: torch.Tensor, what: str, src: int = 0) -> torch.Tensor:
        import torch.distributed as dist

        self._run(f"broadcast ({what})", lambda: dist.broadcast(tensor, src=src, group=self.group))
        return tensor

    def barrier(self, what: str) -> None:
        # an all_reduce of one number rather than dist.barrier(), which on NCCL needs to know the device
        self.all_reduce(torch.zeros(1, device=self.device), what)


class ExpertParallelMoeBlock(nn.Module):
    """SparseMoeBlock with only this rank's experts; the tokens travel by `dispatch` (module docstring).

    gate: the Router (replicated: every rank computes every token's choice).
    experts: {global expert index: Expert} for the experts this rank holds; the ModuleDict's keys are those
        indices, so the parameters keep the checkpoint's names (model.layers.3.block_sparse_moe.experts.1.w1).
    """

    def __init__(self, gate: Router, experts: dict[int, Expert], num_experts: int, ep: ExpertParallel,
                 layer_index: int):
        super().__init__()
        self.gate = gate
        self.experts = nn.ModuleDict({str(e): expert for e, expert in experts.items()})
        self.num_experts, self.ep, self.layer_index = num_experts, ep, layer_index
        self.dispatch = choose_dispatch(gate.top_k, ep.world) if ep.dispatch == "auto" else ep.dispatch
        owner = torch.empty(num_experts, dtype=torch.long)
        for rank, held in enumerate(shard_experts(num_experts, ep.world)):
            owner[list(held)] = rank
        self.owner = owner  # expert -> the rank holding it (a plain tensor, not a buffer: no checkpoint name)

    def extra_repr(self) -> str:
        held = [int(e) for e in self.experts]
        return (f"rank {self.ep.rank} of {self.ep.world} holds experts {held} of {self.num_experts}, "
                f"dispatch={self.dispatch}")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, RouterOutput]:
        B, T, C = x.shape
        tokens = x.reshape(B * T, C)
        route = self.gate(tokens)   # the same on every rank: the same tokens and the same router weights
        if self.dispatch == "all_reduce":
            out = self._by_all_reduce(tokens, route)
        else:
            out = self._by_all_to_all(tokens, route)
        return out.view(B, T, C), route

    def _by_all_reduce(self, tokens: torch.Tensor, route: RouterOutput) -> torch.Tensor:
        weights = route.weights.to(tokens.dtype)
        out = torch.zeros_like(tokens)
        for name, expert in self.experts.items():          # this rank's experts only
            token_index, slot = torch.where(route.experts == int(name))
            if token_index.numel():
                y = expert(tokens[token_index])
                out.index_add_(0, token_index, y * weights[token_index, slot, None])
        self.ep.all_reduce(out, f"layer {self.layer_index}: summing the ranks' expert outputs")
        return out

    def _by_all_to_all(self, tokens: torch.Tensor, route: RouterOutput) -> torch.Tensor:
        ep, layer = self.ep, f"layer {self.layer_index}"
        n, C = tokens.shape
        k = route.experts.shape[1]
        device = tokens.device
        # 1. This rank dispatches only the tokens it owns: a contiguous slice of the rows.
        sizes = [len(part) for part in torch.arange(n).tensor_split(ep.world)]
        start = sum(sizes[:ep.rank])
        mine = tokens[start:start + sizes[ep.rank]]
        chosen = route.experts[start:start + sizes[ep.rank]]                     # (m, k)
        weights = route.weights[start:start + sizes[ep.rank]].to(tokens.dtype)  # (m, k)
        # 2. Its (token, slot) pairs, sorted by the rank that holds the chosen expert.
        destination = self.owner.to(device)[chosen].flatten()                  # (m*k,)
        order = torch.argsort(destination, stable=True)
        pair_token = torch.arange(mine.shape[0], device=device).repeat_interleave(k)[order]
        pair_expert = chosen.flatten()[order]
        pair_weight = weights.flatten()[order]
        send_counts = torch.bincount(destination, minlength=ep.world)
        # 3. Counts first: every rank learns how many pairs each other rank will send it.
        recv_counts = torch.empty_like(send_counts)
        ep.all_to_all(recv_counts, send_counts, None, None, f"{layer}: pair counts")
        sends, recvs = send_counts.tolist(), recv_counts.tolist()
        # 4. The tokens, and which expert each one is for.
        received = tokens.new_empty(sum(recvs), C)
        ep.all_to_all(received, mine[pair_token], recvs, sends, f"{layer}: tokens to their experts")
        received_expert = pair_expert.new_empty(sum(recvs))
        ep.all_to_all(received_expert, pair_expert, recvs, sends, f"{layer}: expert ids")
        # 5. This rank's experts, each on the rows sent to it.
        y = torch.empty_like(received)
        rows_done = 0
        for name, expert in self.experts.items():
            rows = torch.where(received_expert == int(name))[0]
            if rows.numel():
                y[rows] = expert(received[rows])
                rows_done += rows.numel()
        if rows_done != received.shape[0]:
            raise ExpertParallelError(f"expert-parallel rank {ep.rank}: {layer} received "
                                      f"{received.shape[0] - rows_done} token(s) for experts it does not hold")
        # 6. The outputs go back to the tokens' owners: the same exchange with the splits swapped.
        returned = tokens.new_empty(sum(sends), C)
        ep.all_to_all(returned, y, sends, recvs, f"{layer}: expert outputs back")
        # 7. The owner combines them with the router's weights, as SparseMoeBlock does.
        out_mine = torch.zeros_like(mine)
        out_mine.index_add_(0, pair_token, returned * pair_weight[:, None])
        # 8. Every rank needs every token's output: the residual stream after the block is replicated too.
        return ep.all_gather_rows(out_mine, sizes, f"{layer}: the outputs to every rank")


def shard_model(model: nn.Module, ep: ExpertParallel) -> nn.Module:
    """Replace every SparseMoeBlock of `model` (built on the meta device, before loading) by an
    ExpertParallelMoeBlock holding only this rank's experts; the others are dropped before they hold a byte."""
    from minimoe.model import SparseMoeBlock

    for index, layer in enumerate(model.model.layers):
        block = getattr(layer, "block_sparse_moe", None)
        if block is None and not model.config.is_moe:
            raise ValueError("expert parallelism needs a sparse MoE model; this one has dense MLP layers")
        if block is None:
            raise ValueError(f"expert parallelism runs the mixtral family only; layer {index} of this "
                             f"{model.config.model_type} model has no block_sparse_moe")
        if type(block) is not SparseMoeBlock:
            raise ValueError(f"layer {index}: expected model.py's SparseMoeBlock to shard, found {type(block).__name__}")
        held = ep.experts_of(ep.rank, len(block.experts))
        layer.block_sparse_moe = ExpertParallelMoeBlock(block.gate, {e: block.experts[e] for e in held},
                                                        len(block.experts), ep, index)
    return model


def split_bytes(checkpoint, world: int) -> list[dict]:
    """How a checkpoint would be split over `world` ranks: per rank, its experts and the bytes it loads
    (replicated = everything that is not an expert, the routers included), from the safetensors headers."""
    c = checkpoint.config
    if not c.is_moe:
        raise ValueError(f"{checkpoint.path}: a dense model (no experts) cannot be split by expert parallelism")
    if c.model_type != "mixtral":
        raise ValueError(f"{checkpoint.path}: expert parallelism runs the mixtral family only, found "
                         f"model_type {c.model_type!r}")
    per_expert = [0] * c.num_local_experts
    replicated = 0
    for name, info in checkpoint.tensors.items():
        match = _EXPERT_NAME.match(name)
        if match:
            per_expert[int(match.group(2))] += info.nbytes
        else:
            replicated += info.nbytes
    rows = []
    for rank, held in enumerate(shard_experts(c.num_local_experts, world)):
        experts = sum(per_expert[e] for e in held)
        rows.append({"rank": rank, "experts": list(held), "replicated_bytes": replicated, "expert_bytes": experts,
                     "total_bytes": replicated + experts})
    return rows


def loaded_bytes(model: nn.Module) -> int:
    """Bytes of every distinct tensor storage the model holds (parameters and buffers; a tied table once)."""
    seen, total = set(), 0
    for tensor in list(model.parameters()) + list(model.buffers()):
        storage = tensor.untyped_storage()
        key = (storage.data_ptr(), tensor.device)
        if key not in seen:
            seen.add(key)
            total += storage.nbytes()
    return total
