"""Pre-flight checks of the connector's own fields (sva, perceiver); called by
config/validate.py."""

from __future__ import annotations

import math

from cambrian_train.config.schema import TrainConfig


def is_square(n: int) -> bool:
    return n > 0 and math.isqrt(n) ** 2 == n


def check_connector(cfg: TrainConfig, errors: list[str]) -> None:
    name = cfg.model.connector.name
    if name == "sva":
        _check_sva(cfg, errors)
    elif name == "perceiver":
        _check_perceiver(cfg, errors)


def _check_attention(conn, errors: list[str]) -> None:
    """Width, heads and depth of an attention connector (sva, perceiver)."""
    if conn.vision_hidden_size < 1 or conn.num_heads < 1:
        errors.append(
            f"model.connector.vision_hidden_size={conn.vision_hidden_size} and "
            f"model.connector.num_heads={conn.num_heads} must be >= 1"
        )
    elif conn.vision_hidden_size % conn.num_heads:
        errors.append(
            f"model.connector.vision_hidden_size={conn.vision_hidden_size} is not divisible by "
            f"model.connector.num_heads={conn.num_heads}"
        )
    if conn.connector_depth < 1:
        errors.append(f"model.connector.connector_depth={conn.connector_depth} must be >= 1")


def _check_sva(cfg: TrainConfig, errors: list[str]) -> None:
    m = cfg.model
    conn = m.connector
    if conn.num_query_group != len(conn.query_num_list):
        errors.append(
            f"model.connector.num_query_group={conn.num_query_group} differs from "
            f"len(model.connector.query_num_list)={len(conn.query_num_list)}"
        )
    for q in conn.query_num_list:
        if not is_square(q):
            errors.append(f"model.connector.query_num_list entry {q} is not a perfect square")
            continue
        for name, tower in m.towers.items():
            if not is_square(tower.num_tokens):
                continue
            side, tower_side = math.isqrt(q), math.isqrt(tower.num_tokens)
            if tower_side % side:
                errors.append(
                    f"model.connector.query_num_list entry {q} (grid side {side}) does not "
                    f"divide model.towers.{name}.num_tokens={tower.num_tokens} "
                    f"(grid side {tower_side})"
                )
    _check_attention(conn, errors)
    choices = {
        "llm_context": ("connector", "llm_mean"),
        "empty_window": ("attend_all", "zero"),
        "padding_rule": ("original", "centre"),
    }
    for key, allowed in choices.items():
        if getattr(conn, key) not in allowed:
            errors.append(
                f"model.connector.{key}={getattr(conn, key)!r} is not one of {list(allowed)}"
            )
    ins = conn.insert
    if ins.count < 0 or ins.start < 0 or ins.stride < 1:
        errors.append(
            f"model.connector.insert={{start: {ins.start}, stride: {ins.stride}, count: "
            f"{ins.count}}} needs start >= 0, stride >= 1, count >= 0"
        )
    elif ins.count > 0:
        if is_square(m.image_token_len):
            side = math.isqrt(m.image_token_len)
            for name, tower in m.towers.items():
                if is_square(tower.num_tokens) and math.isqrt(tower.num_tokens) % side:
                    errors.append(
                        f"model.image_token_len={m.image_token_len} (grid side {side}) does not "
                        f"divide model.towers.{name}.num_tokens={tower.num_tokens}: the SVA "
                        "layers inside the LLM use the image_token_len grid as queries"
                    )
        last = ins.start + ins.stride * (ins.count - 1)
        if last >= m.llm.num_layers:
            errors.append(
                f"model.connector.insert places its last SVA layer after decoder layer {last} "
                f"(start={ins.start} + stride={ins.stride} * (count={ins.count} - 1)) but "
                f"model.llm.num_layers={m.llm.num_layers}"
            )


def _check_perceiver(cfg: TrainConfig, errors: list[str]) -> None:
    m = cfg.model
    conn = m.connector
    if not is_square(m.image_token_len):
        errors.append(
            f"model.image_token_len={m.image_token_len}: the perceiver connector outputs that many "
            "latents as a side x side grid of vision tokens, so it must be a perfect square"
        )
    _check_attention(conn, errors)
    if conn.perceiver_ff_mult < 1:
        errors.append(f"model.connector.perceiver_ff_mult={conn.perceiver_ff_mult} must be >= 1")
    if conn.perceiver_mask_padding and conn.padding_rule not in ("original", "centre"):
        errors.append(
            f"model.connector.padding_rule={conn.padding_rule!r} is not one of "
            "['original', 'centre']"
        )
    if conn.insert.count:
        errors.append(
            f"model.connector.insert.count={conn.insert.count} places SVA layers inside the LLM, "
            "which the perceiver connector does not have: set model.connector.insert.count=0"
        )
