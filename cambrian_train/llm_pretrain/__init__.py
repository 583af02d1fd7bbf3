"""Pre-training of the tiny Llama on text drills (the tiny asset ``llama_pt``): drills.py (the
text-only tasks), train.py (loop, recipe, held-out accuracy)."""
