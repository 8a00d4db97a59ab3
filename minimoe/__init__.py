"""minimoe: a readable, from-scratch Mixtral-style sparse Mixture-of-Experts inference engine.

    import minimoe
    model = minimoe.load_model("path/to/Confinus-2x7B-AWQ")      # HF safetensors, AWQ int4 or fp16/bf16
    tok = minimoe.load_tokenizer("path/to/Confinus-2x7B-AWQ")
    print(model)                                                 # the modules, and the engine running them
    minimoe.ops.awq_backend("cpu")                               # which int4 kernel runs: "cpu", "cuda", "reference"

Submodules are imported on first use, so `import minimoe` stays cheap and the tokenizer works without torch.
"""

import importlib

__version__ = "0.1.0"

# public name -> (module, attribute or None for the module itself)
_LAZY = {
    "ops": ("minimoe.ops", None),
    "awq": ("minimoe.awq", None),
    "config": ("minimoe.config", None),
    "checkpoint": ("minimoe.checkpoint", None),
    "model": ("minimoe.model", None),
    "cache": ("minimoe.cache", None),
    "loading": ("minimoe.loading", None),
    "engines": ("minimoe.engines", None),
    "testing": ("minimoe.testing", None),
    "tokenizer": ("minimoe.tokenizer", None),
    "generate": ("minimoe.generate", None),
    "train": ("minimoe.train", None),
    "parallel": ("minimoe.parallel", None),
    "load_model": ("minimoe.loading", "load_model"),
    "load_tokenizer": ("minimoe.tokenizer", "load_tokenizer"),
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'minimoe' has no attribute {name!r}")
    module_name, attribute = _LAZY[name]
    module = importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value
    return value
