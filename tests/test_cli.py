"""The `minimoe` command line end to end, in subprocesses (as a user runs it)."""

import json
import os
import shutil
import subprocess
import sys

import pytest

import minimoe
from minimoe.cli import DEFAULT_MODEL, render_chat
from minimoe.testing import make_tiny_checkpoint

mistral_common = pytest.importorskip("mistral_common", reason="mistral_common ships Mistral's tokenizer.model")
MISTRAL_TOKENIZER = os.path.join(os.path.dirname(mistral_common.__file__), "data", "tokenizer.model.v1")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args, stdin=None, timeout=180):
    return subprocess.run([sys.executable, "-m", "minimoe", *args], capture_output=True, text=True, cwd=ROOT,
                          input=stdin, timeout=timeout)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A tiny AWQ checkpoint with Mistral's tokenizer (so vocab 32000) and a short context of 64 tokens."""
    path = make_tiny_checkpoint(tmp_path_factory.mktemp("cli") / "tiny", vocab_size=32000, hidden_size=32,
                                intermediate_size=64, max_position_embeddings=64, seed=9)
    shutil.copyfile(MISTRAL_TOKENIZER, os.path.join(path, "tokenizer.model"))
    return path


def test_generate_default_model_offline():
    result = run("generate", "Once upon a time", "--max-new-tokens", "8", "--seed", "0", "--temperature", "0.7")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Once upon a time")
    assert len(result.stdout.strip()) > len("Once upon a time")
    assert "trained on Shakespeare" in result.stderr  # says plainly what the default model is
    assert "tok/s" in result.stderr and "peak memory" in result.stderr


@pytest.mark.parametrize("engine", ["reference", "native", "auto"])
def test_generate_from_a_checkpoint_directory_matches_the_library(tiny_dir, engine):
    result = run("generate", "--model", tiny_dir, "Hello world", "--max-new-tokens", "10", "--engine", engine)
    assert result.returncode == 0, result.stderr
    model = minimoe.load_model(tiny_dir, engine="reference", dtype="auto")  # the command line's default dtype
    tokenizer = minimoe.load_tokenizer(tiny_dir)
    expected = minimoe.generate.generate(model, tokenizer, "Hello world", max_new_tokens=10).texts[0]
    assert result.stdout == "Hello world" + expected + "\n"
    dtype = str(model.dtype).replace("torch.", "")
    assert f"engine {engine if engine != 'auto' else 'native'}, {dtype}," in result.stderr  # says what ran


def test_auto_dtype_follows_the_documented_rule(tiny_dir, tmp_path):
    import torch

    from minimoe import ops
    from minimoe.loading import auto_dtype

    amx = bool(ops.build_info()["cpu_amx"])
    if amx and hasattr(torch.cpu, "_is_amx_tile_supported"):  # torch's own cpuinfo agrees the CPU has AMX tiles
        assert torch.cpu._is_amx_tile_supported()
    awq = minimoe.load_model(tiny_dir, dtype="auto", engine="reference")
    assert awq.config.quantization is not None
    assert awq.dtype == (torch.bfloat16 if amx else torch.float32)
    plain = make_tiny_checkpoint(tmp_path / "plain", quantized=False, dtype="float16")
    assert minimoe.load_model(plain, dtype="auto", engine="reference").dtype == torch.float16  # as stored
    assert auto_dtype(awq.config, "cuda") == awq.config.torch_dtype  # GPUs: the checkpoint's dtype
    info = run("info")
    assert ("bfloat16: int4 prefill on AMX" if amx else "float32: no AMX here") in info.stdout


def test_cli_engine_names_are_the_library_s():
    from minimoe import engines
    from minimoe.cli import ENGINE_NAMES

    assert ENGINE_NAMES == engines.NAMES


@pytest.mark.cuda
def test_generate_on_the_gpu_with_and_without_the_cuda_graph(tiny_dir):
    # fp32, so that the two paths' different summation orders cannot flip a greedy choice
    graphed = run("generate", "--model", tiny_dir, "--device", "cuda", "--dtype", "float32", "Hello world",
                  "--max-new-tokens", "12")
    eager = run("generate", "--model", tiny_dir, "--device", "cuda", "--dtype", "float32", "Hello world",
                "--max-new-tokens", "12", "--engine", "native")
    assert graphed.returncode == 0 and eager.returncode == 0, graphed.stderr + eager.stderr
    assert "CUDA graph" in graphed.stderr and "CUDA graph" not in eager.stderr
    assert "engine cuda-graph, int4 kernel cuda" in graphed.stderr
    assert graphed.stdout == eager.stdout and len(graphed.stdout) > len("Hello world\n")


def test_route_table_summary_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "route.png"
    result = run("route", "The quick brown fox", "--plot", str(png))
    assert result.returncode == 0, result.stderr
    assert "layer 0" in result.stdout and "entropy" in result.stdout and "▁quick" in result.stdout
    assert png.stat().st_size > 1000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_route_json_is_consistent():
    result = run("route", "one two three", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    tokens = len(report["tokens"])
    config = minimoe.load_model(DEFAULT_MODEL, engine="reference").config
    layers, k = config.num_hidden_layers, config.num_experts_per_tok
    assert [sum(layer) for layer in report["tokens_per_expert"]] == [k * tokens] * layers  # k choices per token
    for layer in report["weights"]:
        for weights in layer:
            assert abs(sum(weights) - 1) < 1e-5


def test_inspect(tiny_dir):
    result = run("inspect", tiny_dir)
    assert result.returncode == 0, result.stderr
    assert "mixtral" in result.stdout and "AWQ int4" in result.stdout and "validation: ok" in result.stdout


def test_chat_through_stdin():
    result = run("chat", "--max-new-tokens", "5", stdin="hello there\nand again\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("assistant> ") == 2


def test_chat_uses_the_checkpoints_jinja_template(tmp_path):
    template = ("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
                "{% if add_generation_prompt %}[assistant]{% endif %}")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
    text, stops = render_chat(str(tmp_path), [{"role": "user", "content": "hi"}])
    assert text == "[user] hi\n[assistant]" and stops == ()
    plain, plain_stops = render_chat(str(tmp_path / "nothing"), [{"role": "user", "content": "hi"}])
    assert plain == "User: hi\nAssistant:" and plain_stops == ("\nUser:",)


@pytest.mark.parametrize("args,message", [
    (["generate", "--model", "/definitely/not/here", "hi"], "not a directory"),
    (["generate", "--device", "cuda:7", "hi"], "device 'cuda:7'"),
    (["generate", "--device", "tpu", "hi"], "device 'tpu'"),
    (["route", "--model", ROOT, "hi"], "config.json: file not found"),
])
def test_user_errors_are_one_sentence_and_non_zero(args, message):
    result = run(*args)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_prompt_longer_than_context(tiny_dir):
    result = run("generate", "--model", tiny_dir, "word " * 100)
    assert result.returncode == 2
    assert "longer than the model's context of 64" in result.stderr and "Traceback" not in result.stderr


def test_unknown_dtype_rejected():
    result = run("generate", "--dtype", "float8", "hi")
    assert result.returncode == 2 and "invalid choice: 'float8'" in result.stderr


def test_debug_shows_the_traceback():
    result = run("--debug", "generate", "--model", "/definitely/not/here", "hi")
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_route_tables_line_up_for_any_number_of_experts(tmp_path):
    from minimoe.routing import format_summary, format_table, route

    path = make_tiny_checkpoint(tmp_path / "wide", vocab_size=32000, num_local_experts=12, num_experts_per_tok=3,
                                seed=5)
    shutil.copyfile(MISTRAL_TOKENIZER, os.path.join(path, "tokenizer.model"))
    report = route(minimoe.load_model(path, engine="reference"), minimoe.load_tokenizer(path),
                   "Ten experts and more: e10, e11")
    for table in (format_table(report), format_summary(report)):
        rows = [line for line in table.splitlines() if " | " in line]
        bars = {tuple(i for i, ch in enumerate(line) if ch == "|") for line in rows}
        assert len(bars) == 1, table                     # every row's bars at the same columns
    assert "tokens e11" in format_summary(report) and "layer 1" in format_table(report)


@pytest.mark.parametrize("option, value, message", [
    ("--max-new-tokens", "-5", "max_new_tokens must be >= 0, found -5"),
    ("--temperature", "-1", "temperature must be >= 0, found -1.0"),
    ("--top-p", "0", r"top_p must be in (0, 1], found 0.0"),
    ("--top-k", "-2", "top_k must be >= 0, found -2"),
    ("--repetition-penalty", "0", "repetition_penalty must be > 0, found 0.0"),
    ("--seed", "-3", "seed must be in 0..2**63-1 (or None), found -3"),
])
def test_numeric_options_are_range_checked_before_anything_runs(option, value, message):
    result = run("generate", "Hello", option, value)
    assert result.returncode == 2
    assert result.stdout == ""                       # nothing printed, not even the prompt
    assert result.stderr.strip().splitlines()[-1] == f"minimoe: error: {message}"


def test_info_values_share_one_column():
    """Every label, kernel names included (`decode_attention` once ran into its value), leaves two spaces."""
    result = run("info")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert any(line.startswith("kernel decode_attention") for line in lines)
    starts = set()
    for line in lines:
        # the value starts after the first run of two or more spaces
        cut = line.index("  ")
        starts.add(cut + len(line[cut:]) - len(line[cut:].lstrip(" ")))
    assert len(starts) == 1, f"values start at columns {sorted(starts)}:\n{result.stdout}"
