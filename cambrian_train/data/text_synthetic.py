"""Small generated text data sets for the text fine-tuning presets (``data.text.synthetic``).

Deterministic from a seed, written once (under a file lock) at ``data.train_path`` when missing:

- instruction records ``{"id", "instruction", "context", "response"}`` plus ``template.json``
  beside them: questions about made-up people whose attributes (colour, city, food, pet) are
  fixed by the seed, so a held-out record asks about a fact training records also state — a
  model that learns them sees its validation loss fall far below the format's alone;
- a domain-adaptation corpus (``.txt``: one document a line) of sentences from a small grammar
  whose word choices follow per-subject habits.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

from cambrian_train.config.schema import TextSyntheticConfig
from cambrian_train.fileutil import file_lock, is_url, local_path, write_text_atomic

log = logging.getLogger(__name__)
TEMPLATE = {
    "prompt": "### Instruction:\n{instruction}\n\n### Input:\n{context}\n\n### Response:",
    "completion": " {response}",
}
SYLLABLES = ["ka", "lo", "mi", "ra", "to", "ne", "su", "vi", "do", "pe", "zu", "ha"]
ATTRIBUTES = {
    "colour": ["red", "blue", "green", "yellow", "purple", "orange"],
    "city": ["Paris", "Lima", "Oslo", "Cairo", "Delhi", "Quito"],
    "food": ["rice", "bread", "soup", "pasta", "beans", "fish"],
    "pet": ["cat", "dog", "bird", "horse", "rabbit", "turtle"],
}
JOBS = ["farmer", "teacher", "doctor", "painter", "sailor", "baker"]
QUESTIONS = {
    "colour": "What is the favourite colour of {name}?",
    "city": "Which city does {name} live in?",
    "food": "What does {name} like to eat?",
    "pet": "Which pet does {name} have?",
}
ANSWERS = {
    "colour": "The favourite colour of {name} is {value}.",
    "city": "{name} lives in {value}.",
    "food": "{name} likes to eat {value}.",
    "pet": "{name} has a {value}.",
}
NOUNS = ["river", "forest", "market", "harbour", "village", "garden", "bridge", "tower"]
VERBS = ["walks to", "looks at", "paints", "visits", "cleans", "guards"]
ADJECTIVES = ["old", "quiet", "busy", "bright", "small", "wide"]


def _people(rng: random.Random, count: int) -> dict:
    people = {}
    while len(people) < count:
        name = "".join(rng.choice(SYLLABLES) for _ in range(3)).capitalize()
        if name not in people:
            people[name] = {k: rng.choice(v) for k, v in ATTRIBUTES.items()}
            people[name]["job"] = rng.choice(JOBS)
    return people


def instruction_records(cfg: TextSyntheticConfig) -> list:
    """``cfg.num_records`` instruction records about 40 made-up people."""
    rng = random.Random(cfg.seed)
    people = _people(rng, 40)
    names = sorted(people)
    records = []
    for i in range(cfg.num_records):
        name = rng.choice(names)
        attribute = rng.choice(sorted(ATTRIBUTES))
        facts = people[name]
        records.append(
            {
                "id": f"instruct-{i}",
                "instruction": QUESTIONS[attribute].format(name=name),
                "context": f"{name} is a {facts['job']}.",
                "response": ANSWERS[attribute].format(name=name, value=facts[attribute]),
            }
        )
    return records


def corpus_documents(cfg: TextSyntheticConfig) -> list:
    """``cfg.num_records`` documents of 3-6 sentences; each subject has habitual words."""
    rng = random.Random(cfg.seed)
    people = _people(rng, 12)
    habits = {
        name: (rng.sample(VERBS, 2), rng.sample(NOUNS, 3), rng.choice(ADJECTIVES))
        for name in sorted(people)
    }
    documents = []
    for _ in range(cfg.num_records):
        name = rng.choice(sorted(habits))
        verbs, nouns, adjective = habits[name]
        sentences = [
            f"{name} the {people[name]['job']} {rng.choice(verbs)} the {adjective} "
            f"{rng.choice(nouns)} in {people[name]['city']}."
            for _ in range(rng.randint(3, 6))
        ]
        documents.append(" ".join(sentences))
    return documents


def ensure_text_synthetic(train_path: str, cfg: TextSyntheticConfig, instruction: bool) -> None:
    """Write the generated set at ``train_path`` (and template.json beside it) if missing."""
    if is_url(train_path):
        raise ValueError(
            f"data.text.synthetic generates data.train_path={train_path} locally: use a local "
            "path, or set data.text.synthetic=null for your own data"
        )
    path = Path(local_path(train_path))
    template = path.with_name("template.json")
    if path.exists() and (template.exists() or not instruction):
        return
    with file_lock(path.with_name(f".{path.name}.lock")):
        if path.exists() and (template.exists() or not instruction):
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        if instruction:
            if path.suffix != ".jsonl":
                raise ValueError(f"generated instruction records go to a .jsonl file, not {path}")
            write_text_atomic(template, json.dumps(TEMPLATE, indent=2) + "\n")
            lines = [json.dumps(r) for r in instruction_records(cfg)]
        else:
            if path.suffix != ".txt":
                raise ValueError(f"a generated corpus goes to a .txt file, not {path}")
            lines = corpus_documents(cfg)
        write_text_atomic(path, "".join(line + "\n" for line in lines))
        log.info("generated %d text records at %s", len(lines), path)
