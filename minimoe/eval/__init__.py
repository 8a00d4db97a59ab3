"""Evaluation: minimoe as an lm-evaluation-harness model (minimoe/eval/harness.py, needs the `eval` extra).

    python -m minimoe.eval run --model minimoe --model_args pretrained=DIR --tasks TASKS   # the harness's CLI
    minimoe eval harness --model DIR --tasks TASKS [--include-path DIR]                   # the short form
    minimoe eval ppl --model DIR --text FILE                                              # perplexity, no harness

docs/evaluation.md: how the Open LLM Leaderboard numbers of Confinus-2x7B were produced and how to reproduce them.
"""

import json
import os


def register():
    """Import the harness model class (registers "minimoe" with lm-eval); one clear error without lm-eval."""
    try:
        import lm_eval.models  # noqa: F401  (the harness's own models first: its registry fills itself only when empty)

        from minimoe.eval import harness as module
    except ImportError as error:
        if "lm_eval" in str(error):
            raise ImportError("the lm-evaluation-harness is not installed: pip install \"minimoe[eval]\" "
                              "(or pip install lm-eval)") from None
        raise
    return module


TASKS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tasks")

# Three small local tasks over text the built-in model never saw (Twelfth Night, tests/data): one of each kind
# of request. The harness reads a task from YAML; the data files must be named by absolute path.
_LOCAL = {
    "minimoe_next_word": """output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
""",
    "minimoe_cue": """output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{target}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 24
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
""",
    "minimoe_passages": """output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
    aggregation: weighted_perplexity
    higher_is_better: false
  - metric: byte_perplexity
    aggregation: weighted_perplexity
    higher_is_better: false
  - metric: bits_per_byte
    aggregation: bits_per_byte
    higher_is_better: false
""",
}
_DATA = {"minimoe_next_word": "shakespeare_next_word.jsonl", "minimoe_cue": "shakespeare_cue.jsonl",
         "minimoe_passages": "shakespeare_passages.jsonl"}


def local_tasks(directory: str) -> str:
    """Write the YAML of minimoe's three local tasks into `directory` (for --include-path); returns it."""
    os.makedirs(directory, exist_ok=True)
    for name, body in _LOCAL.items():
        data = os.path.join(TASKS, _DATA[name])
        with open(os.path.join(directory, f"{name}.yaml"), "w", encoding="utf-8") as f:
            f.write(f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {json.dumps(data)}\n"
                    f"test_split: test\n" + body.format())
    return directory


def evaluate(pretrained: str, tasks: list[str], *, include_path: str | None = None, num_fewshot: int | None = None,
             limit: float | None = None, batch_size: int = 1, engine: str | None = None, dtype: str | None = None,
             device: str = "cpu", **model_args) -> dict:
    """lm_eval.simple_evaluate on minimoe: returns the harness's results dict (`results["results"][task_name]`)."""
    register()
    import lm_eval
    from lm_eval.tasks import TaskManager

    args = {"pretrained": pretrained, **model_args}   # device and batch_size travel as the harness's own arguments
    if engine:
        args["engine"] = engine
    if dtype:
        args["dtype"] = dtype
    manager = TaskManager(include_path=include_path) if include_path else TaskManager()
    return lm_eval.simple_evaluate(model="minimoe", model_args=args, tasks=tasks, num_fewshot=num_fewshot,
                                   limit=limit, batch_size=batch_size, task_manager=manager, device=device)
