"""The only way the tests reach the code under test: one small typed function per thing graded.

`impl` is the student's awq_search.py under `--solution`, minimoe/quantize/awq_search.py otherwise. The grid
search (5.2) runs with minimoe's scales_for in place of the student's, so each task is graded on its own; the
end-to-end task (5.4) runs minimoe's quantizer with all three of the student's functions in place of its own.
"""

from __future__ import annotations

import torch

from assignments.framework import implementation, student_module, swapped
from minimoe.quantize import awq_search as spec

impl = implementation("a5_awq_search")


def run_scales_for(stat: torch.Tensor, alpha: float, w_stat: torch.Tensor | None = None) -> torch.Tensor:
    return impl.scales_for(stat, alpha, w_stat)


def run_search_scale(run, linears, stat: torch.Tensor, settings: spec.Settings):
    """-> ScaleChoice(alpha, scales, errors, rtn_error) for this group of linears."""
    with swapped(student_module(impl), scales_for=spec.scales_for):
        return impl.search_scale(run, linears, stat, settings)


def run_fold_into_norm(norm, linears, s: torch.Tensor) -> None:
    impl.fold_into_norm(norm, linears, s)


def run_quantize_model(model, windows: torch.Tensor, settings: spec.Settings) -> dict:
    """minimoe's quantize_model, searching and folding with the solution's functions."""
    functions = {"scales_for": impl.scales_for, "search_scale": impl.search_scale,
                 "fold_into_norm": impl.fold_into_norm}
    with swapped(spec, **functions):
        return spec.quantize_model(model, windows, settings)
