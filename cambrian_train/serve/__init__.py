"""``cambrian-serve``: the gradio web demo and the OpenAI-compatible endpoint (``pip install -e
".[serve]"``): prompts.py (requests → checked prompts), engine.py (the queued, batching generator
worker), openai_api.py (``/v1`` routes), ui.py (the page), info.py (the model panel), cli.py."""
