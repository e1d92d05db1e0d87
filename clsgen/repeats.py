"""No repeated n-grams in generated text: the decoding rule that stops a small model's loops.

A model of SmolLM2-135M's size, decoding greedily, often falls into a loop ("The study only reported
a positive finding, but it did not provide evidence ... The study only reported a positive finding,
...") until the token limit cuts it off. Blocking every token that would repeat an n-gram of
*generated* tokens (`no_repeat_ngram_size`) ends such loops; unlike transformers' processor of the
same name it does not look at the prompt, so an explanation may still quote its input.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def banned_tokens(generated: Sequence[int], n: int) -> set[int]:
    """Tokens that would complete an n-gram already present in `generated` (n >= 2; n < 2: none)."""
    if n < 2 or len(generated) < n:
        return set()
    prefix = tuple(generated[len(generated) - n + 1:])
    return {generated[i + n - 1] for i in range(len(generated) - n + 1)
            if tuple(generated[i:i + n - 1]) == prefix}


def block_repeats(logits: torch.Tensor, generated: Sequence[Sequence[int]], n: int) -> torch.Tensor:
    """`logits` (rows, vocab) with each row's `banned_tokens` set to -inf (a copy; unchanged if none)."""
    bans = [(row, sorted(banned_tokens(tokens, n))) for row, tokens in enumerate(generated)]
    bans = [(row, ids) for row, ids in bans if ids]
    if not bans:
        return logits
    logits = logits.clone()
    for row, ids in bans:
        logits[row, ids] = float("-inf")
    return logits


class NoRepeatGeneratedNGrams:
    """The same rule as a transformers logits processor for `generate` (the prompting baselines):
    n-grams are looked for in the tokens after the first `prompt_length`."""

    def __init__(self, n: int, prompt_length: int):
        self.n, self.prompt_length = n, prompt_length

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return block_repeats(scores, input_ids[:, self.prompt_length:].tolist(), self.n)


__all__ = ["NoRepeatGeneratedNGrams", "banned_tokens", "block_repeats"]
