"""The KV caches: the keys and values of the tokens seen so far, so each new token costs O(L), not O(L^2).

    KVCache        grows as tokens arrive; any number of new tokens per forward (prompts and decode steps)
    StaticKVCache  fixed capacity, one token per forward, its write position a device tensor: a decode step
                   whose shapes never change, which a CUDA graph can replay and torch.compile compiles once

`Transformer.forward` talks to either through three calls, in this order:

    positions, q_slots, key_real = cache.begin(real)   # before the layers: where the new tokens go
    k, v = cache.update(layer, k, v)                   # in each layer's attention: store, return all keys
    cache.commit()                                     # after the layers: the new tokens are now "seen"

`real` (B, T) says which new tokens are real (left padding is not). The cache remembers which of its slots
hold real tokens (`key_mask`) and the next RoPE position of each row (`next_position`), which counts real
tokens only, so a batch of prompts of different lengths decodes exactly as each prompt would alone.
"""

from __future__ import annotations

import torch

from minimoe.config import ModelConfig


def positions_of(start: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """RoPE positions (B, T) of new tokens: row b counts its real tokens on from start[b]; padding gets the
    position of the real token before it (or 0), which does not matter: no real token ever sees it."""
    return (start[:, None] + real.long().cumsum(-1) - 1).clamp(min=0)


class KVCache:
    """Keys and values of every layer, stored (B, Hkv, capacity, D) and grown by doubling (no 32k-token
    preallocation for a 10-token prompt). `length` is the number of slots in use, padding included."""

    def __init__(self, num_layers: int):
        self.keys: list[torch.Tensor | None] = [None] * num_layers    # (B, Hkv, capacity, D)
        self.values: list[torch.Tensor | None] = [None] * num_layers
        self.length = 0                                               # L before the current forward
        self.key_mask: torch.Tensor | None = None                     # (B, L) True = a real token
        self.next_position: torch.Tensor | None = None                # (B,) RoPE position of the next token
        self._pending: tuple | None = None                            # what commit() will make true

    def room_for(self, new_tokens: int, context: int) -> None:
        """Raise if `new_tokens` more would not fit the model's context."""
        if self.length + new_tokens > context:
            raise ValueError(f"{self.length + new_tokens} tokens exceed the model's context of {context} "
                             f"(max_position_embeddings)")

    def begin(self, real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For T new tokens (real: (B, T) bool) -> (positions (B, T), their slots (T,), key_real (B, L + T))."""
        B, T = real.shape
        start = self.next_position if self.next_position is not None else real.new_zeros(B, dtype=torch.long)
        key_real = real if self.key_mask is None else torch.cat((self.key_mask, real), dim=1)
        self._pending = (self.length + T, key_real, start + real.long().sum(-1))
        slots = torch.arange(self.length, self.length + T, device=real.device)
        return positions_of(start, real), slots, key_real

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append this forward's k/v (B, Hkv, T, D) at slots length..length+T; return all L + T of them."""
        # [task 2.3]
        keys, values, start = self.reserve(layer, k)
        t = k.shape[2]
        keys[:, :, start:start + t] = k
        values[:, :, start:start + t] = v
        return keys[:, :, :start + t], values[:, :, :start + t]
        # [/task 2.3]

    def commit(self) -> None:
        """The tokens of the forward begun last are now part of the cache."""
        self.length, self.key_mask, self.next_position = self._pending
        self._pending = None

    def reserve(self, layer: int, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Make room in `layer` for the T new tokens of k (B, Hkv, T, D): (keys, values, start), the whole
        buffers (B, Hkv, capacity, D) and the slot the first new token goes to. `update` then writes them; the
        native engine's fused CPU decode attention (ops.decode_attention) writes them itself."""
        start, t = self.length, k.shape[2]
        buffer = self.keys[layer]
        if buffer is None or buffer.shape[2] < start + t:
            capacity = max(16, 2 * (start + t))
            grown_k = k.new_empty(k.shape[0], k.shape[1], capacity, k.shape[3])
            grown_v = k.new_empty(grown_k.shape)
            if buffer is not None:
                grown_k[:, :, :start] = buffer[:, :, :start]
                grown_v[:, :, :start] = self.values[layer][:, :, :start]
            self.keys[layer], self.values[layer] = grown_k, grown_v
        return self.keys[layer], self.values[layer], start


class StaticKVCache:
    """A KV cache of fixed capacity whose write position is a tensor: the same program every decode step.

    `KVCache` slices its buffers by a Python int that changes every step. Here keys/values are always
    (B, Hkv, capacity, D) and attention reads all `capacity` slots, the mask hiding those not written yet. The
    next write slot (`slot`), the next RoPE position of each row (`next_position`) and which slots hold real
    tokens (`key_mask`) live on the device and `begin`/`commit` advance them in place: a replayed step needs no
    host work. The host does not know the length either, so the caller (minimoe.decoders) checks the room left.

    The buffers start at zero, not uninitialised: a masked slot gets probability exactly 0, and 0 * v must be 0,
    which it would not be for a NaN left in fresh memory.
    """

    def __init__(self, config: ModelConfig, batch: int, capacity: int, dtype: torch.dtype, device):
        if capacity < 1 or capacity > config.max_position_embeddings:
            raise ValueError(f"StaticKVCache: capacity must be in 1..{config.max_position_embeddings} "
                             f"(max_position_embeddings), found {capacity}")
        shape = (batch, config.num_key_value_heads, capacity, config.head_dim)
        layers = config.num_hidden_layers
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.capacity = capacity
        self.slot = torch.zeros(1, dtype=torch.long, device=device)        # where the next token's k/v go
        self.key_mask = torch.zeros(batch, capacity, dtype=torch.bool, device=device)   # True = a real token
        self.next_position = torch.zeros(batch, dtype=torch.long, device=device)

    def load(self, cache: KVCache) -> int:
        """Take over a prefilled `KVCache` (same batch): copy its keys, values, mask and positions in.

        Returns the number of slots now used (the prompt's length, padding included)."""
        n = cache.length
        if n >= self.capacity:
            raise ValueError(f"StaticKVCache: the prefilled cache holds {n} tokens, the capacity is {self.capacity}; "
                             f"no room left to decode")
        for mine, theirs in ((self.keys, cache.keys), (self.values, cache.values)):
            for layer, buffer in enumerate(theirs):
                mine[layer][:, :, :n].copy_(buffer[:, :, :n])
        self.key_mask.zero_()
        self.key_mask[:, :n] = cache.key_mask
        self.next_position.copy_(cache.next_position)
        self.slot.fill_(n)
        return n

    def room_for(self, new_tokens: int, context: int) -> None:
        """One token per forward; the room left is the caller's to check (reading `slot` would sync a GPU)."""
        if new_tokens != 1:
            raise ValueError(f"StaticKVCache: one new token per row per forward, found {new_tokens} (prefill "
                             f"into a KVCache, then StaticKVCache.load it)")

    def begin(self, real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One new (real) token per row -> (positions (B, 1), its slot (1,), key_real (B, capacity))."""
        self.key_mask.index_fill_(1, self.slot, True)
        return self.next_position[:, None], self.slot, self.key_mask

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write one step's k/v (B, Hkv, 1, D) at `slot`; return the whole buffers (B, Hkv, capacity, D)."""
        self.keys[layer].index_copy_(2, self.slot, k)
        self.values[layer].index_copy_(2, self.slot, v)
        return self.keys[layer], self.values[layer]

    def commit(self) -> None:
        self.slot += 1
        self.next_position += 1
