"""Parameter sharding from rule tables (backend-neutral: names and mesh-axis tuples only).

A rule is ``(pattern, spec)``: ``pattern`` a regular expression matched against full parameter
names, ``spec`` one mesh-axis name (or None, or a tuple of names) per tensor dimension. The first
matching rule wins. A rule that matches no parameter is an error (a typo or a model change would
otherwise silently replicate weights), and so is a parameter no rule matches.
"""

from __future__ import annotations

import re
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

Axis = Union[None, str, Tuple[str, ...]]
Rule = Tuple[str, Sequence[Axis]]

# FSDPv2-style: every matrix sharded along its first dimension over the fsdp axis, vectors
# (norms, biases, the image newline) replicated.
FSDP_RULES: List[Rule] = [
    (r".*\.(weight|pos_embed_\d+)$|.*vision_query$", ("fsdp", None)),
    (r".*", ()),
]


def _fits(spec: Sequence[Axis], ndim: int) -> bool:
    return len(spec) == 0 or len(spec) == ndim


def plan_sharding(
    params: Iterable[Tuple[str, object]], rules: Sequence[Rule]
) -> Dict[str, Tuple[Axis, ...]]:
    """Name → partition spec for every parameter (``()`` = replicated).

    A rule's spec applies to parameters of its rank; a parameter of another rank falls through
    to the next rule. ValueError for a rule that matches nothing or a parameter left unmatched.
    """
    compiled = [(re.compile(pattern), tuple(spec), pattern) for pattern, spec in rules]
    used = [False] * len(compiled)
    plan: Dict[str, Tuple[Axis, ...]] = {}
    for name, param in params:
        chosen: Optional[Tuple[Axis, ...]] = None
        for k, (regex, spec, _) in enumerate(compiled):
            if regex.fullmatch(name) and _fits(spec, param.ndim):
                chosen, used[k] = spec, True
                break
        if chosen is None:
            raise ValueError(f"no sharding rule matches parameter {name} (ndim {param.ndim})")
        plan[name] = chosen or (None,) * param.ndim
    unused = [pattern for (_, _, pattern), hit in zip(compiled, used) if not hit]
    if unused:
        raise ValueError(f"sharding rules that match no parameter: {unused}")
    return plan
