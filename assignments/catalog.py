"""What each assignment is: its tasks and points, and which pieces of minimoe its student file is made of.

A piece is (source file, qualified name): a top-level function or class copied whole, or "Class.method", copied
inside a shell of its class. In the copy, every region between `# [task N.M]` and `# [/task N.M]` (`//` in C++)
becomes a stub that raises NotImplementedError: that is the student's skeleton (assignments/skeletons.py). The
same copy with nothing removed is the reference solution in the student's layout, which the planted bugs patch
(assignments/mutants.py). Without --solution, the tests run minimoe itself.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Task:
    title: str
    points: int


@dataclasses.dataclass(frozen=True)
class Assignment:
    folder: str                           # assignments/<folder>
    title: str
    student_file: str                     # the Python file the student fills in (skeleton/<student_file>)
    pieces: tuple[tuple[str, str], ...]   # (source file, qualified name), in the order they are written
    tasks: dict[str, Task]
    cpp: str | None = None                # a C++ source copied whole (its tasks' regions stubbed) as int4_gemv.cpp
    timeout_s: int = 300                  # the whole assignment's tests, one process
    test_timeout_s: int = 120             # one test (the first C++ test includes compiling it: ~1 minute)


ASSIGNMENTS: dict[str, Assignment] = {a.folder: a for a in (
    Assignment(
        "a1_norm_rope", "RMSNorm and rotary position embeddings", "norm_rope.py",
        (("minimoe/model.py", "RMSNorm"), ("minimoe/model.py", "RotaryEmbedding"),
         ("minimoe/model.py", "rotate_half"), ("minimoe/model.py", "apply_rope")),
        {"1.1": Task("RMSNorm with fp32 statistics", 5),
         "1.2": Task("RoPE angles: cos and sin", 3),
         "1.3": Task("rotate_half and apply_rope, split-half convention", 5)}),
    Assignment(
        "a2_attention", "Grouped-query attention with a KV cache", "attention.py",
        (("minimoe/model.py", "grouped_attention"), ("minimoe/model.py", "Transformer._attention_mask"),
         ("minimoe/cache.py", "KVCache"), ("minimoe/model.py", "Attention")),
        {"2.1": Task("grouped-query attention", 5),
         "2.2": Task("the causal (and sliding-window) mask", 3),
         "2.3": Task("KVCache.update", 4),
         "2.4": Task("Attention.forward: prefill and decode equal one full forward", 3)}),
    Assignment(
        "a3_moe", "The top-k router and the sparse MoE block", "moe.py",
        (("minimoe/model.py", "Router"), ("minimoe/model.py", "Expert"), ("minimoe/model.py", "SparseMoeBlock"),
         ("minimoe/train.py", "load_balancing_loss")),
        {"3.1": Task("the router: softmax, top-k, renormalise", 5),
         "3.2": Task("an expert: SwiGLU", 2),
         "3.3": Task("the sparse MoE block: tokens grouped by expert", 5),
         "3.4": Task("the load-balancing loss", 3)}),
    Assignment(
        "a4_awq_format", "The AWQ int4 format, and an int4 GEMV in C++", "awq_format.py",
        (("minimoe/awq.py", "unpack"), ("minimoe/awq.py", "dequantize")),
        {"4.1": Task("unpack: AWQ's nibble order", 4),
         "4.2": Task("dequantize: (q - z) * s per group", 4),
         "4.3": Task("an int4 GEMV in C++, checked against the spec", 6)},
        cpp="assignments/a4_awq_format/reference/int4_gemv.cpp", timeout_s=900, test_timeout_s=420),
    Assignment(
        "a5_awq_search", "AWQ's activation-aware scale search", "awq_search.py",
        (("minimoe/quantize/awq_search.py", "scales_for"), ("minimoe/quantize/awq_search.py", "search_scale"),
         ("minimoe/quantize/awq_search.py", "fold_into_norm")),
        {"5.1": Task("the scales s = mean|x|^alpha, normalised", 2),
         "5.2": Task("the grid search over alpha", 5),
         "5.3": Task("folding s into the RMSNorm", 3),
         "5.4": Task("beat round-to-nearest's perplexity on the built-in model", 5)}),
)}


def find(name_or_path: str) -> Assignment:
    """"a1_norm_rope", "assignments/a1_norm_rope", "1" or "a1" -> the Assignment."""
    import os

    key = os.path.basename(os.path.normpath(name_or_path))
    for folder, assignment in ASSIGNMENTS.items():
        if key in (folder, folder.split("_")[0], folder.split("_")[0][1:]):
            return assignment
    raise ValueError(f"no assignment {name_or_path!r}; there are: {', '.join(ASSIGNMENTS)}")
