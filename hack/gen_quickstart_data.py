#!/usr/bin/env python3
"""Generate the quickstart's data files (examples/quickstart/data/), deterministically.

A small made-up world (people, the cities they live in, their pets, jobs and favourite colours) is
described three ways:

- `corpus.jsonl` (task text): English-like sentences about the world, for pretraining from scratch;
  with a few duplicates, near-empty lines and e-mail addresses so the Dataset's cleaning rules
  (exact dedup, minLength filter, PII scrubbing) have something to remove.
- `instructions.jsonl` (task instruction, `prompt`/`completion`): questions about the world and
  small additions, with short, learnable answers.
- `preferences.jsonl` (task preference, `prompt`/`chosen`/`rejected`): the same questions, chosen =
  the correct concise answer; rejected = a refusal or a repetition loop, and a wrong answer, rambling
  or (less often) concise with one fact swapped, which only a model that knows the world can tell apart.

The output is committed; re-run after changing this file: `python hack/gen_quickstart_data.py`.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "examples" / "quickstart" / "data"

PEOPLE = [
    "Alice", "Bruno", "Chloe", "Daniel", "Elena", "Farid", "Greta", "Hugo", "Ines", "Jonas", "Kira", "Liam",
    "Maya", "Nils", "Olga", "Pablo", "Queenie", "Rafael", "Sofia", "Tomas", "Uma", "Victor", "Wendy", "Yusuf",
]
CITIES = ["Paris", "Berlin", "Lisbon", "Oslo", "Madrid", "Vienna", "Prague", "Dublin", "Athens", "Warsaw", "Rome",
          "Zurich"]
PETS = ["cat", "dog", "parrot", "rabbit", "turtle", "hamster", "goldfish", "horse"]
COLORS = ["red", "blue", "green", "yellow", "purple", "orange", "black", "white"]
JOBS = ["baker", "teacher", "pilot", "farmer", "doctor", "painter", "engineer", "sailor", "writer", "chef"]
FOODS = ["bread", "apples", "soup", "cheese", "rice", "fish", "cake", "pasta"]
WEATHER = ["sunny", "rainy", "windy", "cold", "warm", "foggy"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]

RAMBLE = [
    "Well, that is a hard question and I am not completely sure, but if I had to guess I would say",
    "Hmm, there are many things to consider here, and honestly it could be a few different answers, maybe",
    "I think, although I might be wrong and you should check somewhere else, that the answer is probably",
]

RAMBLE_SHARE = 0.6  # of the wrong answers; the rest are concise with one fact swapped
REFUSE = ["I do not know.", "Sorry, I cannot answer that question.", "That is hard to say.",
          "I am not sure, you should ask someone else."]


def world(rng: random.Random) -> dict[str, dict[str, str]]:
    """Fixed facts per person (the same seed always gives the same world)."""
    return {
        p: {
            "city": rng.choice(CITIES),
            "pet": rng.choice(PETS),
            "color": rng.choice(COLORS),
            "job": rng.choice(JOBS),
            "food": rng.choice(FOODS),
        }
        for p in PEOPLE
    }


def fact_sentences(name: str, f: dict[str, str]) -> list[str]:
    """Every way the corpus states a person's facts."""
    return [
        f"{name} lives in {f['city']}.",
        f"{name} has a {f['pet']}.",
        f"The favourite colour of {name} is {f['color']}.",
        f"{name} works as a {f['job']}.",
        f"{name} likes to eat {f['food']}.",
        f"In {f['city']}, {name} walks the {f['pet']} every morning.",
        f"{name} is a {f['job']} in {f['city']}.",
        f"The {f['pet']} of {name} sleeps on a {f['color']} blanket.",
    ]


def corpus(rng: random.Random, facts: dict[str, dict[str, str]], n: int) -> list[dict[str, str]]:
    """Text records: facts, little stories, arithmetic in words, plus some dirt for the cleaning rules."""
    lines: list[str] = []
    for name, f in facts.items():
        lines.extend(fact_sentences(name, f))
    while len(lines) < n:
        kind = rng.randrange(5)
        a, b = rng.sample(PEOPLE, 2)
        fa = facts[a]
        if kind == 0:
            lines.append(f"On {rng.choice(DAYS)} {a} visited {b} in {facts[b]['city']} and the weather was "
                         f"{rng.choice(WEATHER)}.")
        elif kind == 1:
            x, y = rng.randrange(10), rng.randrange(10)
            lines.append(f"{NUMBER_WORDS[x].capitalize()} plus {NUMBER_WORDS[y]} is {x + y}. {x} + {y} = {x + y}.")
        elif kind == 2:
            lines.append(f"{a} and {b} ate {rng.choice(FOODS)} together, and {a} talked about the {fa['pet']}.")
        elif kind == 3:
            lines.append(rng.choice(fact_sentences(a, fa)) + " " + rng.choice(fact_sentences(b, facts[b])))
        else:
            lines.append(f"The {rng.choice(COLORS)} {rng.choice(PETS)} of {a} is {rng.choice(WEATHER)} today.")
    rng.shuffle(lines)
    dirt = [
        f"Write to {p.lower()}@example.com to ask {p} about the {facts[p]['pet']}." for p in PEOPLE[:12]
    ] + ["ok", "yes.", "..."] * 5
    dupes = rng.sample(lines, 60)
    records = lines + dirt + dupes
    rng.shuffle(records)
    return [{"text": t} for t in records]


def qa(name: str, f: dict[str, str]) -> list[tuple[str, str]]:
    """Questions about one person with their short correct answers."""
    return [
        (f"Where does {name} live?", f"{name} lives in {f['city']}."),
        (f"What pet does {name} have?", f"{name} has a {f['pet']}."),
        (f"What is the favourite colour of {name}?", f"The favourite colour of {name} is {f['color']}."),
        (f"What does {name} do for work?", f"{name} works as a {f['job']}."),
        (f"What does {name} like to eat?", f"{name} likes to eat {f['food']}."),
    ]


def arithmetic() -> list[tuple[str, str]]:
    """Every one-digit addition, answered with the number."""
    return [(f"What is {x} plus {y}?", f"{x} plus {y} is {x + y}.") for x in range(10) for y in range(10)]


def wrong_answer(rng: random.Random, prompt: str, answer: str, ramble: float = 0.5) -> str:
    """A plausible but wrong answer (one fact swapped), wrapped in rambling with probability `ramble`."""
    words = answer.rstrip(".").split(" ")
    last = words[-1]
    pools = [CITIES, PETS, COLORS, JOBS, FOODS]
    pool = next((p for p in pools if last in p), None)
    if pool is not None:
        words[-1] = rng.choice([x for x in pool if x != last])
    elif last.isdigit():
        words[-1] = str(int(last) + rng.choice([-3, -2, -1, 1, 2, 3]))
    wrong = " ".join(words) + "."
    if rng.random() < ramble:
        return f"{rng.choice(RAMBLE)} {wrong[0].lower()}{wrong[1:]} But I am not sure about any of this."
    return wrong


def unhelpful_answer(rng: random.Random, prompt: str, answer: str) -> str:
    """A failure a small chat model shows: a refusal/hedge without an answer, or a repetition loop."""
    if rng.random() < 0.5:
        return rng.choice(REFUSE)
    words = answer.rstrip(".").split(" ")
    cut = rng.randrange(1, len(words))
    return " ".join(words[:cut] * 3) + "."


def main() -> None:
    """Write the three files."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--corpus-lines", type=int, default=3000)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    facts = world(rng)
    args.out.mkdir(parents=True, exist_ok=True)

    pairs = [p for name, f in facts.items() for p in qa(name, f)] + arithmetic()
    instructions = [{"prompt": q, "completion": " " + a} for q, a in pairs]
    rng.shuffle(instructions)
    preferences = []
    for q, a in pairs:  # two dispreferred answers per question
        rejected = [unhelpful_answer(rng, q, a), wrong_answer(rng, q, a, ramble=RAMBLE_SHARE)]
        preferences += [{"prompt": q, "chosen": " " + a, "rejected": " " + r} for r in rejected]
    rng.shuffle(preferences)

    files = {
        "corpus.jsonl": corpus(rng, facts, args.corpus_lines),
        "instructions.jsonl": instructions,
        "preferences.jsonl": preferences,
    }
    for name, records in files.items():
        path = args.out / name
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        print(f"{path}: {len(records)} records")


if __name__ == "__main__":
    main()
