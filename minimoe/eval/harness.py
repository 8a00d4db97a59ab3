"""minimoe as a model of EleutherAI's lm-evaluation-harness (`pip install "minimoe[eval]"`, lm-eval >= 0.4.5).

    python -m minimoe.eval run --model minimoe --model_args pretrained=DIR,engine=auto --tasks arc_easy
    minimoe eval harness --model DIR --tasks my_task --include-path tasks/      # the same, shorter

The harness asks a model three things, on `Instance`s whose `.args` are:
    loglikelihood          (context, continuation) -> (log P(continuation | context), is it the greedy choice?)
    loglikelihood_rolling  (text,)                  -> log P(text), over windows of the model's context
    generate_until         (context, gen_kwargs)    -> the greedy (or sampled) continuation, cut at `until`
TemplateLM (the harness's base class) turns (context, continuation) into token ids the way its Hugging Face
model does (`_encode_pair`: trailing spaces of the context move to the continuation; the pair is encoded whole,
then split where the context's own encoding ends; an empty context becomes the prefix token). This class
supplies the rest, written to make the same choices as the harness's `hf` model (lm_eval/models/huggingface.py)
so that the two give the same numbers on the same checkpoint:
- tokens: the tokenizer's default, a BOS in front (Llama/Mistral's `add_special_tokens=True`), unless the
  text already starts with "<s>" or `add_bos_token=False`; the prefix token is BOS;
- scoring: the last max_length + 1 tokens of context + continuation, the model run on all but the last, the
  continuation's log-softmax summed (fp32); requests sorted longest first and batched (left padding);
- rolling: the harness's own disjoint windows (`get_rolling_token_windows`, context 1);
- generation: the context left-truncated to max_length - max_gen_toks, greedy unless do_sample, stopped at EOS
  or at the first `until` string (the text is cut there), at most max_gen_toks (default 256) tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm import tqdm

from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval import utils as lm_utils

_KNOWN = ("pretrained", "engine", "dtype", "device", "batch_size", "max_batch_size", "max_length", "add_bos_token",
          "max_gen_toks")


def _as_bool(name: str, value) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise ValueError(f"minimoe model_args: {name} must be true or false, found {value!r}")


@register_model("minimoe")
class MinimoeLM(TemplateLM):
    """model_args: pretrained=DIR (required), engine (reference|native|compile|cuda-graph|auto), dtype
    (float32|float16|bfloat16, default the checkpoint's), device (cpu|cuda), batch_size, max_length,
    add_bos_token, max_gen_toks."""

    def __init__(self, pretrained: str | None = None, engine: str | None = None, dtype: str | None = None,
                 device: str | None = None, batch_size: int | str | None = 1, max_batch_size: int | None = None,
                 max_length: int | str | None = None, add_bos_token=None, max_gen_toks: int | str = 256, **unknown):
        super().__init__()
        if unknown:
            raise ValueError(f"minimoe model_args: unknown argument(s) {', '.join(sorted(unknown))}; "
                             f"known: {', '.join(_KNOWN)}")
        if not pretrained:
            raise ValueError("minimoe model_args: pretrained=DIR (a checkpoint directory) is required")
        import minimoe
        from minimoe.loading import check_tokenizer

        device = device or "cpu"
        if str(device).startswith("cuda") and not torch.cuda.is_available():
            # the harness's command line asks for cuda by default; its hf model falls back the same way
            import warnings

            warnings.warn(f"minimoe: device {device!r} requested but no CUDA device is available; using the CPU",
                          stacklevel=2)
            device = "cpu"
        self.model = minimoe.load_model(pretrained, dtype=dtype, device=device, engine=engine)
        self.tokenizer = minimoe.load_tokenizer(pretrained)
        check_tokenizer(self.model.config, self.tokenizer, str(pretrained))
        if batch_size in (None, "auto") or str(batch_size).startswith("auto"):
            batch_size = 8      # no memory probing here: 8 sequences at a time
        try:
            self._batch_size = int(batch_size)
            self._max_length = int(max_length) if max_length is not None else None
            self._max_gen_toks = int(max_gen_toks)
        except ValueError:
            raise ValueError(f"minimoe model_args: batch_size, max_length and max_gen_toks must be integers, found "
                             f"{batch_size!r}, {max_length!r}, {max_gen_toks!r}") from None
        if self._batch_size < 1 or self._max_gen_toks < 1 or (self._max_length is not None and self._max_length < 2):
            raise ValueError("minimoe model_args: batch_size and max_gen_toks must be >= 1 and max_length >= 2")
        context = self.model.config.max_position_embeddings
        if self._max_length is not None and self._max_length > context:
            raise ValueError(f"minimoe model_args: max_length {self._max_length} exceeds the model's context "
                             f"of {context} tokens")
        self.add_bos_token = _as_bool("add_bos_token", add_bos_token)
        self.pretrained = str(pretrained)

    # ---- what the harness reads -----------------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_id

    @property
    def prefix_token_id(self) -> int:
        return self.tokenizer.bos_id if self.tokenizer.bos_id is not None else self.tokenizer.eos_id

    @property
    def max_length(self) -> int:
        return self._max_length or self.model.config.max_position_embeddings

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def device(self):
        return self.model.device

    @property
    def tokenizer_name(self) -> str:
        return self.pretrained

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, left_truncate_len: int | None = None,
                   **kwargs) -> list[int]:
        if add_special_tokens is None:
            add_special_tokens = False if string.startswith("<s>") else (
                self.add_bos_token if self.add_bos_token is not None else True)
        ids = self.tokenizer.encode(string, bos=bool(add_special_tokens))
        return ids[-left_truncate_len:] if left_truncate_len else ids

    def tok_decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens)

    # ---- log-likelihoods ------------------------------------------------------------------------------------
    @torch.inference_mode()
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
        """requests: [(cache key, context ids, continuation ids)] -> [(log-probability, greedy?)], in order."""
        if any(len(cont) == 0 for _, _, cont in requests):
            raise ValueError("minimoe: a loglikelihood request with an empty continuation (nothing to score)")
        order = sorted(range(len(requests)), key=lambda i: -len(requests[i][1] + requests[i][2]))
        batch_size = override_bs or self.batch_size
        answers: list[tuple[float, bool] | None] = [None] * len(requests)
        bar = tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0, desc="minimoe loglikelihood")
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            windows = []
            for i in chunk:
                _, context, continuation = requests[i]
                whole = (list(context) + list(continuation))[-(self.max_length + 1):]
                windows.append((whole[:-1], list(continuation)))
            longest = max(len(inp) for inp, _ in windows)
            ids = torch.zeros(len(windows), longest, dtype=torch.long)
            mask = torch.zeros(len(windows), longest, dtype=torch.long)
            for row, (inp, _) in enumerate(windows):          # left padding: every row ends at the last column
                ids[row, longest - len(inp):] = torch.tensor(inp)
                mask[row, longest - len(inp):] = 1
            logits = self.model(ids.to(self.device), attention_mask=mask.to(self.device))
            for row, (i, (_, continuation)) in enumerate(zip(chunk, windows)):
                n = len(continuation)
                scores = F.log_softmax(logits[row, longest - n:].float(), dim=-1)     # (n, vocab)
                target = torch.tensor(continuation, device=scores.device)
                logprob = scores.gather(1, target[:, None]).sum().item()
                greedy = bool((scores.argmax(-1) == target).all())
                answers[i] = (logprob, greedy)
                key = requests[i][0]
                if key is not None:
                    self.cache_hook.add_partial("loglikelihood", key, answers[i])
                bar.update(1)
        bar.close()
        return answers

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        totals = []
        for (text,) in tqdm([r.args for r in requests], disable=disable_tqdm or self.rank != 0,
                            desc="minimoe loglikelihood_rolling"):
            windows = list(map(lm_utils.make_disjoint_window, lm_utils.get_rolling_token_windows(
                token_list=self.tok_encode(text), prefix_token=self.prefix_token_id, max_seq_len=self.max_length,
                context_len=1)))
            scored = self._loglikelihood_tokens([(None, ctx, cont) for ctx, cont in windows], disable_tqdm=True)
            total = sum(logprob for logprob, _ in scored)
            totals.append(total)
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
        return totals

    # ---- generation -----------------------------------------------------------------------------------------
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        from minimoe.generate import SamplingConfig, generate_ids

        outputs = []
        for context, gen_kwargs in tqdm([r.args for r in requests], disable=disable_tqdm or self.rank != 0,
                                        desc="minimoe generate_until"):
            kwargs = dict(gen_kwargs or {})
            until = kwargs.pop("until", None)
            until = [until] if isinstance(until, str) else list(until or [])
            if not all(isinstance(u, str) for u in until):
                raise ValueError(f"minimoe: generate_until's `until` must be strings, found {until!r}")
            max_new = int(kwargs.pop("max_gen_toks", self.max_gen_toks))
            do_sample = bool(kwargs.pop("do_sample", False))
            temperature = float(kwargs.pop("temperature", 1.0 if do_sample else 0.0))
            top_p = float(kwargs.pop("top_p", 1.0) or 1.0)
            top_k = int(kwargs.pop("top_k", 0) or 0)
            seed = kwargs.pop("seed", None)
            kwargs.pop("max_length", None)
            if kwargs:
                raise ValueError(f"minimoe: unsupported generation argument(s) {', '.join(sorted(kwargs))}")
            ids = self.tok_encode(context, left_truncate_len=max(1, self.max_length - max_new))
            new_tokens: list[int] = []
            stops = [u for u in until if u]

            def on_step(row: int, token: int) -> bool:
                new_tokens.append(token)
                return bool(stops) and any(s in self.tok_decode(new_tokens) for s in stops)

            cfg = SamplingConfig(max_new_tokens=max_new, temperature=temperature if do_sample else 0.0,
                                 top_p=top_p, top_k=top_k, seed=seed)
            result = generate_ids(self.model, [ids], cfg, eos_id=self.eot_token_id, on_step=on_step)
            text = self.tok_decode(result.tokens[0])
            for stop in stops:
                text = text.split(stop)[0]
            outputs.append(text)
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
        return outputs
