"""Formulas for ``torch.utils.flop_counter.FlopCounterMode`` on what it misses here (CPU SDPA,
in-place ``addmm_``) or overcounts (grouped-convolution weight gradients), in train/flops.py's
convention, so the analytic counts can be checked against the counter (tests, bench tool)."""

from __future__ import annotations

import math


def counter_formulas() -> dict:
    """A ``custom_mapping`` for ``torch.utils.flop_counter.FlopCounterMode`` that counts what it
    misses in this code on CPU, with this module's convention.

    torch 2.9 registers formulas for the CUDA flash / memory-efficient / cuDNN SDPA kernels
    only: on CPU, ``F.scaled_dot_product_attention`` runs
    ``aten._scaled_dot_product_flash_attention_for_cpu`` (and its ``_backward``), which the
    counter skips (0 FLOPs). These formulas count it: forward ``QK^T`` and ``PV`` over the full
    score matrix (no causal halving, like torch's own), backward 2× (no score recomputation;
    torch's CUDA formulas count 2.5×). Query heads are used, so grouped-KV calls
    (``enable_gqa``) count as the matmuls they stand for. And the in-place ``aten.addmm_``
    (unregistered; the chunked loss accumulates the head's weight gradient with it) counts as
    ``addmm``. And ``aten.convolution_backward`` counts grouped convolutions right: torch's
    formula ignores ``groups`` in the weight gradient (a depthwise 7×7 over C channels counts
    C× too much); here each requested gradient costs what the forward convolution does.
    """
    import torch

    aten = torch.ops.aten

    def forward(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        rows = math.prod(query_shape[:-1])  # batch · heads · q_len
        return 2 * rows * key_shape[-2] * (query_shape[-1] + value_shape[-1])

    def backward(grad_out_shape, query_shape, key_shape, value_shape, *args, **kwargs) -> int:
        return 2 * forward(query_shape, key_shape, value_shape)

    def addmm_(self_shape, a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
        return 2 * a_shape[0] * a_shape[1] * b_shape[1]  # self += a [M, K] @ b [K, N]

    def conv_backward(grad_out_shape, x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
        transposed, output_mask = args[4], args[-1]
        # the forward's multiply-adds: every output (input, if transposed) position times
        # the weight's C_in/groups · k² (C_out/groups · k²) fan
        positions = math.prod(x_shape if transposed else grad_out_shape)
        return 2 * positions * math.prod(w_shape[1:]) * sum(map(bool, output_mask[:2]))

    return {
        aten._scaled_dot_product_flash_attention_for_cpu: forward,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: backward,
        aten.addmm_: addmm_,
        aten.convolution_backward: conv_backward,
    }
