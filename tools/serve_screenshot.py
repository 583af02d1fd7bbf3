"""Drive the cambrian-serve page in headless Chromium and save a screenshot.

    python tools/serve_screenshot.py --model runs/demo/export \
        --image data/synthetic-0/images/00000.png --prompt "What color is the shape?" \
        --out docs/serve.png [--max-new-tokens N] [--name ID] [--chromium /usr/bin/chromium]

Starts the server in this process on a free 127.0.0.1 port, opens the page in Debian's chromium
(``apt-get install chromium``) through playwright (``executable_path``: playwright downloads no
browser), uploads the image, sends the prompt, records every text the answer bubble shows while
it streams (a MutationObserver in the page), saves the screenshot, then sends an empty prompt
and reads the error toast. It prints what it saw as JSON (every text the answer showed,
the final answer, the OpenAI endpoint's answer to the same prompt, the error message) and exits
0 only if the page's answer equals the endpoint's (greedy: they must) and the error showed. Used
by tests/unit/test_serve_browser.py.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cambrian_train.serve.cli import Server, build_app, parser  # noqa: E402

# every text the newest answer bubble takes, in order (the bubble: the last bot message row)
OBSERVE = """() => {
  window.__answers = [];
  const last = () => {
    const bots = document.querySelectorAll('[data-testid="bot"]');
    return bots.length ? bots[bots.length - 1].innerText.trim() : null;
  };
  new MutationObserver(() => {
    const text = last();
    const seen = window.__answers;
    if (text !== null && text !== seen[seen.length - 1]) seen.push(text);
  }).observe(document.body, {subtree: true, childList: true, characterData: true});
}"""


def find_chromium(given: str | None) -> str | None:
    for candidate in (given, shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and os.path.exists(candidate):
            return candidate
    return None


def endpoint_answer(url: str, image: Path, prompt: str, max_new_tokens: int) -> str:
    data = "data:image/png;base64," + base64.b64encode(image.read_bytes()).decode()
    content = [{"type": "image_url", "image_url": {"url": data}}, {"type": "text", "text": prompt}]
    body = {"messages": [{"role": "user", "content": content}], "max_tokens": max_new_tokens}
    reply = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)
    reply.raise_for_status()
    return reply.json()["choices"][0]["message"]["content"]


def drive_page(url, image: Path, prompt: str, out: Path, chromium: str, timeout_s=60.0) -> dict:
    """Load the page, upload ``image``, send ``prompt``; → what the page showed."""
    from playwright.sync_api import sync_playwright

    ms = timeout_s * 1000
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.goto(url, wait_until="load", timeout=ms)
            page.wait_for_selector("textarea", timeout=ms)
            title = page.title()
            with page.expect_response(lambda r: "/upload" in r.url, timeout=ms):
                page.locator('input[type="file"]').first.set_input_files(str(image))
            page.wait_for_timeout(300)  # the thumbnail renders after the upload returns
            page.evaluate(OBSERVE)
            box = page.locator("textarea").first
            box.fill(prompt)
            box.press("Enter")
            # done: the textbox is interactive again once the event has finished
            page.wait_for_function(
                "() => window.__answers.length > 0 && !document.querySelector('.generating')",
                timeout=ms,
            )
            deadline = time.monotonic() + timeout_s
            answers = page.evaluate("window.__answers")
            while time.monotonic() < deadline:  # until the bubble stops changing
                page.wait_for_timeout(250)
                now = page.evaluate("window.__answers")
                if now == answers:
                    break
                answers = now
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out), full_page=True)
            # bad input: an empty question shows an error toast, the page keeps working
            box.fill("   ")
            box.press("Enter")
            toast = page.locator('[data-testid="toast-body"]').first
            toast.wait_for(timeout=ms)
            error = toast.inner_text()
        finally:
            browser.close()
    return {"title": title, "answers": answers, "error": error}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="export directory or run checkpoint")
    p.add_argument("--image", required=True, type=Path)
    p.add_argument("--prompt", default="What color is the shape?")
    p.add_argument("--out", default="docs/serve.png", type=Path)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--name", default="cambrian-demo", help="model id shown on the page")
    p.add_argument("--chromium", default=None, help="browser binary (default: chromium on PATH)")
    args = p.parse_args(argv)
    chromium = find_chromium(args.chromium)
    if chromium is None:
        print("no chromium: apt-get install -y chromium", file=sys.stderr)
        return 2
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from cambrian_train.infer.load import load_pretrained

    model, _, encoder = load_pretrained(args.model, "cpu")
    serve_args = parser().parse_args(
        ["--model", args.model, "--port", "0", "--max-new-tokens", str(args.max_new_tokens)]
        + ["--name", args.name]
    )
    app, engine = build_app(model, encoder, args.model, serve_args)
    with Server(app, engine) as server:
        seen = drive_page(server.url, args.image, args.prompt, args.out, chromium)
        seen["endpoint"] = endpoint_answer(server.url, args.image, args.prompt, args.max_new_tokens)
    final = seen["answers"][-1] if seen["answers"] else None
    seen.update(
        final=final,
        streamed_steps=len(seen["answers"]),
        matches_endpoint=final == seen["endpoint"].strip(),
        screenshot=str(args.out),
    )
    print(json.dumps(seen, indent=2))
    ok = seen["matches_endpoint"] and "empty question" in seen["error"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
