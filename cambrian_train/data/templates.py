"""Chat templates as registered data, rendering a conversation into supervised/unsupervised spans.

A template turns a list of turns into :class:`Segment`s: text plus a flag saying whether its
tokens are trained on. Label masks come from these segment boundaries, so the supervised text is
exactly the assistant turns (plus each turn's end marker) and nothing else. Templates that mirror a
tokenizer's own Jinja chat template are tested to render the same string.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

IMAGE_TAG = "<image>"
CAMBRIAN_SYSTEM_PROMPT = (
    "You are Cambrian, a highly intelligent multimodal AI trained by NYU Vision X. As a multimodal "
    "AI, you have the ability to process and analyze images. Whenever an image is present in the "
    "conversation, very carefully examine it and consider its contents when formulating your "
    "response. You should give concise responses to very short questions, and longer responses to "
    "longer questions."
)
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


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
    system: str  # wrapper of the system turn, '' when the format has none
    user: str
    assistant_prefix: str  # unsupervised text before an assistant answer (generation prompt)
    assistant_suffix: str  # supervised end-of-turn marker after the answer
    default_system: str = ""
    plain: bool = False  # stage-1 format: image + caption; human text other than <image> dropped

    def render(self, turns: List[Turn], system_prompt: Optional[str] = None) -> List[Segment]:
        """Render a conversation; the result's supervised segments are the assistant turns."""
        if self.plain:
            return self._render_plain(turns)
        system = self.default_system if system_prompt is None else system_prompt
        rest = turns
        if turns and turns[0].role == "system":
            system, rest = turns[0].text, turns[1:]
        segments = [Segment(self.bos, False)] if self.bos else []
        if system and self.system:
            segments.append(Segment(self.system.format(text=system), False))
        for turn in rest:
            if turn.role == "user":
                segments.append(Segment(self.user.format(text=turn.text), False))
            elif turn.role == "assistant":
                segments.append(Segment(self.assistant_prefix, False))
                segments.append(Segment(turn.text + self.assistant_suffix, True))
            else:
                raise ValueError(f"role {turn.role!r} may only open a conversation")
        return _merge(segments)

    def generation_prompt(self, question: str, system_prompt: Optional[str] = None) -> str:
        """The text before an answer to one user question (inference)."""
        if self.plain:
            return self.bos + question
        segments = self.render([Turn("user", question)], system_prompt)
        return "".join(s.text for s in segments) + self.assistant_prefix

    def _render_plain(self, turns: List[Turn]) -> List[Segment]:
        users = [t for t in turns if t.role == "user"]
        answers = [t for t in turns if t.role == "assistant"]
        if len(answers) != 1:
            raise ValueError(f"template 'plain' needs exactly one answer, got {len(answers)}")
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
        ),
        Template(
            name="vicuna_v1",
            bos="<s>",
            system="{text} ",
            user="USER: {text} ",
            assistant_prefix="ASSISTANT: ",
            assistant_suffix="</s>",
            default_system=(
                "A chat between a curious user and an artificial intelligence assistant. The "
                "assistant gives helpful, detailed, and polite answers to the user's questions."
            ),
        ),
        Template(
            name="chatml",
            bos="",
            system="<|im_start|>system\n{text}<|im_end|>\n",
            user="<|im_start|>user\n{text}<|im_end|>\n",
            assistant_prefix="<|im_start|>assistant\n",
            assistant_suffix="<|im_end|>\n",
            default_system="Answer the questions.",
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


def get_template(name: str) -> Template:
    if name not in TEMPLATES:
        raise ValueError(f"template={name!r} is not one of {sorted(TEMPLATES)}")
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
