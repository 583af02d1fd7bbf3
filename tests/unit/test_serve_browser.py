"""The cambrian-serve page in headless Chromium (Debian's ``chromium`` driven by playwright):
load it, upload an image, send a prompt, watch the answer stream in, see an empty prompt's error.

Marked ``browser``; skipped where chromium or playwright is missing. The page is driven by
tools/serve_screenshot.py's ``drive_page`` (the script that made docs/serve.png). The model's
decoder is slowed to ~40 ms a step here so that each streamed delta reaches the page as its own
update: the tiny model would otherwise finish before the browser renders twice.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import pytest

pytest.importorskip("gradio")
pytest.importorskip("playwright")

from cambrian_train.serve.cli import Server, build_app, parser  # noqa: E402

# fixtures: the tiny two-image export and its loaded model; images; one_thread (autouse)
from tests.unit.test_generate import images, one_thread  # noqa: E402, F401
from tests.unit.test_serve_engine import serve_export, served  # noqa: E402, F401

TOOL = Path(__file__).resolve().parents[2] / "tools" / "serve_screenshot.py"
spec = importlib.util.spec_from_file_location("serve_screenshot", TOOL)
serve_screenshot = importlib.util.module_from_spec(spec)
spec.loader.exec_module(serve_screenshot)
CHROMIUM = serve_screenshot.find_chromium(None)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium (apt-get install -y chromium)"),
]
NEW_TOKENS = 12


def test_page_uploads_an_image_and_streams_the_answer(
    served,  # noqa: F811
    serve_export,  # noqa: F811
    images,  # noqa: F811
    tmp_path,
    monkeypatch,
):
    model, _, encoder = served
    forward = model.llm.forward

    def slow(*args, **kwargs):
        time.sleep(0.04)
        return forward(*args, **kwargs)

    monkeypatch.setattr(model.llm, "forward", slow)
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    args = parser().parse_args(
        ["--model", str(serve_export), "--port", "0", "--max-new-tokens", str(NEW_TOKENS)]
    )
    app, engine = build_app(model, encoder, str(serve_export), args)
    image, shot = images / "wide.png", tmp_path / "page.png"
    with Server(app, engine) as server:
        seen = serve_screenshot.drive_page(server.url, image, "what color?", shot, CHROMIUM)
        want = serve_screenshot.endpoint_answer(server.url, image, "what color?", NEW_TOKENS)
    assert seen["title"] == "Cambrian · tiny-serve"
    answers = seen["answers"]
    assert len(answers) >= 3, answers  # the answer grew on the page step by step
    assert all(b.startswith(a) for a, b in zip(answers, answers[1:]) if a), answers
    assert answers[-1] == want.strip()
    assert "empty question" in seen["error"]
    assert shot.stat().st_size > 10_000
