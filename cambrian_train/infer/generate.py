"""Batched generation for the VLM with a KV cache; images are encoded once, in the prefill.

Prompts are left-padded (data/collate.py with ``left_pad``) so every row's answer starts at the
same position; position ids follow the attention mask, so a padded row sees the same positions
as it would alone and batched greedy results equal batch-size-1 results. The prefill carries the
vision context for in-LLM SVA layers; decoding steps only add text tokens.

Decoding is greedy (``temperature`` 0) or sampled (temperature, top-k, top-p, a seeded
``torch.Generator``). A row finishes at an end-of-sequence id or as soon as one of the ``stop``
strings appears in its decoded continuation (its text is then cut before the stop string); rows
finish independently and the loop ends when all have finished or after ``max_new_tokens``.
Used by eval/vqa.py (``generate``), the chat CLI (``stream_generate``) and the server
(``stream_generate_batch``: several streamed rows, one token limit each, cancellable).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Sequence, Union

import torch

from cambrian_train.batch import Batch

StepCallback = Callable[[torch.Tensor, torch.Tensor], None]  # (logits [B, V], tokens [B])
StopCheck = Callable[[torch.Tensor], torch.Tensor]  # tokens so far [B, T] -> stopped [B] bool


@dataclass(frozen=True)
class Sampler:
    """How the next token is picked from logits: greedy, or sampled after temperature,
    top-k (0 = off) and nucleus top-p (1 = off) filtering."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self):
        if not self.temperature >= 0:
            raise ValueError(f"temperature={self.temperature} must be >= 0 (0 = greedy)")
        if self.top_k < 0:
            raise ValueError(f"top_k={self.top_k} must be >= 0 (0 = off)")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p} must be in (0, 1] (1 = off)")

    def filtered_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """[B, V] → tempered logits with the tokens outside top-k / top-p set to -inf."""
        logits = logits.float() / self.temperature
        if 0 < self.top_k < logits.shape[-1]:
            kth = torch.topk(logits, self.top_k, dim=-1).values[:, -1:]  # [B, 1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if self.top_p < 1:
            sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
            probs = torch.softmax(sorted_logits, dim=-1)
            # drop a token when the tokens ranked above it already reach top_p (the first stays)
            drop = probs.cumsum(-1) - probs >= self.top_p
            drop = drop.scatter(-1, order, drop)  # back to vocabulary order
            logits = logits.masked_fill(drop, float("-inf"))
        return logits

    def pick(self, logits: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
        """logits [B, V] → next token ids [B]."""
        if self.temperature == 0:
            return logits.argmax(-1)
        probs = torch.softmax(self.filtered_logits(logits), dim=-1)
        return torch.multinomial(probs, 1, generator=generator)[:, 0]


def make_generator(seed: Optional[int], device: torch.device) -> Optional[torch.Generator]:
    """A seeded generator on ``device`` (None when ``seed`` is None: torch's global RNG)."""
    if seed is None:
        return None
    return torch.Generator(device=device).manual_seed(int(seed))


def _eos_ids(eos_token_id: Union[int, Sequence[int]]) -> List[int]:
    ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    if not ids or not all(isinstance(i, int) for i in ids):
        raise ValueError(f"eos_token_id={eos_token_id!r} must be an id or a non-empty id list")
    return ids


@torch.no_grad()
def iter_tokens(
    model,
    batch: Batch,
    eos_token_id: Union[int, Sequence[int]],
    max_new_tokens: int = 16,
    sampler: Optional[Sampler] = None,
    generator: Optional[torch.Generator] = None,
    stop_check: Optional[StopCheck] = None,
    on_step: Optional[StepCallback] = None,
) -> Iterator[torch.Tensor]:
    """Yield the next token of every row [B] per step; finished rows get the first eos id.

    ``stop_check`` sees all tokens so far [B, T] after each step and returns rows to finish;
    ``on_step`` sees the logits the step picked from and the picked tokens. ``sampler`` None
    is greedy.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1")
    eos = _eos_ids(eos_token_id)
    sampler = sampler or Sampler()
    embeds, context = model.embed(batch)  # [B, L, D]
    mask = batch.attention_mask
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model.llm(
        inputs_embeds=embeds,
        attention_mask=mask,
        position_ids=positions,
        use_cache=True,
        **model.llm_kwargs(context),
    )
    eos_tensor = torch.tensor(eos, device=mask.device)
    finished = torch.zeros(mask.shape[0], dtype=torch.bool, device=mask.device)
    tokens = []
    for step in range(max_new_tokens):
        logits = out.logits[:, -1].float()  # [B, V]
        nxt = sampler.pick(logits, generator)
        nxt = torch.where(finished, torch.full_like(nxt, eos[0]), nxt)
        if on_step is not None:
            on_step(logits, nxt)
        tokens.append(nxt)
        finished |= torch.isin(nxt, eos_tensor)
        if stop_check is not None:
            finished |= stop_check(torch.stack(tokens, dim=1))
        yield nxt
        if bool(finished.all()) or step + 1 == max_new_tokens:
            return
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        positions = positions[:, -1:] + 1
        out = model.llm(
            input_ids=nxt[:, None],
            attention_mask=mask,
            position_ids=positions,
            past_key_values=out.past_key_values,
            use_cache=True,
        )


def generate_ids(
    model,
    batch: Batch,
    eos_token_id: Union[int, Sequence[int]],
    max_new_tokens: int = 16,
    temperature: float = 0.0,
    generator: Optional[torch.Generator] = None,
    top_k: int = 0,
    top_p: float = 1.0,
    stop_check: Optional[StopCheck] = None,
    on_step: Optional[StepCallback] = None,
) -> torch.Tensor:
    """→ new token ids [B, T≤max_new_tokens]; rows that ended are padded with the first eos id.

    ``temperature`` 0 is greedy decoding; above 0 samples from the tempered, filtered softmax.
    """
    sampler = Sampler(temperature, top_k, top_p)
    steps = iter_tokens(
        model, batch, eos_token_id, max_new_tokens, sampler, generator, stop_check, on_step
    )
    return torch.stack(list(steps), dim=1)


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """→ (``text`` cut before the earliest stop string, whether one occurred)."""
    hits = [i for i in (text.find(s) for s in stop) if i >= 0]
    return (text[: min(hits)], True) if hits else (text, False)


def _check_stop(stop: Sequence[str]) -> tuple[str, ...]:
    stop = (stop,) if isinstance(stop, str) else tuple(stop)
    if any(not isinstance(s, str) or not s for s in stop):
        raise ValueError(f"stop={list(stop)!r}: stop strings must be non-empty strings")
    return stop


class StopStrings:
    """A ``stop_check`` finishing a row once its decoded continuation holds a stop string."""

    def __init__(self, tokenizer, stop: Sequence[str]):
        self.tokenizer = tokenizer
        self.stop = _check_stop(stop)

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(tokens.tolist(), skip_special_tokens=True)
        return torch.tensor(
            [cut_at_stop(t, self.stop)[1] for t in texts], dtype=torch.bool, device=tokens.device
        )


def _generation_args(tokenizer, stop, eos_token_id, seed, generator, device):
    stop = _check_stop(stop)
    eos = tokenizer.eos_token_id if eos_token_id is None else eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos_token_id; pass eos_token_id")
    if seed is not None and generator is not None:
        raise ValueError(f"pass seed={seed} or a generator, not both")
    generator = generator if generator is not None else make_generator(seed, device)
    stop_check = StopStrings(tokenizer, stop) if stop else None
    return stop, eos, generator, stop_check


def generate(
    model,
    batch: Batch,
    tokenizer,
    max_new_tokens: int = 16,
    *,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    stop: Sequence[str] = (),
    eos_token_id: Union[int, Sequence[int], None] = None,
    on_step: Optional[StepCallback] = None,
) -> List[str]:
    """Decode one answer per row of a left-padded prompt batch (special tokens dropped, text cut
    before the first stop string). ``seed`` seeds a fresh generator for sampling."""
    stop, eos, generator, stop_check = _generation_args(
        tokenizer, stop, eos_token_id, seed, generator, batch.input_ids.device
    )
    ids = generate_ids(
        model,
        batch,
        eos,
        max_new_tokens,
        temperature,
        generator,
        top_k,
        top_p,
        stop_check,
        on_step,
    )
    texts = tokenizer.batch_decode(ids.tolist(), skip_special_tokens=True)
    return [cut_at_stop(t, stop)[0] for t in texts]


def _held_back(text: str, stop: Sequence[str]) -> int:
    """Characters at the end of ``text`` not yet safe to show: an incomplete UTF-8 sequence, or
    the longest suffix that could still grow into a stop string."""
    if text.endswith("\ufffd"):
        return len(text) - len(text.rstrip("\ufffd"))
    longest = max((len(s) for s in stop), default=1) - 1
    for k in range(min(longest, len(text)), 0, -1):
        if any(s.startswith(text[-k:]) for s in stop):
            return k
    return 0


class DeltaText:
    """One row's answer as text deltas: :meth:`push` each new token id, :meth:`finish` at the end.

    Text that may still turn out to be a stop string (or half a UTF-8 character) is held back
    until it cannot, so the deltas join to what :func:`generate` returns for the same tokens.
    """

    def __init__(self, tokenizer, stop: Sequence[str]):
        self.tokenizer = tokenizer
        self.stop = tuple(stop)
        self.ids: List[int] = []
        self.shown = 0

    def push(self, token: int) -> str:
        self.ids.append(int(token))
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        text, stopped = cut_at_stop(text, self.stop)
        end = len(text) if stopped else len(text) - _held_back(text, self.stop)
        if end <= self.shown:
            return ""
        delta, self.shown = text[self.shown : end], end
        return delta

    def finish(self) -> str:
        text = cut_at_stop(self.tokenizer.decode(self.ids, skip_special_tokens=True), self.stop)[0]
        delta, self.shown = text[self.shown :], max(self.shown, len(text))
        return delta


@dataclass
class RowDelta:
    """What one step added to one row: new text, and once the row is done why it ended
    (``"stop"``: an end-of-sequence id or a stop string, ``"length"``: its token limit) and how
    many tokens it generated."""

    text: str = ""
    finish_reason: Optional[str] = None
    num_tokens: int = 0


def stream_generate_batch(
    model,
    batch: Batch,
    tokenizer,
    max_new_tokens: Union[int, Sequence[int]] = 16,
    *,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    stop: Sequence[str] = (),
    eos_token_id: Union[int, Sequence[int], None] = None,
    cancelled: Optional[Callable[[], Sequence[bool]]] = None,
) -> Iterator[List[RowDelta]]:
    """Stream a left-padded batch: one :class:`RowDelta` per row and step.

    ``max_new_tokens`` may be one limit per row (the batch runs until the longest is reached or
    every row has finished); each row's text joins to what :func:`generate` returns for it with
    its own limit. ``cancelled`` (→ one flag per row, polled every step) finishes rows whose
    reader went away (finish reason ``"cancelled"``). A finished row gets empty deltas.
    """
    num_rows = batch.batch_size
    if isinstance(max_new_tokens, int):
        limits = [max_new_tokens] * num_rows
    else:
        limits = [int(n) for n in max_new_tokens]
    if len(limits) != num_rows or any(n < 1 for n in limits):
        raise ValueError(f"max_new_tokens={list(limits)} must be >= 1 for each of {num_rows} rows")
    stop, eos, generator, stop_check = _generation_args(
        tokenizer, stop, eos_token_id, seed, generator, batch.input_ids.device
    )
    eos_set = set(_eos_ids(eos))
    rows = [DeltaText(tokenizer, stop) for _ in range(num_rows)]
    reasons: List[Optional[str]] = [None] * num_rows
    stopped = [False] * num_rows  # this step's stop-string hits, set by ``check``
    gone = [False] * num_rows  # this step's cancelled rows, set by ``check``

    def check(tokens: torch.Tensor) -> torch.Tensor:  # [B, T] -> rows to finish [B]
        done = stop_check(tokens) if stop_check is not None else torch.zeros_like(tokens[:, 0])
        stopped[:] = [bool(d) for d in done]
        gone[:] = [bool(g) for g in cancelled()] if cancelled is not None else gone
        limit = [tokens.shape[1] >= n or g for n, g in zip(limits, gone)]
        return done.bool() | torch.tensor(limit, dtype=torch.bool, device=tokens.device)

    steps = iter_tokens(
        model,
        batch,
        eos,
        max(limits),
        Sampler(temperature, top_k, top_p),
        generator,
        check,
        on_step=None,
    )
    for nxt in steps:
        out = []
        for i, token in enumerate(nxt.tolist()):
            if reasons[i] is not None:
                out.append(RowDelta())
                continue
            delta = RowDelta(rows[i].push(token))
            if token in eos_set or stopped[i]:
                reasons[i] = "stop"
            elif gone[i]:
                reasons[i] = "cancelled"
            elif len(rows[i].ids) >= limits[i]:
                reasons[i] = "length"
            if reasons[i] is not None:
                delta = RowDelta(delta.text + rows[i].finish(), reasons[i], len(rows[i].ids))
            out.append(delta)
        yield out
    assert all(r is not None for r in reasons), "iter_tokens ended with a row unfinished"


def stream_generate(
    model,
    batch: Batch,
    tokenizer,
    max_new_tokens: int = 16,
    *,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    stop: Sequence[str] = (),
    eos_token_id: Union[int, Sequence[int], None] = None,
) -> Iterator[str]:
    """Yield the answer of a one-row batch as text deltas, step by step.

    The deltas join to exactly what :func:`generate` returns for the same arguments (text that
    may still turn out to be a stop string is held back until it cannot: :class:`DeltaText`).
    """
    if batch.batch_size != 1:
        raise ValueError(f"stream_generate takes one prompt, got a batch of {batch.batch_size}")
    for (row,) in stream_generate_batch(
        model,
        batch,
        tokenizer,
        max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        generator=generator,
        stop=stop,
        eos_token_id=eos_token_id,
    ):
        if row.text:
            yield row.text
