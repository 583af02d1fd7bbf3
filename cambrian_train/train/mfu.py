"""Model FLOPs utilisation: achieved FLOP/s per device against the chip's dense bf16 peak.

The FLOPs come from train/flops.py; the peak from ``backend.peak_tflops`` or, by the device's
kind, from :data:`PEAK_TFLOPS`.
"""

from __future__ import annotations

import math
import re
from typing import Dict

# Peak dense (not sparse) bf16 TFLOP/s per chip.
PEAK_TFLOPS: Dict[str, float] = {
    # cloud.google.com/tpu/docs/v4: "Peak compute per chip (bf16) 275 TFLOPs"
    "tpu-v4": 275.0,
    # cloud.google.com/tpu/docs/v5e: "Peak compute per chip (bf16) 197 TFLOPs"
    "tpu-v5e": 197.0,
    # cloud.google.com/tpu/docs/v5p: "Peak compute per chip (bf16) 459 TFLOPs"
    "tpu-v5p": 459.0,
    # cloud.google.com/tpu/docs/v6e: "Peak compute per chip (bf16) 918 TFLOPs"
    "tpu-v6e": 918.0,
    # nvidia.com/en-us/data-center/h100 (datasheet): BF16 Tensor Core 1,979 TFLOPS for H100 SXM
    # "with sparsity"; dense is half, 989.5 (PCIe and NVL parts are slower: not this entry)
    "h100-sxm": 989.0,
    # nvidia.com/en-us/data-center/h200 (datasheet): BF16 Tensor Core 1,979 TFLOPS "with
    # sparsity"; dense 989.5, the same Hopper SXM compute as H100 SXM
    "h200": 989.0,
    # nvidia.com/en-us/data-center/a100 (datasheet): BF16 Tensor Core 312 TFLOPS dense
    # (624 with sparsity), SXM and PCIe alike
    "a100": 312.0,
}

# device names as torch_xla / torch.cuda report them (normalised: lower case, runs of
# non-alphanumerics → one space) → table key
_ALIASES = {
    "tpu v4": "tpu-v4",
    "tpu v5 lite": "tpu-v5e",  # torch_xla's device_kind of v5e
    "tpu v5e": "tpu-v5e",
    "tpu v5litepod": "tpu-v5e",
    "tpu v5": "tpu-v5p",  # torch_xla's device_kind of v5p
    "tpu v5p": "tpu-v5p",
    "tpu v6 lite": "tpu-v6e",  # torch_xla's device_kind of v6e (Trillium)
    "tpu v6e": "tpu-v6e",
    "h100": "h100-sxm",
    "h100 sxm": "h100-sxm",
}


def _normalise(kind: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", kind.lower()).strip()


def peak_tflops(device_kind: str) -> float:
    """Dense bf16 peak TFLOP/s of one chip named ``device_kind`` (a PEAK_TFLOPS key, or a
    device name as torch_xla or ``torch.cuda.get_device_name`` reports it, e.g. "TPU v5 lite",
    "NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB"). ValueError for anything else."""
    key = _normalise(device_kind)
    names = {_normalise(k): k for k in PEAK_TFLOPS}
    found = names.get(key) or _ALIASES.get(key)
    if found is None:
        words = key.removeprefix("nvidia ").split()
        if words and words[0] == "a100":
            found = "a100"
        elif words and words[0] == "h200":
            found = "h200"
        elif words and words[0] == "h100" and not {"pcie", "nvl"} & set(words):
            found = "h100-sxm"  # "NVIDIA H100 80GB HBM3" is the SXM part
    if found is None:
        raise ValueError(
            f"no peak TFLOP/s known for device kind {device_kind!r}; known: "
            f"{', '.join(f'{k} ({v:g})' for k, v in PEAK_TFLOPS.items())}; set "
            "backend.peak_tflops to this chip's dense bf16 peak"
        )
    return PEAK_TFLOPS[found]


def mfu(flops_per_step: float, step_seconds: float, num_devices: int, peak: float) -> float:
    """Model FLOPs utilisation: achieved FLOP/s per device over ``peak`` (TFLOP/s per device)."""
    for name, value in (("step_seconds", step_seconds), ("num_devices", num_devices)):
        if not value > 0:
            raise ValueError(f"{name}={value} must be positive")
    if not (peak > 0 and math.isfinite(peak)):
        raise ValueError(f"peak_tflops={peak} must be positive (and finite)")
    return flops_per_step / step_seconds / num_devices / (peak * 1e12)
