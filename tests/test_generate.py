"""Generation against transformers' generate, and the sampling rules' identities."""

import pytest
import torch

import minimoe
from minimoe.generate import SamplingConfig, filter_top_p, generate, generate_ids
from tests.test_model import hf_model

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def hf_and_ours(tmp_path_factory):
    hf = hf_model("mixtral", 17, vocab_size=120, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, num_local_experts=3, num_experts_per_tok=2,
                  rope_theta=10000.0, max_position_embeddings=128, bos_token_id=1, eos_token_id=2)
    path = tmp_path_factory.mktemp("hf_gen")
    hf.save_pretrained(path)
    return hf, minimoe.load_model(path, dtype=torch.float32)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_greedy_equals_transformers_generate(hf_and_ours, seed):
    hf, ours = hf_and_ours
    prompt = torch.randint(3, 120, (1, 6), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ref = hf.generate(prompt, max_new_tokens=24, do_sample=False, eos_token_id=2, pad_token_id=0)
    ref_new = ref[0, prompt.shape[1]:].tolist()
    if 2 in ref_new:  # transformers stops at eos (and pads); we stop too, without emitting it
        ref_new = ref_new[:ref_new.index(2)]
    result = generate_ids(ours, [prompt[0].tolist()], SamplingConfig(max_new_tokens=24), eos_id=2)
    assert result.tokens[0] == ref_new


def test_greedy_batch_equals_single_prompts(hf_and_ours):
    _, ours = hf_and_ours
    prompts = [[5, 9, 33, 7], [44, 8], [70, 71, 72, 73, 74, 75]]
    batch = generate_ids(ours, prompts, SamplingConfig(max_new_tokens=12), eos_id=None)
    for row, prompt in enumerate(prompts):
        single = generate_ids(ours, [prompt], SamplingConfig(max_new_tokens=12), eos_id=None)
        assert batch.tokens[row] == single.tokens[0]


def test_seeded_sampling_is_reproducible_and_seed_matters(hf_and_ours):
    _, ours = hf_and_ours
    cfg = SamplingConfig(max_new_tokens=16, temperature=1.5, seed=123)
    a = generate_ids(ours, [[4, 5, 6]], cfg).tokens
    b = generate_ids(ours, [[4, 5, 6]], cfg).tokens
    c = generate_ids(ours, [[4, 5, 6]], SamplingConfig(max_new_tokens=16, temperature=1.5, seed=124)).tokens
    assert a == b
    assert a != c  # 16 draws at temperature 1.5 over 120 tokens: equal by chance with negligible probability


def test_top_k_1_and_tiny_top_p_equal_greedy(hf_and_ours):
    _, ours = hf_and_ours
    greedy = generate_ids(ours, [[9, 8, 7]], SamplingConfig(max_new_tokens=16)).tokens
    top_k = generate_ids(ours, [[9, 8, 7]], SamplingConfig(max_new_tokens=16, temperature=1.0, top_k=1, seed=5))
    top_p = generate_ids(ours, [[9, 8, 7]], SamplingConfig(max_new_tokens=16, temperature=1.0, top_p=1e-6, seed=5))
    assert top_k.tokens == greedy and top_p.tokens == greedy


def test_top_p_keeps_the_smallest_set_reaching_p():
    # probabilities 0.5, 0.3, 0.15, 0.05 (hand-made): p = 0.8 keeps the first two, p = 0.81 the first three
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    assert torch.isfinite(filter_top_p(logits, 0.8)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_top_p(logits, 0.81)).tolist() == [[True, True, True, False]]


def test_repetition_penalty_changes_greedy_choice(hf_and_ours):
    _, ours = hf_and_ours
    plain = generate_ids(ours, [[10, 11, 12]], SamplingConfig(max_new_tokens=24)).tokens[0]
    penalised = generate_ids(ours, [[10, 11, 12]], SamplingConfig(max_new_tokens=24, repetition_penalty=5.0)).tokens[0]
    # a strong penalty forbids repeats as long as there are alternatives: fewer repeated tokens
    assert len(set(penalised)) >= len(set(plain))
    assert len(set(penalised)) == len(penalised)


def test_prompt_longer_than_context_is_a_clear_error(hf_and_ours):
    _, ours = hf_and_ours
    with pytest.raises(ValueError, match="the prompt has 129 tokens, longer than the model's context of 128"):
        generate_ids(ours, [[5] * 129])


def test_generation_stops_at_context_end(hf_and_ours):
    _, ours = hf_and_ours
    result = generate_ids(ours, [[5] * 120], SamplingConfig(max_new_tokens=50), eos_id=None)
    assert len(result.tokens[0]) == 8 and result.finish_reasons == ["context"]


def test_text_generation_streams_and_stops_on_stop_string():
    import minimoe.cli as cli

    model = minimoe.load_model(cli.DEFAULT_MODEL)
    tok = minimoe.load_tokenizer(cli.DEFAULT_MODEL)
    streamed = []
    result = generate(model, tok, ["Once upon a time", "Hello"], max_new_tokens=20, temperature=0.9, seed=0,
                      on_token=lambda row, text: streamed.append((row, text)))
    for row in range(2):
        assert "".join(t for r, t in streamed if r == row) == result.texts[row]
        full = tok.decode(tok.encode(["Once upon a time", "Hello"][row]) + result.tokens[row])
        assert full == ["Once upon a time", "Hello"][row] + result.texts[row]
    # Use a piece of a text as a stop string: the same seeded run must end right before it.
    text = generate(model, tok, "Once upon a time", max_new_tokens=20, temperature=0.9, seed=0).texts[0]
    stop = text[len(text) // 2: len(text) // 2 + 3]
    assert stop.strip(), f"pick another seed: {text!r}"
    again = generate(model, tok, "Once upon a time", max_new_tokens=20, temperature=0.9, seed=0, stop=[stop])
    assert again.finish_reasons == ["stop"]
    assert again.texts[0] == text[:text.index(stop)]


@pytest.mark.parametrize("enabled_before", [True, False])
def test_cycle_collector_paused_while_decoding_and_restored_after(hf_and_ours, enabled_before):
    import gc

    _, ours = hf_and_ours
    seen_during = []
    was = gc.isenabled()
    (gc.enable if enabled_before else gc.disable)()
    try:
        generate_ids(ours, [[4, 5, 6]], SamplingConfig(max_new_tokens=5), eos_id=None,
                     on_step=lambda row, token: seen_during.append(gc.isenabled()))
        assert seen_during == [False] * 5
        assert gc.isenabled() == enabled_before
        with pytest.raises(ValueError):  # restored on an error raised inside the loop too
            generate_ids(ours, [[4, 5, 6]], SamplingConfig(max_new_tokens=5), eos_id=None,
                         on_step=lambda row, token: (_ for _ in ()).throw(ValueError("stop")))
        assert gc.isenabled() == enabled_before
    finally:
        (gc.enable if was else gc.disable)()
