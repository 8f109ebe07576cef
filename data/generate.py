#!/usr/bin/env python3
"""Generate the embedded default datasets of `landscape` (deterministic; output is committed).

A small generated world that a ~1M-parameter model can learn in minutes on a CPU:

- ``pretrain.jsonl``      general corpus ({"text"}) for pretraining the demo base model: facts about
                          144 made-up entities (colour, home), small-number addition, and one-sentence
                          reading stories whose answer is copied from the context.
- ``eval.jsonl``          held-out general text ({"text"}) in the same distribution: the default
                          evaluation data for flatness measurements.
- ``suites/*.jsonl``      "general ability" suites for forgetting, multiple-choice items
                          {"context", "choices", "answer"} (answer = index into choices), grouped by
                          ``suites/categories.json`` into knowledge / reasoning / understanding.
- ``tasks/<task>/{train,eval}.jsonl``  fine-tuning tasks in instruction format ({"prompt",
                          "completion"}) from a different distribution: word reversal, translation
                          into a made-up language, counting. Fine-tuning on them makes the base forget.

Run: ``python data/generate.py`` (rewrites the files next to this script; same bytes every time).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 20241124

COLORS = ["red", "blue", "green", "yellow", "black", "white", "orange", "purple"]
PLACES = ["forest", "desert", "city", "river", "mountain", "village", "island", "valley"]
OBJECTS = ["box", "cup", "hat", "ball", "coat", "lamp", "book", "shoe"]
TASK_WORDS = ["apple", "bread", "chair", "door", "egg", "fish", "grape", "horse", "ink", "jar",
              "kite", "leaf", "moon", "nest", "owl", "pear", "queen", "rock", "sun", "tree"]
MADE_UP = ["zal", "mip", "tor", "vek", "sul", "nir", "pax", "dru", "lom", "fiz",
           "qua", "ryb", "gol", "wen", "hux", "kib", "jor", "yem", "bof", "tav"]
SYLLABLES_A = ["ba", "ko", "ti", "lu", "ma", "re", "so", "di", "ne", "pa", "gu", "fe"]
SYLLABLES_B = ["ro", "na", "vi", "ka", "lo", "mu", "te", "zi", "po", "xa", "de", "ni"]


def entities(rng: random.Random, n: int = 144) -> list[str]:
    names = sorted({a + b for a in SYLLABLES_A for b in SYLLABLES_B})
    rng.shuffle(names)
    return sorted(names[:n])


def fact_sentences(world):
    for e, (color, place) in world.items():
        yield f"the color of {e} is {color} ."
        yield f"{e} lives in the {place} ."


def arithmetic_sentences():
    for a in range(10):
        for b in range(10):
            yield f"{a} plus {b} is {a + b} ."


def story(rng: random.Random):
    """A one-sentence story and the question about it (the answer is copied from the context)."""
    obj, color = rng.choice(OBJECTS), rng.choice(COLORS)
    context = f"story : the {obj} is {color} . question : what color is the {obj} ? answer :"
    return context, color, [color]


def write_jsonl(path: Path, rows) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = list(rows)
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, sort_keys=True) + "\n")
    return len(rows)


def mc_item(context: str, answer: str, distractors: list[str], rng: random.Random) -> dict:
    choices = [answer] + [d for d in distractors if d != answer]
    rng.shuffle(choices)
    return {"context": context, "choices": choices, "answer": choices.index(answer)}


def main() -> None:
    rng = random.Random(SEED)
    names = entities(rng)
    world = {e: (rng.choice(COLORS), rng.choice(PLACES)) for e in names}

    # --- general corpus: every fact and sum several times, plus fresh stories -----------------
    general = list(fact_sentences(world)) * 6 + list(arithmetic_sentences()) * 4
    general += [f"{c} {a} ." for c, a, _ in (story(rng) for _ in range(2000))]
    rng.shuffle(general)
    counts = {"pretrain.jsonl": write_jsonl(HERE / "pretrain.jsonl", ({"text": t} for t in general))}

    # --- held-out evaluation text: same distribution, new stories --------------------------------
    ev = rng.sample(list(fact_sentences(world)), 96) + rng.sample(list(arithmetic_sentences()), 32)
    ev += [f"{c} {a} ." for c, a, _ in (story(rng) for _ in range(64))]
    rng.shuffle(ev)
    counts["eval.jsonl"] = write_jsonl(HERE / "eval.jsonl", ({"text": t} for t in ev))

    # --- forgetting suites (multiple choice) ----------------------------------------------------
    suites = {
        "facts_color": [mc_item(f"the color of {e} is", c, COLORS, rng) for e, (c, _) in world.items()],
        "facts_place": [mc_item(f"{e} lives in the", p, PLACES, rng) for e, (_, p) in world.items()],
        "arithmetic": [
            mc_item(f"{a} plus {b} is", str(a + b),
                    [str(x) for x in rng.sample([s for s in range(19) if s != a + b], 3)], rng)
            for a in range(10) for b in range(10)
        ],
        "reading": [],
    }
    for _ in range(120):
        c, a, cols = story(rng)
        others = rng.sample([x for x in COLORS if x not in cols], 3)
        suites["reading"].append(mc_item(c, a, cols + others, rng))
    for name, items in suites.items():
        counts[f"suites/{name}.jsonl"] = write_jsonl(HERE / "suites" / f"{name}.jsonl", items)
    categories = {"knowledge": ["facts_color", "facts_place"], "reasoning": ["arithmetic"],
                  "understanding": ["reading"]}
    (HERE / "suites" / "categories.json").write_text(json.dumps(categories, indent=2, sort_keys=True) + "\n")

    # --- fine-tuning tasks: instruction format, a different distribution -----------------------
    lexicon = dict(zip(TASK_WORDS + COLORS, MADE_UP + MADE_UP[:len(COLORS)][::-1]))

    def reverse():
        ws = rng.sample(TASK_WORDS + COLORS, rng.randint(3, 5))
        return {"prompt": f"task : reverse input : {' '.join(ws)} output :", "completion": " ".join(ws[::-1])}

    def translate():
        ws = rng.sample(TASK_WORDS + COLORS, rng.randint(2, 4))
        return {"prompt": f"task : translate input : {' '.join(ws)} output :",
                "completion": " ".join(lexicon[w] for w in ws)}

    def count():
        w = rng.choice(TASK_WORDS + COLORS)
        n = rng.randint(1, 9)
        return {"prompt": f"task : count input : {' '.join([w] * n)} output :", "completion": str(n)}

    for task, make in (("reverse", reverse), ("translate", translate), ("count", count)):
        counts[f"tasks/{task}/train.jsonl"] = write_jsonl(HERE / "tasks" / task / "train.jsonl",
                                                          (make() for _ in range(1024)))
        counts[f"tasks/{task}/eval.jsonl"] = write_jsonl(HERE / "tasks" / task / "eval.jsonl",
                                                         (make() for _ in range(128)))
    for name, n in sorted(counts.items()):
        print(f"{n:6d}  {name}")


if __name__ == "__main__":
    main()
