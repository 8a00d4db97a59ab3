"""Expert parallelism (minimoe/parallel) against the single-process model, on the CPU over gloo.

Each multi-rank test starts 2 or 3 real processes with the environment torchrun would give them
(tests/parallel_worker.py is one rank), then compares what every rank produced with the single-process run in
this process: the padded batch's prefill logits, the greedy tokens, the bytes each rank loaded (against the
safetensors headers), and which experts it held (against the sharding rule, written out by hand).
"""

import json
import os
import socket
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import minimoe
from minimoe.checkpoint import Checkpoint
from minimoe.generate import SamplingConfig, generate_ids
from minimoe.parallel import ExpertParallel, choose_dispatch, shard_experts
from minimoe.testing import make_tiny_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "parallel_worker.py")
sys.path.insert(0, os.path.join(ROOT, "tests"))
from parallel_worker import SAMPLED, padded  # noqa: E402

PROMPTS = [[1, 17, 33, 5, 60, 2], [1, 99], [1, 4, 200, 7]]   # three lengths: a left-padded batch
TOLERANCE = {"float32": 1e-5, "float16": 2e-2, "bfloat16": 6e-2}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ranks(job: dict, out_dir, world: int, ranks=None, timeout_s: float = 30) -> list[subprocess.Popen]:
    path = os.path.join(out_dir, "job.json")
    with open(path, "w") as f:
        json.dump(job, f)
    port = free_port()
    procs = []
    for rank in (range(world) if ranks is None else ranks):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), OMP_NUM_THREADS="1", MINIMOE_DIST_TIMEOUT=str(timeout_s),
                   PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        procs.append(subprocess.Popen([sys.executable, WORKER, path, str(out_dir)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def finish(procs, limit_s: float) -> list[tuple[int, str]]:
    results = []
    for proc in procs:
        try:
            _, err = proc.communicate(timeout=limit_s)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            pytest.fail(f"a rank did not finish within {limit_s} s (hang)")
        results.append((proc.returncode, err))
    return results


def case(name, checkpoint, dtype, dispatch, engine="native"):
    return {"name": name, "checkpoint": checkpoint, "dtype": dtype, "dispatch": dispatch, "engine": engine,
            "prompts": PROMPTS, "max_new_tokens": 6}


def expected_bytes(checkpoint_dir: str, experts: list[int]) -> int:
    """The header's bytes of everything but the experts, plus this rank's experts, plus RoPE's inv_freq (the one
    tensor the model holds that no file stores)."""
    checkpoint = Checkpoint(checkpoint_dir)
    total = 0
    for name, info in checkpoint.tensors.items():
        if ".block_sparse_moe.experts." in name:
            if int(name.split(".block_sparse_moe.experts.")[1].split(".")[0]) not in experts:
                continue
        total += info.nbytes
    return total + checkpoint.config.head_dim // 2 * 4


def check_against_single_process(cases: list[dict], out_dir, world: int, shards: dict[str, list[list[int]]]):
    for c in cases:
        model = minimoe.load_model(c["checkpoint"], dtype=c["dtype"], engine=c["engine"])
        ids, mask = padded(c["prompts"])
        with torch.inference_mode():
            want = model(ids, attention_mask=mask).float()
        tokens = generate_ids(model, c["prompts"], SamplingConfig(max_new_tokens=c["max_new_tokens"])).tokens
        sampled = generate_ids(model, c["prompts"], SamplingConfig(max_new_tokens=c["max_new_tokens"], **SAMPLED)).tokens
        per_rank = []
        for rank in range(world):
            stem = os.path.join(out_dir, f"{c['name']}.rank{rank}")
            got = load_file(stem + ".safetensors")["logits"]
            with open(stem + ".json") as f:
                meta = json.load(f)
            per_rank.append(got)
            assert not torch.isnan(got).any(), f"{c['name']} rank {rank}: NaN logits"
            error = (got - want).abs().max().item()
            assert error <= TOLERANCE[c["dtype"]] * max(1.0, want.abs().max().item()), \
                f"{c['name']} rank {rank}: logits differ from one process by {error}"
            assert meta["tokens"] == tokens, f"{c['name']} rank {rank}: generated {meta['tokens']}, one process {tokens}"
            assert meta["sampled"] == sampled, f"{c['name']} rank {rank}: sampled {meta['sampled']}, one process {sampled}"
            assert meta["experts"] == shards[c["name"]][rank], f"{c['name']} rank {rank}: held {meta['experts']}"
            assert meta["dispatch"] == c["dispatch"]
            assert meta["loaded_bytes"] == expected_bytes(c["checkpoint"], meta["experts"]), \
                f"{c['name']} rank {rank}: loaded {meta['loaded_bytes']} bytes"
        for rank in range(1, world):   # the residual stream is replicated: every rank computes the same logits
            assert torch.equal(per_rank[rank], per_rank[0]), f"{c['name']}: rank {rank} and rank 0 differ"


# ---- the rule, by hand ------------------------------------------------------------------------------------------

def test_shard_experts_contiguous_blocks_first_ranks_get_the_remainder():
    assert [list(r) for r in shard_experts(4, 2)] == [[0, 1], [2, 3]]
    assert [list(r) for r in shard_experts(3, 2)] == [[0, 1], [2]]
    assert [list(r) for r in shard_experts(8, 3)] == [[0, 1, 2], [3, 4, 5], [6, 7]]
    assert [list(r) for r in shard_experts(2, 2)] == [[0], [1]]
    with pytest.raises(ValueError, match="at most 2 ranks"):
        shard_experts(2, 3)


def test_auto_dispatch_picks_the_all_to_all_only_when_it_moves_fewer_bytes():
    # all_reduce moves 2 (N-1)/N S; all_to_all + all_gather (N-1)/N S (2k/N + 1): fewer iff 2k < N
    assert choose_dispatch(top_k=2, world=2) == "all_reduce"     # Confinus: top-2 of 2
    assert choose_dispatch(top_k=1, world=2) == "all_reduce"     # equal bytes: one collective instead of five
    assert choose_dispatch(top_k=1, world=3) == "all_to_all"
    assert choose_dispatch(top_k=2, world=5) == "all_to_all"


def test_which_tensors_a_rank_loads():
    ep = ExpertParallel(rank=1, world=2)
    assert ep.holds("model.layers.3.block_sparse_moe.experts.2.w1", 3)
    assert not ep.holds("model.layers.3.block_sparse_moe.experts.1.w1", 3)
    assert ep.holds("model.layers.3.block_sparse_moe.gate.weight", 3)   # the router is replicated
    assert ep.holds("model.layers.3.self_attn.q_proj", 3)
    with pytest.raises(ValueError, match="dispatch must be one of"):
        ExpertParallel(rank=0, world=2, dispatch="ring")


def test_load_model_refuses_graph_engines_and_dense_models(tmp_path):
    ep = ExpertParallel(rank=0, world=2)
    moe = make_tiny_checkpoint(tmp_path / "moe")
    with pytest.raises(ValueError, match="cannot run expert parallelism"):
        minimoe.load_model(moe, expert_parallel=ep, engine="compile")
    dense = make_tiny_checkpoint(tmp_path / "dense", model_type="mistral")
    with pytest.raises(ValueError, match="dense MLP"):
        minimoe.load_model(dense, expert_parallel=ep)


# ---- against one process ----------------------------------------------------------------------------------------

def test_two_ranks_equal_one_process(tmp_path):
    e2k2_awq = make_tiny_checkpoint(tmp_path / "e2k2_awq", seed=1)                          # Confinus' routing
    e2k2_bf16 = make_tiny_checkpoint(tmp_path / "e2k2_bf16", seed=2, quantized=False, dtype="bfloat16")
    e4k2 = make_tiny_checkpoint(tmp_path / "e4k2", seed=3, quantized=False, dtype="float32", num_local_experts=4)
    e3k1 = make_tiny_checkpoint(tmp_path / "e3k1", seed=4, dtype="float32", num_local_experts=3,
                                num_experts_per_tok=1)                                       # uneven: 2 + 1
    cases, shards = [], {}
    for dispatch in ("all_reduce", "all_to_all"):
        for name, path, dtype, engine, shard in (
                ("e2k2_awq", e2k2_awq, "float16", "native", [[0], [1]]),
                ("e2k2_bf16", e2k2_bf16, "bfloat16", "native", [[0], [1]]),
                ("e4k2", e4k2, "float32", "reference", [[0, 1], [2, 3]]),
                ("e3k1", e3k1, "float32", "native", [[0, 1], [2]])):
            cases.append(case(f"{name}_{dispatch}", path, dtype, dispatch, engine))
            shards[f"{name}_{dispatch}"] = shard
    results = finish(start_ranks({"cases": cases, "die": None}, tmp_path, world=2), limit_s=240)
    for rank, (code, err) in enumerate(results):
        assert code == 0, f"rank {rank} failed:\n{err[-3000:]}"
    check_against_single_process(cases, tmp_path, 2, shards)


def test_three_ranks_equal_one_process(tmp_path):
    e4k2 = make_tiny_checkpoint(tmp_path / "e4k2", seed=5, dtype="float32", num_local_experts=4)  # 2 + 1 + 1
    e3k1 = make_tiny_checkpoint(tmp_path / "e3k1", seed=6, quantized=False, dtype="float32", num_local_experts=3,
                                num_experts_per_tok=1)
    cases, shards = [], {}
    for dispatch in ("all_reduce", "all_to_all"):
        cases.append(case(f"e4k2_{dispatch}", e4k2, "float32", dispatch))
        shards[f"e4k2_{dispatch}"] = [[0, 1], [2], [3]]
        cases.append(case(f"e3k1_{dispatch}", e3k1, "float32", dispatch, "reference"))
        shards[f"e3k1_{dispatch}"] = [[0], [1], [2]]
    results = finish(start_ranks({"cases": cases, "die": None}, tmp_path, world=3), limit_s=240)
    for rank, (code, err) in enumerate(results):
        assert code == 0, f"rank {rank} failed:\n{err[-3000:]}"
    check_against_single_process(cases, tmp_path, 3, shards)


# ---- failures end every rank, with one sentence, never a hang ---------------------------------------------------

def test_a_rank_that_never_starts_ends_the_others_at_the_timeout(tmp_path):
    checkpoint = make_tiny_checkpoint(tmp_path / "ckpt")
    job = {"cases": [case("x", checkpoint, "float32", "auto")], "die": None}
    t0 = time.perf_counter()
    [(code, err)] = finish(start_ranks(job, tmp_path, world=2, ranks=[0], timeout_s=5), limit_s=60)
    assert code != 0
    assert "rank 0 of 2: the 2 ranks did not all meet" in err and "within 5 s" in err, err[-2000:]
    assert time.perf_counter() - t0 < 45


@pytest.mark.parametrize("dispatch", ["all_reduce", "all_to_all"])
def test_a_rank_dying_mid_run_ends_the_others(tmp_path, dispatch):
    checkpoint = make_tiny_checkpoint(tmp_path / "ckpt", num_local_experts=4)
    job = {"cases": [case("x", checkpoint, "float32", dispatch)], "die": [1, 1]}   # rank 1 exits in layer 1
    t0 = time.perf_counter()
    (code0, err0), (code1, _) = finish(start_ranks(job, tmp_path, world=2, timeout_s=20), limit_s=90)
    assert code1 == 3
    assert code0 != 0
    assert "expert-parallel rank 0 of 2:" in err0 and "layer 1" in err0 and "another rank stopped" in err0, \
        err0[-2000:]
    assert time.perf_counter() - t0 < 60


# ---- the command line -------------------------------------------------------------------------------------------

def run_cli(args, timeout=180, **env):
    full_env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), **env)
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=full_env)


def test_torchrun_generate_expert_parallel_gives_the_one_process_text():
    prompt = ["ROMEO:", "--max-new-tokens", "20"]
    one = run_cli([sys.executable, "-m", "minimoe", "generate", *prompt])
    assert one.returncode == 0, one.stderr
    two = run_cli([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                   f"--master-port={free_port()}", "-m", "minimoe", "generate", "--expert-parallel", *prompt],
                  MINIMOE_DIST_TIMEOUT="60")
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout == one.stdout and len(one.stdout) > len("ROMEO:") + 10
    # the built-in model has 4 experts a layer: each of the two processes holds half
    assert "rank 0 of 2: experts [0, 1] of each layer's 4" in two.stderr, two.stderr
    assert "rank 1 of 2: experts [2, 3] of each layer's 4" in two.stderr, two.stderr


def test_generate_expert_parallel_outside_torchrun_says_how_to_start_it():
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    done = subprocess.run([sys.executable, "-m", "minimoe", "generate", "--expert-parallel", "x"],
                          capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert done.returncode == 2
    assert "torchrun --nproc-per-node" in done.stderr and "$RANK" in done.stderr


def test_inspect_shows_the_split_per_rank(tmp_path):
    path = make_tiny_checkpoint(tmp_path / "ckpt", num_local_experts=3, num_experts_per_tok=1)
    done = run_cli([sys.executable, "-m", "minimoe", "inspect", str(path), "--expert-parallel", "2", "--json"])
    assert done.returncode == 0, done.stderr
    split = json.loads(done.stdout)["expert_parallel"]
    assert [row["experts"] for row in split] == [[0, 1], [2]]
    for row in split:
        assert row["total_bytes"] == expected_bytes(path, row["experts"]) - Checkpoint(path).config.head_dim // 2 * 4
    table = run_cli([sys.executable, "-m", "minimoe", "inspect", str(path), "--expert-parallel", "2"])
    assert "rank 1  experts 2 of 3" in table.stdout, table.stdout
