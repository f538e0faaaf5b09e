#!/usr/bin/env python3
"""Generate the quickstart's data files (examples/quickstart/data/), deterministically.

A small made-up world (people, the cities they live in, their pets, jobs and favourite colours) is
described four ways:

- `corpus.jsonl` (task text): English-like sentences about the world, for pretraining from scratch,
  a third of them reading exercises (a passage, a question, the short answer: without them the tiny
  model answers about a third of the questions right after SFT, with them about 80 %); with a few
  duplicates, near-empty lines and e-mail addresses so the Dataset's cleaning rules (exact dedup,
  minLength filter, PII scrubbing) have something to remove.
- `instructions.jsonl` (task instruction, `prompt`/`completion`): demonstrations for SFT. Each prompt
  is a three-sentence passage (the answer, another fact about the same person, the same subject for
  another person) and a question; 60 % of the answers are concise (`Paris.`), 40 % hedge at length
  before giving the right fact, as human demonstrations do (SFT imitates both; RLHF removes the hedging).
- `questions.jsonl` (task instruction): the same questions on other passages with concise answers:
  the RLHF prompts (train), its held-out reward (validation) and the Evaluation (test), where
  `contains` checks the key fact.
- `preferences.jsonl` (task preference, `prompt`/`chosen`/`rejected`): chosen = the concise right
  answer; rejected = the right answer hedged, a wrong fact (mostly rambling), a refusal or a repetition
  loop, and for half the passages the passage's fact about the other person.

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

RAMBLE = [
    "Well, that is a hard question and I am not completely sure, but if I had to guess I would say",
    "Hmm, there are many things to consider here, and honestly it could be a few different answers, maybe",
    "I think, although I might be wrong and you should check somewhere else, that the answer is probably",
]

DEMONSTRATIONS = 8  # passages (distractors and order) per question in the SFT demonstrations: varied, so
# that SFT learns to read the passage rather than memorise answers
CONTEXTS = 3  # other passages per question in questions.jsonl
PREFERENCE_PASSAGES = 2  # of the demonstrations' passages per question, also made into preference pairs
HEDGE_SHARE = 0.4  # of the demonstrations: the right answer after a long hedge
RAMBLE_SHARE = 0.9  # of the wrong answers; the rest are concise with one fact swapped
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
    """Text records: facts, little stories, reading exercises, plus some dirt for the cleaning rules."""
    lines: list[str] = []
    for name, f in facts.items():
        lines.extend(fact_sentences(name, f))
    while len(lines) < n:
        kind = rng.randrange(6)
        a, b = rng.sample(PEOPLE, 2)
        fa = facts[a]
        if kind in (1, 5):  # a reading exercise, as text on the web has: passage, question, answer
            q, sentence = rng.choice(qa(a, fa))
            passage, _ = with_context(rng, facts, a, q, sentence)
            lines.append(f"{passage} {short(sentence)}")
        elif kind == 0:
            lines.append(f"On {rng.choice(DAYS)} {a} visited {b} in {facts[b]['city']} and the weather was "
                         f"{rng.choice(WEATHER)}.")
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


def with_context(rng: random.Random, facts: dict[str, dict[str, str]], name: str, question: str,
                 answer: str) -> tuple[str, str]:
    """The question after a short passage: its answer, a fact about the same person and one about another
    person on the same subject, in random order, so only reading the name and the subject finds the answer.
    Returns the prompt and the other person's sentence (a fluent wrong answer)."""
    subject = next(i for i, (q, _) in enumerate(qa(name, facts[name])) if q == question)
    same_person = rng.choice([a for i, (_, a) in enumerate(qa(name, facts[name])) if i != subject])
    other = rng.choice([p for p in facts if short(qa(p, facts[p])[subject][1]) != short(answer)])
    same_subject = qa(other, facts[other])[subject][1]
    passage = [answer, same_person, same_subject]
    rng.shuffle(passage)
    return " ".join(passage) + " " + question, same_subject


def short(sentence: str) -> str:
    """The key fact of a fact sentence as a short answer: `Paris.`, `A horse.`, `An engineer.`"""
    value = sentence.rstrip(".").split(" ")[-1]
    if value in PETS or value in JOBS:
        return ("An " if value[0] in "aeiou" else "A ") + value + "."
    return value[0].upper() + value[1:] + "."


def wrong_answer(rng: random.Random, answer: str, ramble: float = 0.5) -> str:
    """A plausible but wrong answer (one fact swapped), wrapped in rambling with probability `ramble`."""
    words = answer.rstrip(".").split(" ")
    last = words[-1]
    pools = [CITIES, PETS, COLORS, JOBS, FOODS]
    pool = next(([x.lower() for x in p] for p in pools if last.lower() in (x.lower() for x in p)), None)
    if pool is not None:
        swapped = rng.choice([x for x in pool if x != last.lower()])
        words[-1] = swapped.capitalize() if last[0].isupper() else swapped
        if len(words) == 2 and words[0] in ("A", "An"):
            words[0] = "An" if swapped[0] in "aeiou" else "A"
    wrong = " ".join(words) + "."
    if rng.random() < ramble:
        return f"{rng.choice(RAMBLE)} {wrong[0].lower()}{wrong[1:]} But I am not sure about any of this."
    return wrong


HEDGE = "I am not completely sure, and you should check somewhere else, but I think it is"


def hedged(answer: str) -> str:
    """The right answer after one long hedge: past a 16-token answer budget before it says the fact."""
    return f"{HEDGE} {answer[0].lower()}{answer[1:]}"


def unhelpful_answer(rng: random.Random, answer: str) -> str:
    """A failure a small chat model shows: a refusal/hedge without an answer, or a repetition loop."""
    if rng.random() < 0.5:
        return rng.choice(REFUSE)
    words = answer.rstrip(".").split(" ")
    if len(words) < 2:
        return rng.choice(REFUSE)
    cut = rng.randrange(1, len(words))
    return " ".join(words[:cut] * 3) + "."


def main() -> None:
    """Write the four files."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--corpus-lines", type=int, default=3000)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    facts = world(rng)
    args.out.mkdir(parents=True, exist_ok=True)

    instructions, questions, preferences = [], [], []
    for name, f in facts.items():
        for q, a in qa(name, f):
            for variant in range(DEMONSTRATIONS + CONTEXTS):
                prompt, other_person = with_context(rng, facts, name, q, a)
                answer = short(a)
                if variant >= DEMONSTRATIONS:  # other passages, answered concisely: RL prompts and evaluation
                    questions.append({"prompt": prompt, "completion": " " + answer})
                    continue
                # Demonstrations: some get to the point, others hedge at length before the right answer.
                shown = hedged(answer) if rng.random() < HEDGE_SHARE else answer
                instructions.append({"prompt": prompt, "completion": " " + shown})
                if variant >= PREFERENCE_PASSAGES:
                    continue
                # Dispreferred answers: a right but hedging one; a wrong fact (mostly rambling); a refusal
                # or a loop; on one passage per question the passage's fact on the same subject about another
                # person. The 2-layer reward model ranks these last two kinds of pairs at chance (it cannot
                # yet read), so they are few; the verifiable reward checks the answer during RL.
                rejected = [hedged(answer), wrong_answer(rng, answer, ramble=RAMBLE_SHARE),
                            unhelpful_answer(rng, answer)]
                if variant == 0:
                    rejected.append(short(other_person))
                preferences += [{"prompt": prompt, "chosen": " " + answer, "rejected": " " + r} for r in rejected]
    for records in (instructions, questions, preferences):
        rng.shuffle(records)

    files = {
        "corpus.jsonl": corpus(rng, facts, args.corpus_lines),
        "instructions.jsonl": instructions,
        "questions.jsonl": questions,
        "preferences.jsonl": preferences,
    }
    for name, records in files.items():
        path = args.out / name
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        print(f"{path}: {len(records)} records")


if __name__ == "__main__":
    main()
