"""Expert parallelism over torch.distributed: each rank holds some of every MoE layer's experts.

    torchrun --nproc-per-node 2 -m minimoe generate --expert-parallel "To be, or not to be"

or from Python, in every process that torchrun started:

    from minimoe import parallel
    ep = parallel.init()                                   # joins the other ranks (gloo on CPUs, NCCL on GPUs)
    model = minimoe.load_model(path, expert_parallel=ep)   # this rank loads only its own experts' tensors
    minimoe.generate(model, tokenizer, "To be")            # every rank runs it; all get the same text

What runs where (docs/expert-parallel.md has the picture and the costs):
- attention, the norms, the router, the embedding and the lm_head are replicated: every rank runs them on
  every token, so every rank holds the same residual stream;
- the experts of each MoE layer are split over the ranks (`shard_experts`: contiguous blocks, the first
  E mod N ranks one more);
- `ExpertParallelMoeBlock` (minimoe/parallel/experts.py) takes the place of model.py's SparseMoeBlock and moves
  the tokens to their experts and the results back, by one of two collectives it names (`dispatch`).
"""

from minimoe.parallel.experts import (DISPATCHES, ExpertParallel, ExpertParallelError,  # noqa: F401  (public)
                                      ExpertParallelMoeBlock, choose_dispatch, loaded_bytes, shard_experts,
                                      shard_model, split_bytes)
from minimoe.parallel.launch import init, shutdown  # noqa: F401  (public)
