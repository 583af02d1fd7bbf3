"""cambrian-serve end to end on a random local port: the OpenAI routes over plain HTTP and the
gradio page's API through gradio_client, against a tiny export (tests/unit/test_serve_engine.py).

Every request has a timeout and every loop a bound; the server runs in a thread and is stopped
in the fixture's teardown. Expected answers come from ``generate`` on the training encoder's
prompt (``encode_prompt`` + test_generate's ``prompt_batch``), not from the server's code.
"""

from __future__ import annotations

import base64
import json
import re
import threading

import pytest

pytest.importorskip("gradio")
httpx = pytest.importorskip("httpx")
gradio_client = pytest.importorskip("gradio_client")

from cambrian_train.infer.generate import generate, generate_ids  # noqa: E402
from cambrian_train.serve.cli import Server, build_app, parser  # noqa: E402

# fixtures: the tiny two-image export and its loaded model; images; one_thread (autouse)
from tests.unit.test_generate import images, one_thread, prompt_batch  # noqa: E402, F401
from tests.unit.test_serve_engine import serve_export, served  # noqa: E402, F401

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
TIMEOUT = 60  # seconds, per request


@pytest.fixture(scope="module")
def server(served, serve_export, tmp_path_factory):  # noqa: F811
    model, _, encoder = served
    args = parser().parse_args(
        [
            "--model",
            str(serve_export),
            "--port",
            "0",
            "--api-key",
            KEY,
            "--allow-local-files",
            "--max-new-tokens",
            "6",
            "--max-new-tokens-limit",
            "64",
            "--max-batch-size",
            "4",
            "--device",
            "cpu",
        ]
    )
    monkey = pytest.MonkeyPatch()
    monkey.setenv("GRADIO_TEMP_DIR", str(tmp_path_factory.mktemp("gradio")))
    monkey.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    app, engine = build_app(model, encoder, str(serve_export), args)
    srv = Server(app, engine, "127.0.0.1", 0).start(timeout=60)
    try:
        yield srv
    finally:
        srv.stop()
        monkey.undo()


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
        yield client


def data_url(path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def user(text, *image_urls):
    parts = [{"type": "image_url", "image_url": {"url": u}} for u in image_urls]
    return {"role": "user", "content": [*parts, {"type": "text", "text": text}]}


def expected(served, images, question, image, new_tokens, **kw):  # noqa: F811
    """(text, completion tokens, prompt tokens) of the model alone on the eval-style prompt."""
    model, tokenizer, encoder = served
    eos = [tokenizer.eos_token_id]
    batch = prompt_batch(encoder, [(question, image)], images)
    text = generate(model, batch, tokenizer, new_tokens, eos_token_id=eos, **kw)[0]
    ids = generate_ids(model, batch, eos, new_tokens)[0].tolist()
    used = next((i + 1 for i, t in enumerate(ids) if t in eos), len(ids))
    return text, used, batch.input_ids.shape[1]


def test_models_and_the_api_key(http, server):
    assert http.get("/v1/models").status_code == 401
    bad = http.get("/v1/models", headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "invalid_api_key"
    listed = http.get("/v1/models", headers=AUTH).json()
    card = listed["data"][0]
    assert listed["object"] == "list" and card["id"] == "tiny-serve" and card["object"] == "model"
    assert card["cambrian"]["connector"].startswith("mlp2x_gelu")
    assert http.get("/v1/models/tiny-serve", headers=AUTH).json()["id"] == "tiny-serve"
    assert http.get("/v1/models/other", headers=AUTH).status_code == 404
    assert http.post("/v1/chat/completions", json={}).status_code == 401


def test_completion_with_a_data_url_image(http, served, images):  # noqa: F811
    body = {
        "model": "tiny-serve",
        "messages": [user("what color?", data_url(images / "wide.png"))],
        "max_tokens": 5,
    }
    reply = http.post("/v1/chat/completions", json=body, headers=AUTH)
    assert reply.status_code == 200, reply.text
    out = reply.json()
    text, used, prompt_tokens = expected(served, images, "<image>\nwhat color?", "wide.png", 5)
    assert out["object"] == "chat.completion" and out["model"] == "tiny-serve"
    assert out["choices"][0]["message"] == {"role": "assistant", "content": text}
    assert out["choices"][0]["finish_reason"] == ("length" if used == 5 else "stop")
    assert out["usage"] == {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": used,
        "total_tokens": prompt_tokens + used,
    }
    # a local path (allowed on this server) is the same image
    local = dict(body, messages=[user("what color?", str(images / "wide.png"))])
    again = http.post("/v1/chat/completions", json=local, headers=AUTH).json()
    assert again["choices"][0]["message"]["content"] == text


def sse(http, body):
    """The data lines of a streamed completion."""
    lines = []
    with http.stream("POST", "/v1/chat/completions", json=body, headers=AUTH) as reply:
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/event-stream")
        for line in reply.iter_lines():
            if line:
                assert line.startswith("data: ")
                lines.append(line[len("data: ") :])
            assert len(lines) < 200
    return lines


def test_streaming_is_server_sent_chunks(http, served, images):  # noqa: F811
    body = {
        "messages": [user("count the shapes")],
        "max_tokens": 8,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    lines = sse(http, body)
    assert lines[-1] == "[DONE]"
    chunks = [json.loads(line) for line in lines[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    deltas = [c["choices"][0]["delta"].get("content", "") for c in chunks[1:-2]]
    text, used, prompt_tokens = expected(served, images, "count the shapes", None, 8)
    assert "".join(deltas) == text and len(deltas) > 1
    assert chunks[-2]["choices"][0]["finish_reason"] in ("length", "stop")
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == used
    assert len({c["id"] for c in chunks}) == 1


def test_seeded_sampling_is_reproducible(http, served, images):  # noqa: F811
    body = {"messages": [user("describe it")], "temperature": 1.0, "seed": 7, "max_tokens": 6}
    texts = [
        http.post("/v1/chat/completions", json=body, headers=AUTH).json()["choices"][0]["message"]
        for _ in range(2)
    ]
    assert texts[0] == texts[1]
    want, _, _ = expected(served, images, "describe it", None, 6, temperature=1.0, seed=7)
    assert texts[0]["content"] == want


@pytest.mark.parametrize(
    "change, status, match",
    [
        ({"model": "gpt-4o"}, 404, "not served here"),
        ({"messages": []}, 400, "non-empty list"),
        ({"messages": [user("   ")]}, 400, "empty question"),
        (
            {"messages": [user("q", "data:image/png;base64," + base64.b64encode(b"xx").decode())]},
            400,
            "not an image",
        ),
        ({"messages": [user("q", "IMG", "IMG", "IMG")]}, 400, "at most 2"),
        ({"messages": [user("word " * 300)]}, 400, "more than the model's 256"),
        ({"messages": [user("q", "https://example.com/x.png")]}, 400, "no remote images"),
        ({"n": 2}, 400, "n=2 is not supported"),
        ({"max_tokens": 65}, 400, r"max_tokens=65 must be in \[1, 64\]"),
        ({"temperature": "hot"}, 400, "temperature='hot' must be a number"),
        ({"top_p": 0}, 400, r"top_p=0 must be in \(0, 1\]"),
        ({"stream": "yes"}, 400, "stream='yes'"),
    ],
)
def test_bad_requests_get_json_errors(http, images, change, status, match):  # noqa: F811
    body = {"messages": [user("what color?")], "max_tokens": 2, **change}
    for msg in body["messages"]:
        for part in msg["content"]:
            if part.get("image_url", {}).get("url") == "IMG":
                part["image_url"]["url"] = data_url(images / "square.png")
    reply = http.post("/v1/chat/completions", json=body, headers=AUTH)
    assert reply.status_code == status
    error = reply.json()["error"]
    assert re.search(match, error["message"]), error
    assert error["type"] in ("invalid_request_error", "not_found_error")


def test_server_survives_bad_input_and_serves_concurrent_requests(http, server, served, images):  # noqa: F811
    garbage = http.post(
        "/v1/chat/completions", content=b"{not json", headers={**AUTH, "content-type": "x"}
    )
    assert garbage.status_code == 400 and "not JSON" in garbage.json()["error"]["message"]
    questions = ["what color?", "count the shapes", "describe it", "what shape?"]
    results = {}

    def ask(q):
        with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
            body = {"messages": [user(q)], "max_tokens": 4}
            results[q] = client.post("/v1/chat/completions", json=body, headers=AUTH)

    threads = [threading.Thread(target=ask, args=(q,)) for q in questions]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert sorted(results) == sorted(questions)
    for q, reply in results.items():
        assert reply.status_code == 200
        # greedy rows batched with others equal the row alone (ties aside: test_generate.py)
        want = expected(served, images, q, None, 4)[0]
        assert reply.json()["choices"][0]["message"]["content"] == want
    health = http.get("/health").json()
    assert health["status"] == "ok" and health["failed_batches"] == 0
    assert health["rows"] >= len(questions) and health["largest_batch"] <= 4


def test_gradio_api_streams_a_multi_turn_chat(server, served, images, tmp_path):  # noqa: F811
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    client = Client(server.url, verbose=False, download_files=str(tmp_path))
    try:
        message = {"text": "what color?", "files": [handle_file(str(images / "wide.png"))]}
        job = client.submit(message, 0.0, 1.0, 5, -1, api_name="/chat")
        updates = [out for _, out in zip(range(100), job)]
        chat, box = job.result(timeout=TIMEOUT)
        text = expected(served, images, "<image>\nwhat color?", "wide.png", 5)[0]
        assert chat[-1]["role"] == "assistant"
        assert chat[-1]["content"][0]["text"] == text.strip()
        assert len(updates) >= 3  # the question, streamed deltas, the final answer
        assert box is None or not box.get("text")
        # the second turn sees the first (the session's state): four messages
        chat, _ = client.predict(
            {"text": "and the shape?", "files": []}, 0.0, 1.0, 3, -1, api_name="/chat"
        )
        assert [m["role"] for m in chat] == ["user", "assistant"] * 2
        with pytest.raises(AppError, match="empty question"):
            client.predict({"text": " ", "files": []}, 0.0, 1.0, 3, -1, api_name="/chat")
        junk = tmp_path / "notes.png"
        junk.write_text("not an image")
        with pytest.raises(AppError, match="not an image"):
            message = {"text": "what?", "files": [handle_file(str(junk))]}
            client.predict(message, 0.0, 1.0, 3, -1, api_name="/chat")
        client.predict(api_name="/reset")
        chat, _ = client.predict({"text": "hi", "files": []}, 0.0, 1.0, 2, -1, api_name="/chat")
        assert len(chat) == 2  # a new conversation
    finally:
        client.close()


def test_generation_failures_are_500_json_and_the_server_goes_on(http, served, monkeypatch):  # noqa: F811
    model = served[0]
    real, calls = model.embed, {"n": 0}

    def flaky(batch):
        calls["n"] += 1
        if calls["n"] <= 2:
            raise RuntimeError("out of device memory")
        return real(batch)

    monkeypatch.setattr(model, "embed", flaky)
    body = {"messages": [user("what color?")], "max_tokens": 3}
    reply = http.post("/v1/chat/completions", json=body, headers=AUTH)
    assert reply.status_code == 500
    error = reply.json()["error"]
    assert error["type"] == "server_error" and "out of device memory" in error["message"]
    lines = sse(http, dict(body, stream=True))  # headers were sent: the error is an event
    assert "out of device memory" in json.loads(lines[-2])["error"]["message"]
    assert lines[-1] == "[DONE]"
    ok = http.post("/v1/chat/completions", json=body, headers=AUTH)
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] >= 1


def test_cli_errors_exit_2(tmp_path, capsys):
    from cambrian_train.serve.cli import main

    assert main(["--model", str(tmp_path / "nowhere"), "--no-ui"]) == 2
    assert "is not a directory" in capsys.readouterr().err
