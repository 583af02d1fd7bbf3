"""``cambrian-serve``: a web demo and an OpenAI-compatible endpoint for an export or a checkpoint.

    cambrian-serve --model PATH [--host 127.0.0.1] [--port 7860] [--device D] [--name ID]
                   [--api-key KEY] [--allow-local-files] [--max-batch-size 8] [--no-ui] ...

One uvicorn server, one port: the OpenAI routes (serve/openai_api.py) on a FastAPI app with the
gradio page (serve/ui.py) mounted at ``/``, both feeding one generator worker
(serve/engine.py). Bound to 127.0.0.1 unless ``--host`` says otherwise; ``--api-key`` (or
``CAMBRIAN_SERVE_API_KEY``) guards the ``/v1`` routes. :class:`Server` runs the same app in a
thread on any port (0: a free one), for tests and tools.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

from cambrian_train.infer.chat import ChatOptions

API_KEY_ENV = "CAMBRIAN_SERVE_API_KEY"


def build_app(model, encoder, path: str, args: argparse.Namespace):
    """(FastAPI app with the routes and the page, engine) for a loaded model."""
    from fastapi import FastAPI

    from cambrian_train.serve.engine import Engine
    from cambrian_train.serve.info import describe, start_weights_digest
    from cambrian_train.serve.openai_api import ApiSettings, build_router

    defaults = ChatOptions(args.max_new_tokens, args.temperature, args.top_k, args.top_p)
    if args.max_new_tokens > args.max_new_tokens_limit:
        raise ValueError(
            f"--max-new-tokens {args.max_new_tokens} is above --max-new-tokens-limit "
            f"{args.max_new_tokens_limit}"
        )
    model_id = args.name or Path(str(path).rstrip("/")).name
    engine = Engine(
        model,
        encoder,
        args.device,
        max_batch_size=args.max_batch_size,
        max_queue=args.max_queue,
        batch_window_s=args.batch_window_ms / 1000,
    )
    info = describe(model, encoder, str(path), model_id)
    start_weights_digest(info, model)
    settings = ApiSettings(
        model_id=model_id,
        defaults=defaults,
        max_new_tokens_limit=args.max_new_tokens_limit,
        allow_local_files=args.allow_local_files,
        api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
        request_timeout_s=args.request_timeout,
    )
    app = FastAPI(title=f"cambrian-serve {model_id}", docs_url=None, redoc_url=None)
    app.include_router(build_router(engine, info, settings))

    @app.get("/health")
    def health():
        stats = engine.stats
        return {
            "status": "ok",
            "queued": engine.queued,
            "batches": stats.batches,
            "rows": stats.rows,
            "largest_batch": stats.largest_batch,
            "failed_batches": stats.failed_batches,
        }

    if not args.no_ui:
        import gradio as gr

        from cambrian_train.serve.ui import THEME, build_ui

        demo = build_ui(engine, info, defaults, args.max_new_tokens_limit, args.request_timeout)
        demo.queue(max_size=args.max_queue, default_concurrency_limit=args.max_batch_size)
        app = gr.mount_gradio_app(
            app, demo, path="/", theme=THEME, max_file_size=args.max_upload, footer_links=["api"]
        )
    return app, engine


class Server:
    """The app under uvicorn in a background thread, on ``host:port`` (port 0: a free one)."""

    def __init__(self, app, engine, host: str = "127.0.0.1", port: int = 0):
        import uvicorn

        self.engine = engine
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.create_server((host, port), family=family)
        self.host, self.port = self.socket.getsockname()[:2]
        config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=1)
        self.uvicorn = uvicorn.Server(config)
        self.thread: Optional[threading.Thread] = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 60.0) -> Server:
        self.engine.start()
        self.thread = threading.Thread(
            target=self.uvicorn.run, kwargs={"sockets": [self.socket]}, daemon=True
        )
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.uvicorn.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the server on {self.url} did not start within {timeout} s")
            time.sleep(0.05)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self.uvicorn.should_exit = True
        self.engine.stop(timeout)
        if self.thread is not None:
            self.thread.join(timeout)
        self.socket.close()

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cambrian-serve", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="export directory or run checkpoint")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0: all)")
    p.add_argument("--port", type=int, default=7860, help="port (0: a free one)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--name", help="model id of the API and the page (default: the path's name)")
    p.add_argument("--api-key", help=f"required as 'Authorization: Bearer' on /v1 ({API_KEY_ENV})")
    p.add_argument(
        "--allow-local-files", action="store_true", help="image_url may be a path on this machine"
    )
    p.add_argument("--max-batch-size", type=int, default=8, help="requests generated together")
    p.add_argument(
        "--batch-window-ms", type=float, default=0.0, help="wait this long to fill a batch"
    )
    p.add_argument("--max-queue", type=int, default=64, help="queued requests before 503")
    p.add_argument("--max-new-tokens", type=int, default=256, help="default answer length")
    p.add_argument("--max-new-tokens-limit", type=int, default=2048, help="largest one allowed")
    p.add_argument("--temperature", type=float, default=0.0, help="default; 0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0, help="default; 1 = off")
    p.add_argument("--top-k", type=int, default=0, help="default; 0 = off")
    p.add_argument("--request-timeout", type=float, default=600.0, help="seconds per answer")
    p.add_argument("--max-upload", default="32mb", help="largest file the page accepts")
    p.add_argument("--no-ui", action="store_true", help="serve the /v1 routes only")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; serves until interrupted. Returns the exit status (2: a user error)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parser().parse_args(argv)
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401

        if not args.no_ui:
            import gradio  # noqa: F401
    except ImportError as err:
        print(
            f'cambrian-serve: {err}; install the serve extra: pip install -e ".[serve]"',
            file=sys.stderr,
        )
        return 2
    try:
        from cambrian_train.infer.load import load_pretrained

        model, _, encoder = load_pretrained(args.model, args.device)
        app, engine = build_app(model, encoder, args.model, args)
        server = Server(app, engine, args.host, args.port)
    except (ValueError, OSError) as err:
        print(f"cambrian-serve: error: {err}", file=sys.stderr)
        return 2
    page = "the page at /, " if not args.no_ui else ""
    print(f"cambrian-serve: {args.model} on {server.url} ({page}the API at /v1)", file=sys.stderr)
    engine.start()
    try:
        server.uvicorn.run(sockets=[server.socket])  # until Ctrl-C / SIGTERM
    finally:
        engine.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
