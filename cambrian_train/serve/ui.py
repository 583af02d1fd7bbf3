"""The gradio web page: chat about uploaded images with streamed answers.

One page: the model panel (serve/info.py), the conversation, a message box taking text and
several images, decoding settings (temperature, top-p, max new tokens, seed: -1 draws one), and
Reset. A message's images are placed before its text, as the HTTP endpoint places image parts;
the conversation (questions, their image files, answers) lives in the browser session's state
and is rendered through the model's template on every turn. Bad input raises ``gr.Error``: the
page shows the message, the server goes on. Answers come from the shared
:class:`~cambrian_train.serve.engine.Engine`; gradio's queue lets up to ``max_batch_size``
sessions wait on it at once, so their requests can share a batch.

The ``chat`` event is also the page's API (``gradio_client``: ``Client(url).submit(
{"text": ..., "files": [handle_file(path)]}, temperature, top_p, max_new_tokens, seed,
api_name="/chat")``; its outputs are the chat messages and the cleared message box).
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Sequence

import gradio as gr

from cambrian_train.infer.chat import ChatOptions
from cambrian_train.serve.engine import Engine, GenerationError
from cambrian_train.serve.info import ModelInfo
from cambrian_train.serve.prompts import Message, RequestError, build_prompt

log = logging.getLogger(__name__)

# system fonts only: the page loads nothing from outside the server
THEME = gr.themes.Default(
    font=["ui-sans-serif", "system-ui", "sans-serif"],
    font_mono=["ui-monospace", "monospace"],
)

Exchange = List[Any]  # [question, [image paths], answer]


def _path(file) -> str:
    return file if isinstance(file, str) else file.get("path") or file["name"]


def conversation_messages(conversation: Sequence[Exchange], question: str, images) -> List:
    """The session's exchanges plus the new question as :class:`Message` s."""
    out = []
    for q, files, answer in conversation:
        out += [Message("user", q, list(files)), Message("assistant", answer)]
    return out + [Message("user", question, list(images))]


def chat_display(conversation: Sequence[Exchange]) -> List[Dict[str, Any]]:
    """Exchanges → the Chatbot's messages (images shown above their question)."""
    shown: List[Dict[str, Any]] = []
    for question, files, answer in conversation:
        content = [{"path": f} for f in files] + ([question] if question else [])
        shown.append({"role": "user", "content": content})
        if answer is not None:
            shown.append({"role": "assistant", "content": answer})
    return shown


def decoding(defaults: ChatOptions, temperature, top_p, max_new_tokens, seed) -> ChatOptions:
    try:
        seed = None if seed is None or int(seed) < 0 else int(seed)
        return ChatOptions(
            int(max_new_tokens), float(temperature), defaults.top_k, float(top_p), seed
        )
    except (TypeError, ValueError) as err:
        raise gr.Error(f"decoding settings: {err}") from None


def build_ui(
    engine: Engine,
    info: ModelInfo,
    defaults: ChatOptions,
    max_new_tokens_limit: int,
    timeout_s: float = 600.0,
) -> gr.Blocks:
    encoder = engine.encoder

    def respond(message, conversation, temperature, top_p, max_new_tokens, seed):
        message = message or {}
        question = (message.get("text") or "").strip()
        images = [_path(f) for f in message.get("files") or []]
        options = decoding(defaults, temperature, top_p, max_new_tokens, seed)
        try:
            prompt = build_prompt(encoder, conversation_messages(conversation, question, images))
            job = engine.submit(prompt, options)
        except RequestError as err:
            raise gr.Error(str(err)) from None
        turn = [question, images, ""]
        shown = chat_display([*conversation, turn])
        yield shown, conversation, None  # the question appears, the box empties
        try:
            for delta in job.stream(timeout_s):
                turn[2] += delta
                shown[-1]["content"] = turn[2]
                yield shown, conversation, gr.skip()
        except GenerationError as err:
            raise gr.Error(str(err)) from None
        # the template adds its own separators around an answer (vicuna's leading space)
        turn[2] = turn[2].strip()
        yield shown, [*conversation, turn], gr.skip()

    with gr.Blocks(title=f"Cambrian · {info.model_id}", analytics_enabled=False) as demo:
        gr.Markdown(f"## Cambrian · {info.model_id}")
        with gr.Row():
            with gr.Column(scale=3):
                chatbot = gr.Chatbot(label="conversation", height=460)
                box = gr.MultimodalTextbox(
                    file_count="multiple",
                    file_types=["image"],
                    sources=["upload"],
                    placeholder=f"Ask about up to {encoder.max_images} image(s)…",
                    show_label=False,
                )
                reset = gr.Button("Reset", variant="secondary")
            with gr.Column(scale=2):
                panel = gr.Markdown(info.markdown())
                with gr.Accordion("decoding", open=True):
                    temperature = gr.Slider(
                        0, 2, defaults.temperature, step=0.05, label="temperature"
                    )
                    top_p = gr.Slider(0.05, 1, defaults.top_p, step=0.05, label="top_p")
                    max_new = gr.Slider(
                        1,
                        max_new_tokens_limit,
                        defaults.max_new_tokens,
                        step=1,
                        label="max new tokens",
                    )
                    seed = gr.Number(
                        -1 if defaults.seed is None else defaults.seed,
                        precision=0,
                        label="seed (-1: random)",
                    )
        conversation = gr.State([])
        box.submit(
            respond,
            [box, conversation, temperature, top_p, max_new, seed],
            [chatbot, conversation, box],
            api_name="chat",
            concurrency_limit=engine.max_batch_size,
        )
        reset.click(lambda: ([], [], None), None, [chatbot, conversation, box], api_name="reset")
        # the chat's own trash button clears the display: the conversation goes with it
        chatbot.clear(lambda: [], None, conversation, api_visibility="private")
        demo.load(info.markdown, None, panel, api_visibility="private")  # the digest, once ready
    return demo
