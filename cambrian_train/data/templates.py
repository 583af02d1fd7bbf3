"""Chat templates as registered data, rendering a conversation into supervised/unsupervised spans.

A template turns a list of turns into :class:`Segment`s: text plus a flag saying whether its
tokens are trained on. Label masks come from these segment boundaries (data/tokenize.py), so the
supervised text is exactly the assistant turns (each with its end marker) and nothing else.

Registered templates, each rendering character for character (whitespace and BOS included) what
the official format renders; ``check_against_tokenizer`` compares one with a tokenizer's own
Jinja chat template at start-up:

- ``llama3``: the chat template of Meta-Llama-3-8B-Instruct (``<|begin_of_text|>``, header
  blocks, ``<|eot_id|>``), with Cambrian-1's system prompt as the default (its ``llama_3``
  conversation).
- ``vicuna_v1``: LLaVA/FastChat ``conv_vicuna_v1`` (separator style TWO: ``" "`` and ``"</s>"``);
  the generation prompt ends in ``"ASSISTANT:"`` as there.
- ``chatml``: ChatML as in the chat template of Yi-34B-Chat (no BOS).
- ``phi3``: the chat template of microsoft/Phi-3-mini-4k-instruct: no BOS (its tokenizer has
  ``add_bos_token: false``), ``<|role|>\\n ... <|end|>\\n`` blocks, and ``eos_token``
  (``<|endoftext|>``) closing a conversation rendered without a generation prompt (here: after
  its last answer, supervised; a conversation ending in a user turn is a prompt).
- ``mistral``: the chat template of mistralai/Mistral-7B-Instruct-v0.2 (and v0.1's updated one):
  ``<s>``, ``" [INST] "`` user blocks closed by ``" [/INST]"``, the system prompt folded into the
  first user turn followed by ``"\\n\\n"``, each answer preceded by ``" "`` and closed by ``</s>``.
- ``plain``: LLaVA ``conv_llava_plain`` (stage 1): the image placeholders, then caption + ``\\n``.

``tokenizer`` (:class:`TokenizerTemplate`) renders with the tokenizer's own chat template and
finds the supervised spans by prefix rendering.

The answer's leading space (vicuna, Mistral) belongs to the supervised segment, so a boundary
falls before the space: ``"ASSISTANT:" | " red"``. Byte-level BPE and SentencePiece both keep
``" red"`` one token there, while ``"ASSISTANT: " | "red"`` would cut a token in two.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple, Union

from cambrian_train.data.records import RecordError

IMAGE_TAG = "<image>"
CAMBRIAN_SYSTEM_PROMPT = (
    "You are Cambrian, a highly intelligent multimodal AI trained by NYU Vision X. As a multimodal "
    "AI, you have the ability to process and analyze images. Whenever an image is present in the "
    "conversation, very carefully examine it and consider its contents when formulating your "
    "response. You should give concise responses to very short questions, and longer responses to "
    "longer questions."
)
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
TOKENIZER_TEMPLATE = "tokenizer"


class TemplateMismatch(ValueError):
    """The template's text and the token masks (or the tokenizer's renders) disagree.

    A fault of the template or the tokenizer, never of one record: not a RecordError, so it is
    raised, not skipped.
    """


@dataclass(frozen=True)
class Segment:
    text: str
    supervised: bool


@dataclass(frozen=True)
class Turn:
    role: str  # system | user | assistant
    text: str


@dataclass(frozen=True)
class Template:
    """Role wrappers of one chat format. ``{text}`` in a wrapper marks where the content goes."""

    name: str
    bos: str  # prepended once (no double BOS: tokenization adds no special tokens itself)
    system: str  # wrapper of the system prompt, '' when the format has none
    user: str
    assistant_prefix: str  # unsupervised text before an answer; the generation prompt ends with it
    assistant_suffix: str  # supervised end-of-turn marker after the answer
    default_system: str = ""
    answer_prefix: str = ""  # supervised text before the answer (the space of vicuna and Mistral)
    system_in_first_user: bool = False  # Mistral: the wrapped system prompt opens the first user
    end: str = ""  # supervised, after a conversation's last answer (Phi-3's eos)
    markers: Tuple[str, ...] = ()  # the format's control strings, forbidden in record text
    plain: bool = False  # stage-1 format: image + caption; human text other than <image> dropped

    def render(self, turns: List[Turn], system_prompt: Optional[str] = None) -> List[Segment]:
        """Render a conversation; the result's supervised segments are the assistant turns."""
        if self.plain:
            return self._render_plain(turns)
        segments = self._render_turns(turns, system_prompt)
        if turns and turns[-1].role == "assistant":
            segments.append(Segment(self.end, True))
        return _merge(segments)

    def prompt(self, turns: List[Turn], system_prompt: Optional[str] = None) -> str:
        """The text before the next answer of a conversation that ends with a user turn."""
        _require_user_last(turns, self.name)
        if self.plain:
            return self.bos + turns[-1].text
        segments = self._render_turns(turns, system_prompt)
        return "".join(s.text for s in segments) + self.assistant_prefix

    def generation_prompt(self, question: str, system_prompt: Optional[str] = None) -> str:
        """The text before an answer to one user question (inference)."""
        return self.prompt([Turn("user", question)], system_prompt)

    def _render_turns(self, turns: List[Turn], system_prompt: Optional[str]) -> List[Segment]:
        system = self.default_system if system_prompt is None else system_prompt
        rest = turns
        if turns and turns[0].role == "system":
            system, rest = turns[0].text, turns[1:]
        system_text = self.system.format(text=system) if system and self.system else ""
        folded = system_text if self.system_in_first_user else ""
        segments = [Segment(self.bos, False), Segment("" if folded else system_text, False)]
        for turn in rest:
            if turn.role == "user":
                segments.append(Segment(self.user.format(text=folded + turn.text), False))
                folded = ""
            elif turn.role == "assistant" and folded:
                raise RecordError(
                    "unrenderable",
                    f"template {self.name!r} folds the system prompt into the first user turn, "
                    "and the conversation opens with an answer",
                )
            elif turn.role == "assistant":
                segments.append(Segment(self.assistant_prefix, False))
                segments.append(
                    Segment(self.answer_prefix + turn.text + self.assistant_suffix, True)
                )
            else:
                raise ValueError(f"role {turn.role!r} may only open a conversation")
        return segments

    def _render_plain(self, turns: List[Turn]) -> List[Segment]:
        users = [t for t in turns if t.role == "user"]
        answers = [t for t in turns if t.role == "assistant"]
        if len(answers) != 1:
            raise RecordError(
                "not_one_answer", f"template 'plain' needs exactly one answer, got {len(answers)}"
            )
        images = sum(t.text.count(IMAGE_TAG) for t in users)
        prompt = self.bos + IMAGE_TAG * images
        return _merge(
            [Segment(prompt, False), Segment(answers[0].text + self.assistant_suffix, True)]
        )


def _merge(segments: List[Segment]) -> List[Segment]:
    """Join neighbours with the same flag and drop empty ones."""
    out: List[Segment] = []
    for seg in segments:
        if not seg.text:
            continue
        if out and out[-1].supervised == seg.supervised:
            out[-1] = Segment(out[-1].text + seg.text, seg.supervised)
        else:
            out.append(seg)
    return out


@dataclass(frozen=True, eq=False)
class TokenizerTemplate:
    """The tokenizer's own Jinja chat template (``template=tokenizer``).

    Supervised spans come from prefix rendering: for the assistant message at index i, the
    render of ``messages[:i]`` with the generation prompt is the unsupervised prefix and the
    render of ``messages[:i + 1]`` is the full text, so the difference (answer + end marker) is
    supervised. Every render must extend the previous one; a chat template that re-renders
    history (system prompt moved to the last user turn, eos only after the last answer, earlier
    reasoning dropped) raises :class:`TemplateMismatch`, checked on a probe conversation as soon
    as the template is built.
    """

    tokenizer: Any
    name: str = TOKENIZER_TEMPLATE
    markers: Tuple[str, ...] = ()
    plain: bool = False

    def __post_init__(self):
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(
                f"template={TOKENIZER_TEMPLATE!r}: tokenizer {self.source!r} has no chat template; "
                f"pick a registered one: {sorted(TEMPLATES)}"
            )
        try:
            self.render(PROBE, PROBE_SYSTEM)
        except RecordError:
            try:  # a chat template without a system role still serves records without one
                self.render(PROBE, "")
            except RecordError as err:
                raise ValueError(
                    f"{self.label} cannot render a probe conversation: {err}"
                ) from None

    @property
    def source(self) -> str:
        return str(getattr(self.tokenizer, "name_or_path", "") or type(self.tokenizer).__name__)

    @property
    def label(self) -> str:
        return f"template {self.name!r} (the chat template of tokenizer {self.source!r})"

    def render(self, turns: List[Turn], system_prompt: Optional[str] = None) -> List[Segment]:
        """Render a conversation; the supervised segments are the assistant messages."""
        messages = _messages(turns, system_prompt)
        segments: List[Segment] = []
        done = ""
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prompt = self._apply(messages[:i], generation_prompt=True)
            full = self._apply(messages[: i + 1], generation_prompt=False)
            self._require_prefix(done, prompt, f"messages[:{i}] + generation prompt")
            self._require_prefix(prompt, full, f"messages[:{i + 1}]")
            segments += [Segment(prompt[len(done) :], False), Segment(full[len(prompt) :], True)]
            done = full
        final = self._apply(messages, generation_prompt=False)
        self._require_prefix(done, final, "the whole conversation")
        return _merge([*segments, Segment(final[len(done) :], False)])

    def prompt(self, turns: List[Turn], system_prompt: Optional[str] = None) -> str:
        """The text before the next answer of a conversation that ends with a user turn."""
        _require_user_last(turns, self.name)
        return self._apply(_messages(turns, system_prompt), generation_prompt=True)

    def generation_prompt(self, question: str, system_prompt: Optional[str] = None) -> str:
        """The text before an answer to one user question (inference)."""
        return self.prompt([Turn("user", question)], system_prompt)

    @functools.cached_property
    def assistant_suffix(self) -> str:
        """The end-of-turn text after an answer (``<|eot_id|>``), read off the probe's render."""
        answer = PROBE[1].text
        supervised = next(s.text for s in self.render(PROBE, "") if s.supervised)
        return supervised[supervised.index(answer) + len(answer) :]

    def _apply(self, messages: List[Dict[str, str]], generation_prompt: bool) -> str:
        from jinja2.exceptions import TemplateError

        try:
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=generation_prompt
            )
        except (TemplateError, ValueError) as err:
            raise RecordError("unrenderable", f"{self.label}: {err}") from None

    def _require_prefix(self, before: str, after: str, what: str) -> None:
        if not after.startswith(before):
            raise TemplateMismatch(
                f"{self.label} re-renders earlier turns: the render of {what} does not extend "
                f"the previous render ({first_difference(before, after)}); supervised spans "
                f"cannot be found by prefix rendering, use a registered template: "
                f"{sorted(TEMPLATES)}"
            )


ChatTemplate = Union[Template, TokenizerTemplate]


def _require_user_last(turns: List[Turn], name: str) -> None:
    if not turns or turns[-1].role != "user":
        last = turns[-1].role if turns else "nothing"
        raise ValueError(f"template {name!r}: a prompt ends with a user turn, not {last}")


def _messages(turns: List[Turn], system_prompt: Optional[str]) -> List[Dict[str, str]]:
    """Turns → chat-template messages; the record's system turn overrides ``system_prompt``."""
    system, rest = system_prompt, turns
    if turns and turns[0].role == "system":
        system, rest = turns[0].text, turns[1:]
    head = [{"role": "system", "content": system}] if system else []
    return head + [{"role": t.role, "content": t.text} for t in rest]


def first_difference(ours: str, theirs: str, context: int = 30) -> str:
    """Describe where two strings first differ: the position and a window of each."""
    pos = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), None)
    if pos is None:
        pos = min(len(ours), len(theirs))
    lo = max(0, pos - context)
    return (
        f"first difference at character {pos}: {ours[lo : pos + context]!r} "
        f"vs {theirs[lo : pos + context]!r}"
    )


PROBE_SYSTEM = "You are a probe."
PROBE = [
    Turn("user", f"{IMAGE_TAG}\nQuestion one?"),
    Turn("assistant", "Answer one."),
    Turn("user", "Question two?"),
    Turn("assistant", "Answer two."),
]


def check_against_tokenizer(template: ChatTemplate, tokenizer) -> bool:
    """Compare ``template`` with the tokenizer's own chat template on a probe conversation.

    Returns False when there is nothing to compare (the tokenizer has no chat template, or the
    template is ``plain``), True when both render the same text and the same generation prompt;
    raises :class:`TemplateMismatch` showing the first differing position otherwise. A chat
    template that rejects a system turn is compared without one.
    """
    if template.plain or not getattr(tokenizer, "chat_template", None):
        return False
    from jinja2.exceptions import TemplateError

    source = getattr(tokenizer, "name_or_path", "")
    for system in (PROBE_SYSTEM, ""):
        try:
            theirs = tokenizer.apply_chat_template(_messages(PROBE, system), tokenize=False)
            their_prompt = tokenizer.apply_chat_template(
                _messages(PROBE[:1], system), tokenize=False, add_generation_prompt=True
            )
        except TemplateError as err:
            failure = err
            continue
        ours = "".join(s.text for s in template.render(PROBE, system))
        our_prompt = template.generation_prompt(PROBE[0].text, system)
        for what, mine, other in (("text", ours, theirs), ("prompt", our_prompt, their_prompt)):
            if mine != other:
                raise TemplateMismatch(
                    f"template {template.name!r} disagrees with the chat template of tokenizer "
                    f"{source!r} on the probe conversation's {what}: "
                    f"{first_difference(mine, other)} (template vs tokenizer)"
                )
        return True
    raise TemplateMismatch(
        f"the chat template of tokenizer {source!r} cannot render the probe conversation: {failure}"
    )


TEMPLATES: Dict[str, Template] = {
    t.name: t
    for t in (
        Template(
            name="llama3",
            bos="<|begin_of_text|>",
            system="<|start_header_id|>system<|end_header_id|>\n\n{text}<|eot_id|>",
            user="<|start_header_id|>user<|end_header_id|>\n\n{text}<|eot_id|>",
            assistant_prefix="<|start_header_id|>assistant<|end_header_id|>\n\n",
            assistant_suffix="<|eot_id|>",
            default_system=CAMBRIAN_SYSTEM_PROMPT,
            markers=("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
        ),
        Template(
            name="vicuna_v1",
            bos="<s>",
            system="{text} ",
            user="USER: {text} ",
            assistant_prefix="ASSISTANT:",
            assistant_suffix="</s>",
            answer_prefix=" ",
            default_system=(
                "A chat between a curious user and an artificial intelligence assistant. The "
                "assistant gives helpful, detailed, and polite answers to the user's questions."
            ),
            markers=("<s>", "</s>"),
        ),
        Template(
            name="chatml",
            bos="",
            system="<|im_start|>system\n{text}<|im_end|>\n",
            user="<|im_start|>user\n{text}<|im_end|>\n",
            assistant_prefix="<|im_start|>assistant\n",
            assistant_suffix="<|im_end|>\n",
            default_system="Answer the questions.",
            markers=("<|im_start|>", "<|im_end|>"),
        ),
        Template(
            name="phi3",
            bos="",
            system="<|system|>\n{text}<|end|>\n",
            user="<|user|>\n{text}<|end|>\n",
            assistant_prefix="<|assistant|>\n",
            assistant_suffix="<|end|>\n",
            end="<|endoftext|>",
            markers=("<s>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<|endoftext|>"),
        ),
        Template(
            name="mistral",
            bos="<s>",
            system="{text}\n\n",
            user=" [INST] {text} [/INST]",
            assistant_prefix="",
            assistant_suffix="</s>",
            answer_prefix=" ",
            system_in_first_user=True,
            markers=("<s>", "</s>", "[INST]", "[/INST]"),
        ),
        Template(
            name="plain",
            bos="",
            system="",
            user="",
            assistant_prefix="",
            assistant_suffix="\n",
            plain=True,
        ),
    )
}


def get_template(name: str, tokenizer=None) -> ChatTemplate:
    """A registered template by name, or ``tokenizer``: the tokenizer's own chat template."""
    if name == TOKENIZER_TEMPLATE:
        if tokenizer is None:
            raise ValueError(
                f"template={name!r} renders with the tokenizer's own chat template: "
                "get_template needs the tokenizer"
            )
        return TokenizerTemplate(tokenizer)
    if name not in TEMPLATES:
        names = sorted([*TEMPLATES, TOKENIZER_TEMPLATE])
        raise ValueError(f"template={name!r} is not one of {names}")
    return TEMPLATES[name]


def parse_turns(conversations: list, record_id: str) -> List[Turn]:
    """LLaVA ``conversations`` → turns; unknown roles raise ValueError naming record and role."""
    turns = []
    for i, turn in enumerate(conversations):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise ValueError(f"record {record_id}: turn {i} is not {{'from', 'value'}}: {turn!r}")
        role = turn["from"]
        if role == "system":
            if i != 0:
                raise ValueError(f"record {record_id}: system turn at position {i}, not first")
            turns.append(Turn("system", turn["value"]))
        elif role in ROLES:
            turns.append(Turn(ROLES[role], turn["value"]))
        else:
            raise ValueError(f"record {record_id}: unknown role {role!r} in turn {i}")
    return turns
