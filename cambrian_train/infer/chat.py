"""``cambrian-chat``: talk to an exported model or a run checkpoint about an image.

    cambrian-chat --model PATH [--image IMG] [--prompt TEXT] [--temperature T] [--top-k K]
                  [--top-p P] [--seed S] [--max-new-tokens N] [--stop S ...] [--device D]

With ``--prompt`` the answer is streamed to stdout once and the program exits; without, an
interactive loop reads questions (``/image PATH`` switches the image and starts a new
conversation, ``/reset`` clears the history, ``/quit`` or end of input leaves). The conversation
is rendered through the model's chat template, the image placed in the first user turn as in
training; when the history no longer fits the model's length the oldest exchanges are dropped
(with a warning).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Iterable, Iterator, List, Optional, Sequence, TextIO, Tuple, Union

import torch

from cambrian_train.batch import Batch
from cambrian_train.data.collate import collate
from cambrian_train.data.dataset import ImageTextEncoder, Sample
from cambrian_train.data.records import RecordError
from cambrian_train.data.templates import IMAGE_TAG, Turn
from cambrian_train.data.tokenize import Encoded, append_text
from cambrian_train.infer.generate import Sampler, stream_generate

log = logging.getLogger(__name__)
COMMANDS = "commands: /image PATH (new conversation about PATH), /reset, /quit"


@dataclass
class ChatOptions:
    """Decoding settings of a chat."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: Optional[int] = None
    stop: List[str] = field(default_factory=list)

    def __post_init__(self):
        Sampler(self.temperature, self.top_k, self.top_p)  # ValueError naming a bad value
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens} must be >= 1")


def turn_end(encoder: ImageTextEncoder) -> Tuple[List[int], List[str]]:
    """→ (end-of-answer token ids, stop strings) of the encoder's template: the tokenizer's eos,
    plus the template's end-of-turn marker as a token when it is one (``<|im_end|>``), else as a
    stop string when it is only whitespace (the plain template's newline)."""
    tokenizer, suffix = encoder.tokenizer, encoder.template.assistant_suffix
    eos = [tokenizer.eos_token_id]
    marker = suffix.strip()
    if not marker:
        return eos, [suffix] if suffix else []
    ids = tokenizer(marker, add_special_tokens=False)["input_ids"]
    if len(ids) == 1 and ids[0] not in eos:
        eos.append(ids[0])
    return eos, []


def prompt_sample(
    encoder: ImageTextEncoder,
    encoded: Encoded,
    images: Sequence[Union[str, bytes]],
    counts: Optional[Sequence[int]] = None,
) -> Sample:
    """A tokenised prompt and its images (paths or encoded bytes, one per ``<image>``) as a
    sample; ``counts``: the tile counts the prompt was encoded with (data.tiling). RecordError
    (missing_image, bad_image) for an image that cannot be read."""
    pixels, boxes = encoder.load_images(images, counts)
    return Sample("prompt", encoded.input_ids, encoded.labels, encoded.image_starts, pixels, boxes)


def collate_prompts(encoder: ImageTextEncoder, samples: Sequence[Sample]) -> Batch:
    """Prompt samples → one left-padded batch as long as the longest (generate.py's input)."""
    return collate(
        list(samples),
        max(len(s.input_ids) for s in samples),
        encoder.max_images,
        encoder.slot_len,
        encoder.tokenizer.pad_token_id,
        encoder.image_specs,
        left_pad=True,
    )


class ChatSession:
    """A conversation about at most one image: history, prompt rendering, streamed answers."""

    def __init__(self, model, encoder: ImageTextEncoder, options: ChatOptions, device="cpu"):
        self.model = model
        self.encoder = encoder
        self.options = options
        self.device = torch.device(device)
        self.exchanges: List[Tuple[str, str]] = []  # (question, answer), without image tags
        self.image: Optional[str] = None
        self.tiles: List[int] = []  # image slots of the image (its tiles with data.tiling)
        self.eos_ids, self.template_stop = turn_end(encoder)

    def set_image(self, path: str) -> None:
        """Talk about ``path`` from now on (a new conversation)."""
        if not os.path.isfile(path):
            raise ValueError(f"image {path} does not exist")
        try:
            self.tiles = self.encoder.tile_counts([path])
        except RecordError as err:
            raise ValueError(f"image {path}: {err.detail}") from None
        self.image = path
        self.reset()

    def reset(self) -> None:
        self.exchanges = []

    def prompt_text(self, question: str, exchanges: Sequence[Tuple[str, str]]) -> str:
        """The template's rendering of ``exchanges`` + ``question``, up to the answer."""
        if IMAGE_TAG in question:
            raise ValueError(f"write questions without {IMAGE_TAG}; set the image with /image")
        template = self.encoder.template
        if template.plain:  # stage-1 format: the image then its caption, no conversation
            return template.prompt([Turn("user", IMAGE_TAG if self.image else question)])
        questions = [q for q, _ in exchanges] + [question]
        if self.image is not None:
            questions[0] = f"{IMAGE_TAG}\n{questions[0]}"
        turns: List[Turn] = []
        for q, (_, answer) in zip(questions, exchanges):
            turns += [Turn("user", q), Turn("assistant", answer)]
        turns.append(Turn("user", questions[-1]))
        return template.prompt(turns, self.encoder.system_prompt)

    def encode(self, question: str) -> Encoded:
        """Tokenised prompt; the oldest exchanges are dropped while it exceeds the length."""
        enc = self.encoder
        for drop in range(len(self.exchanges) + 1):
            out = Encoded()
            text = self.prompt_text(question, self.exchanges[drop:])
            text = enc.expand_tags(text, self.tiles if IMAGE_TAG in text else None)
            append_text(out, text, False, enc.tokenizer, enc.slot_len, enc.placeholder_id)
            if len(out.input_ids) <= enc.max_length:
                if drop:
                    log.warning(
                        "dropped the %d oldest exchanges to fit %d tokens", drop, enc.max_length
                    )
                    self.exchanges = self.exchanges[drop:]
                return out
        raise ValueError(
            f"the prompt has {len(out.input_ids)} tokens, more than the model's "
            f"{enc.max_length}; ask a shorter question"
        )

    def batch(self, question: str) -> Batch:
        encoded = self.encode(question)
        try:
            images = [self.image] if self.image else []
            sample = prompt_sample(self.encoder, encoded, images, self.tiles if images else None)
        except RecordError as err:
            raise ValueError(f"image {self.image}: {err}") from None
        return collate_prompts(self.encoder, [sample]).to(self.device)

    def ask(self, question: str) -> Iterator[str]:
        """Stream the answer's text deltas; the exchange joins the history when it is done."""
        opts = self.options
        deltas = stream_generate(
            self.model,
            self.batch(question),
            self.encoder.tokenizer,
            opts.max_new_tokens,
            temperature=opts.temperature,
            top_k=opts.top_k,
            top_p=opts.top_p,
            seed=opts.seed,
            stop=list(opts.stop) + self.template_stop,
            eos_token_id=self.eos_ids,
        )
        answer = []
        for delta in deltas:
            answer.append(delta)
            yield delta
        # the template adds its own separators around an answer (vicuna's leading space)
        self.exchanges.append((question, "".join(answer).strip()))


def answer(session: ChatSession, question: str, out: TextIO) -> None:
    for delta in session.ask(question):
        out.write(delta)
        out.flush()
    out.write("\n")
    out.flush()


def interactive(session: ChatSession, lines: Iterable[str], out: TextIO) -> None:
    """The chat loop over input ``lines`` (commands or questions)."""
    out.write(COMMANDS + "\n")
    for raw in lines:
        line = raw.strip()
        try:
            if not line:
                continue
            if line == "/quit":
                return
            if line == "/reset":
                session.reset()
                out.write("(conversation cleared)\n")
            elif line.split()[0] == "/image":
                session.set_image(line[len("/image") :].strip())
                out.write(f"(image {session.image}; new conversation)\n")
            elif line.startswith("/"):
                out.write(f"unknown command {line.split()[0]!r}; {COMMANDS}\n")
            else:
                answer(session, line, out)
        except ValueError as err:
            out.write(f"error: {err}\n")


def _stdin_lines() -> Iterator[str]:
    while True:
        try:
            yield input("> ")
        except EOFError:
            return


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cambrian-chat", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="export directory or run checkpoint")
    p.add_argument("--image", help="image to talk about")
    p.add_argument("--prompt", help="answer this once and exit (else: interactive)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--top-p", type=float, default=1.0, help="1 = off")
    p.add_argument("--seed", type=int, default=None, help="sampling seed")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; returns the exit status (0 ok, 2 user error)."""
    from cambrian_train.infer.load import load_pretrained

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    try:
        options = ChatOptions(
            args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed, args.stop
        )
        model, _, encoder = load_pretrained(args.model, args.device)
        session = ChatSession(model, encoder, options, args.device)
        if args.image:
            session.set_image(args.image)
        if args.prompt is not None:
            answer(session, args.prompt, sys.stdout)
            return 0
    except ValueError as err:
        print(f"cambrian-chat: error: {err}", file=sys.stderr)
        return 2
    interactive(session, _stdin_lines(), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
