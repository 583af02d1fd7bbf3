"""Pre-training of the tiny vision towers on the synthetic scenes, with their families' objectives.

``python -m cambrian_train.vision_pretrain`` (``cambrian-pretrain-towers``) builds them; the
tiny assets ``clip_pt``, ``siglip_pt``, ``dinov2_pt`` and ``convnext_pt`` (cambrian_train/tiny.py)
build them on first use. Modules: contrastive.py (CLIP / SigLIP losses), dino.py (DINO / iBOT
losses and crops), language.py and selfsup.py (the per-family models), scenes.py (the data),
train.py (loop and recipes), probe.py (linear probes of frozen towers).
"""
