"""One rank of tests/test_parallel.py's expert-parallel runs (started with torchrun's environment variables).

    python tests/parallel_worker.py JOB.json OUT_DIR

JOB.json: {"cases": [{"name", "checkpoint", "dtype", "dispatch", "engine", "prompts", "max_new_tokens"}],
           "die": [rank, layer] or null}  -- `die`: that rank exits abruptly when layer's MoE block starts.
Each case writes OUT_DIR/<name>.rank<r>.safetensors (the padded batch's prefill logits) and .json (the greedy and
the sampled tokens, the bytes this rank holds, its experts). Nothing is pickled.
"""

import dataclasses
import json
import os
import sys

import torch
from safetensors.torch import save_file

import minimoe
from minimoe import parallel
from minimoe.generate import SamplingConfig, generate_ids


SAMPLED = {"temperature": 0.9, "top_p": 0.95, "seed": 7}   # a sampled generation too: every rank must agree


def padded(prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    longest = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), longest, dtype=torch.long)
    mask = torch.zeros(len(prompts), longest, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, longest - len(prompt):] = torch.tensor(prompt)
        mask[row, longest - len(prompt):] = 1
    return ids, mask


def main(job_path: str, out_dir: str) -> None:
    with open(job_path) as f:
        job = json.load(f)
    ep = parallel.init()
    for case in job["cases"]:
        ep_case = dataclasses.replace(ep, dispatch=case["dispatch"])
        model = minimoe.load_model(case["checkpoint"], dtype=case["dtype"], expert_parallel=ep_case,
                                   engine=case["engine"])
        if job.get("die") and job["die"][0] == ep.rank:
            block = model.model.layers[job["die"][1]].block_sparse_moe
            block.register_forward_pre_hook(lambda *_: os._exit(3))
        ep.barrier("after loading")
        ids, mask = padded(case["prompts"])
        with torch.inference_mode():
            logits = model(ids, attention_mask=mask)
        result = generate_ids(model, case["prompts"], SamplingConfig(max_new_tokens=case["max_new_tokens"]))
        sampled = generate_ids(model, case["prompts"], SamplingConfig(max_new_tokens=case["max_new_tokens"], **SAMPLED))
        blocks = [layer.block_sparse_moe for layer in model.model.layers]
        stem = os.path.join(out_dir, f"{case['name']}.rank{ep.rank}")
        save_file({"logits": logits.float().contiguous()}, stem + ".safetensors")
        with open(stem + ".json", "w") as f:
            json.dump({"tokens": result.tokens, "sampled": sampled.tokens, "loaded_bytes": parallel.loaded_bytes(model),
                       "experts": [int(e) for e in blocks[0].experts], "dispatch": blocks[0].dispatch,
                       "engine": model.engine}, f)
    parallel.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
