"""Planted bugs: each a small patch of the reference solution (in the student's layout) that a named test must
catch, while the tasks it has nothing to do with keep their full points. CI grades every one
(tests/test_assignments.py); `python -m assignments.mutants` does it by hand and prints the table.

The bugs are the ones students make: each is a line or two, each computes something plausible.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile

from assignments.catalog import ASSIGNMENTS
from assignments.skeletons import render, write


@dataclasses.dataclass(frozen=True)
class Mutant:
    name: str
    folder: str                             # the assignment
    patches: tuple[tuple[str, str], ...]    # (text of the reference solution, its replacement); each exactly once
    fails: tuple[str, ...]                  # tests (function names) that must fail
    intact: tuple[str, ...]                 # tasks that must keep their full points
    file: str = ""                          # default: the assignment's student file

    def target(self) -> str:
        return self.file or ASSIGNMENTS[self.folder].student_file


MUTANTS = (
    Mutant("nibble order: sequential instead of AWQ's", "a4_awq_format",
           (("[4 * nibble for nibble in REVERSE]", "[4 * nibble for nibble in range(CODES_PER_WORD)]"),),
           fails=("test_unpack_one_word_by_hand",), intact=("4.2", "4.3")),
    Mutant("interleaved RoPE instead of split-half", "a1_norm_rope",
           (("    x1, x2 = x.chunk(2, dim=-1)\n    return torch.cat((-x2, x1), dim=-1)",
             "    x1, x2 = x[..., 0::2], x[..., 1::2]\n    return torch.stack((-x2, x1), dim=-1).flatten(-2)"),),
           fails=("test_rotate_half_by_hand", "test_apply_rope_rotates_channel_j_with_channel_j_plus_half"),
           intact=("1.1", "1.2")),
    Mutant("no renormalisation of the top-k weights", "a3_moe",
           (("        weights = weights / weights.sum(dim=-1, keepdim=True)\n", ""),),
           fails=("test_router_by_hand", "test_router_weights_are_the_softmax_over_the_chosen_logits"),
           intact=("3.2", "3.3", "3.4")),
    Mutant("missing 1/sqrt(d) scaling", "a2_attention",
           (("torch.matmul(q, k.transpose(-1, -2)) * scale", "torch.matmul(q, k.transpose(-1, -2))"),),
           fails=("test_scores_are_scaled_by_one_over_root_d", "test_grouped_attention_matches_a_per_head_loop"),
           intact=("2.2", "2.3")),
    # What `k.repeat(1, G, 1, 1)` computes where `k.repeat_interleave(G, dim=1)` was meant: query head h reads
    # kv head h mod Hkv instead of h div G (here as the equivalent regrouping of the query heads).
    Mutant("repeat instead of repeat_interleave in GQA", "a2_attention",
           (("    q = q.reshape(B, Hkv, G * T, D)\n",
             "    q = q.view(B, G, Hkv, T, D).transpose(1, 2).reshape(B, Hkv, G * T, D)\n"),
            ("torch.matmul(probs.view(B, Hkv, G * T, L), v).view(B, H, T, D)",
             "torch.matmul(probs.view(B, Hkv, G * T, L), v).view(B, Hkv, G, T, D).transpose(1, 2).reshape(B, H, T, D)")),
           fails=("test_each_query_head_reads_the_kv_head_of_its_group",), intact=("2.2", "2.3")),
    Mutant("causal mask off by one", "a2_attention",
           (("allowed = k_index <= q_index\n", "allowed = k_index <= q_index + 1\n"),),
           fails=("test_causal_mask_by_hand",), intact=("2.1", "2.3", "2.4")),
    Mutant("zero point subtracted with the wrong sign", "a4_awq_format",
           (("return ((q - z) * s)", "return ((z - q) * s)"),),
           fails=("test_dequantize_one_group_by_hand",), intact=("4.1", "4.3")),
    Mutant("RMSNorm statistics in fp16", "a1_norm_rope",
           (("        x32 = x.float()\n", "        x32 = x\n"),),
           fails=("test_rms_norm_of_fp16_activations_does_not_overflow",), intact=("1.2", "1.3")),
    Mutant("the KV cache written at the wrong position", "a2_attention",
           (("        keys[:, :, start:start + t] = k\n        values[:, :, start:start + t] = v\n",
             "        keys[:, :, :t] = k\n        values[:, :, :t] = v\n"),),
           fails=("test_update_appends_each_forwards_keys_and_values_in_order",), intact=("2.1", "2.2")),
    Mutant("softmax over the wrong axis in the router", "a3_moe",
           (("probs = torch.softmax(logits, dim=-1, dtype=torch.float32)",
             "probs = torch.softmax(logits, dim=0, dtype=torch.float32)"),),
           fails=("test_router_by_hand",), intact=("3.2", "3.3", "3.4")),
)


def plant(mutant: Mutant, directory: str) -> str:
    """Write the assignment's reference solution with the bug planted into `directory`; returns it."""
    files = render(ASSIGNMENTS[mutant.folder], stub=False)
    text = files[mutant.target()]
    for old, new in mutant.patches:
        count = text.count(old)
        if count != 1:
            raise ValueError(f"mutant {mutant.name!r}: {old!r} occurs {count} times in {mutant.target()}, not once")
        text = text.replace(old, new)
    files[mutant.target()] = text
    write(directory, files)
    return directory


def check(mutant: Mutant) -> tuple[bool, dict]:
    """Grade the mutant; (caught as promised?, the report)."""
    from assignments.grade import grade

    with tempfile.TemporaryDirectory() as directory:
        report = grade(mutant.folder, plant(mutant, directory))
    failed = {test.split("::")[-1].split("[")[0] for t in report["tasks"] for test in t["failures"]}
    intact = all(t["earned"] == t["points"] for t in report["tasks"] if t["task"] in mutant.intact)
    caught = all(name in failed for name in mutant.fails) and intact and report["earned"] < report["points"]
    return caught, report


def main() -> int:
    bad = 0
    for mutant in MUTANTS:
        caught, report = check(mutant)
        bad += not caught
        lost = [f"{t['task']} {t['earned']:g}/{t['points']}" for t in report["tasks"] if t["earned"] < t["points"]]
        print(f"{'caught' if caught else 'MISSED':<7} {mutant.folder:<14} {mutant.name:<46} lost: {', '.join(lost)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
