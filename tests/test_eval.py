"""minimoe as an lm-evaluation-harness model (minimoe/eval): against the harness's own Hugging Face model.

The checkpoint both read: the built-in model with its int4 weights dequantized to fp32 (transformers cannot
read AWQ without a kernel package), saved as a plain Hugging Face checkpoint, with a tokenizer.json converted
from its tokenizer.model the way transformers 5 converts one (both sides then tokenize with the same rules, and
minimoe's tokenizer.json path is itself tested against `tokenizers` in test_tokenizer.py). The tasks are
minimoe's three local ones (one per request kind), over text the model never saw.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")   # nothing can be downloaded here, and nothing should be tried
os.environ.setdefault("HF_HUB_OFFLINE", "1")

lm_eval = pytest.importorskip("lm_eval", reason="the eval extra (lm-eval) is not installed")
pytest.importorskip("accelerate", reason="the harness's hf model needs accelerate")
transformers = pytest.importorskip("transformers")
spm = pytest.importorskip("sentencepiece")

import minimoe  # noqa: E402
from minimoe import eval as evaluation  # noqa: E402
from minimoe.linear import AWQLinear, Linear  # noqa: E402
from minimoe.train import save_checkpoint  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILT_IN = os.path.join(ROOT, "minimoe", "default_model")
TASKS = ["minimoe_next_word", "minimoe_cue", "minimoe_passages"]


@pytest.fixture(scope="module")
def plain_checkpoint(tmp_path_factory):
    from transformers.tokenization_utils_base import generate_merges

    model = minimoe.load_model(BUILT_IN, dtype="float32", engine="reference")
    for name, module in list(model.named_modules()):
        if isinstance(module, AWQLinear):
            plain = Linear(module.in_features, module.out_features, dtype=torch.float32)
            plain.weight = torch.nn.Parameter(module.dequantized_weight(torch.float32), requires_grad=False)
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, plain)
    out = str(tmp_path_factory.mktemp("plain"))
    save_checkpoint(model, out, dtype=torch.float32)
    sp = spm.SentencePieceProcessor(model_file=os.path.join(BUILT_IN, "tokenizer.model"))
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    tokenizer = transformers.LlamaTokenizerFast(vocab=vocab, merges=generate_merges(vocab, None), legacy=False,
                                                bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                                add_bos_token=True)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory):
    return evaluation.local_tasks(str(tmp_path_factory.mktemp("tasks")))


@pytest.fixture(scope="module")
def both(plain_checkpoint, tasks_dir):
    from lm_eval.tasks import TaskManager

    evaluation.register()
    manager = TaskManager(include_path=tasks_dir)
    ours = lm_eval.simple_evaluate(model="minimoe", model_args={"pretrained": plain_checkpoint, "dtype": "float32",
                                                                 "engine": "reference"},
                                   tasks=TASKS, task_manager=manager, log_samples=True, batch_size=4, device="cpu")
    hf = lm_eval.simple_evaluate(model="hf", model_args={"pretrained": plain_checkpoint, "dtype": "float32"},
                                 tasks=TASKS, task_manager=manager, log_samples=True, batch_size=4, device="cpu")
    return ours, hf


def test_the_two_tokenizers_agree_on_the_task_text(plain_checkpoint):
    ours = minimoe.load_tokenizer(plain_checkpoint)
    theirs = transformers.AutoTokenizer.from_pretrained(plain_checkpoint)
    for name in ("shakespeare_next_word.jsonl", "shakespeare_cue.jsonl", "shakespeare_passages.jsonl"):
        with open(os.path.join(evaluation.TASKS, name), encoding="utf-8") as f:
            for line in f:
                for text in json.loads(line).values():
                    for piece in (text if isinstance(text, list) else [text]):
                        if isinstance(piece, str):
                            assert ours.encode(piece, bos=True) == theirs.encode(piece), piece


def test_loglikelihoods_equal_the_harness_hf_model(both):
    ours, hf = both
    for a, b in zip(ours["samples"]["minimoe_next_word"], hf["samples"]["minimoe_next_word"], strict=True):
        for (ll_a, greedy_a), (ll_b, greedy_b) in zip([r[0] for r in a["resps"]], [r[0] for r in b["resps"]]):
            assert ll_a == pytest.approx(ll_b, abs=2e-4) and greedy_a == greedy_b
    for metric in ("acc,none", "acc_norm,none"):
        assert ours["results"]["minimoe_next_word"][metric] == hf["results"]["minimoe_next_word"][metric]


def test_greedy_generations_equal_the_harness_hf_model(both):
    ours, hf = both
    got = [s["resps"][0][0] for s in ours["samples"]["minimoe_cue"]]
    want = [s["resps"][0][0] for s in hf["samples"]["minimoe_cue"]]
    assert got == want and any(got)
    assert "\n" not in "".join(got)          # cut at the task's `until`


def test_rolling_loglikelihoods_equal_the_harness_hf_model(both):
    ours, hf = both
    for a, b in zip(ours["samples"]["minimoe_passages"], hf["samples"]["minimoe_passages"], strict=True):
        assert a["resps"][0][0] == pytest.approx(b["resps"][0][0], rel=1e-5)
    assert ours["results"]["minimoe_passages"]["word_perplexity,none"] == pytest.approx(
        hf["results"]["minimoe_passages"]["word_perplexity,none"], rel=1e-4)


def test_loglikelihood_rolling_is_the_sum_of_token_logprobs(plain_checkpoint):
    from lm_eval.api.instance import Instance

    evaluation.register()
    from minimoe.eval.harness import MinimoeLM

    lm = MinimoeLM(pretrained=plain_checkpoint, dtype="float32", engine="reference")
    text = "If music be the food of love, play on,\nGive me excess of it"
    [got] = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)], disable_tqdm=True)
    ids = minimoe.load_tokenizer(plain_checkpoint).encode(text, bos=True)
    sequence = [lm.prefix_token_id] + ids                          # each token scored once, after the prefix
    with torch.inference_mode():
        logprobs = torch.log_softmax(lm.model(torch.tensor([sequence]))[0].double(), dim=-1)
    want = sum(logprobs[i, sequence[i + 1]].item() for i in range(len(sequence) - 1))
    assert got == pytest.approx(want, abs=1e-3)
    # and over several windows (max_length 8): every token still scored exactly once
    short = MinimoeLM(pretrained=plain_checkpoint, dtype="float32", engine="reference", max_length=8)
    [windowed] = short.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)], disable_tqdm=True)
    assert windowed < 0 and windowed != pytest.approx(got, abs=1e-3)   # less context per token, another sum


def test_bad_model_args_and_requests_are_clear_errors(plain_checkpoint):
    from lm_eval.api.instance import Instance

    evaluation.register()
    from minimoe.eval.harness import MinimoeLM

    with pytest.raises(ValueError, match="unknown argument.*temperature"):
        MinimoeLM(pretrained=plain_checkpoint, temperature=1)
    with pytest.raises(ValueError, match="pretrained=DIR"):
        MinimoeLM()
    with pytest.raises(ValueError, match="must be integers"):
        MinimoeLM(pretrained=plain_checkpoint, batch_size="many")
    with pytest.raises(ValueError, match="exceeds the model's context"):
        MinimoeLM(pretrained=plain_checkpoint, max_length=100000)
    with pytest.raises(ValueError, match="add_bos_token must be true or false"):
        MinimoeLM(pretrained=plain_checkpoint, add_bos_token="perhaps")
    lm = MinimoeLM(pretrained=plain_checkpoint, dtype="float32")
    with pytest.raises(ValueError, match="unsupported generation argument.*num_beams"):
        lm.generate_until([Instance("generate_until", {}, ("Hi", {"num_beams": 4}), 0)], disable_tqdm=True)


def test_minimoe_eval_harness_command(tmp_path):
    out = tmp_path / "results.json"
    done = subprocess.run([sys.executable, "-m", "minimoe", "eval", "harness", "--local-tasks",
                           "--tasks", "minimoe_next_word", "--limit", "6", "--output", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "minimoe_next_word" in done.stdout and "acc" in done.stdout
    results = json.loads(out.read_text())["results"]["minimoe_next_word"]
    assert 0.0 <= results["acc,none"] <= 1.0
