#!/usr/bin/env python3
"""Generate examples/kinds/data/reviews.jsonl (product reviews with 1-5 stars), deterministically.

Each review mentions a product and one or two aspects with wording whose tone follows the star rating
(5 enthusiastic ... 1 angry; 3 mixed), with varied sentence shapes so a classifier has to read the
words rather than a template position. About one review in six is harder: it opens with the opposite
expectation ("I expected to hate this kettle, but ...") or praises one aspect while rating low, and a
few ratings are one star off the wording, as real reviews are. Used by examples/kinds/dataset-classification.yaml (stars
mapped to negative/positive, 3 dropped) and examples/kinds/dataset-regression.yaml (stars as value).

The output is committed; re-run after changing this file: `python hack/gen_review_data.py`.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "examples" / "kinds" / "data" / "reviews.jsonl"

PRODUCTS = [
    "headphones", "coffee maker", "backpack", "desk lamp", "keyboard", "blender", "running shoes", "phone case",
    "office chair", "water bottle", "toaster", "smart watch", "tent", "vacuum cleaner", "kettle", "monitor",
    "rain jacket", "charger", "yoga mat", "frying pan",
]
ASPECTS = ["build quality", "battery life", "price", "design", "delivery", "sound", "comfort", "instructions",
           "material", "customer service", "size", "weight"]
TONE: dict[int, list[str]] = {
    5: ["absolutely love", "could not be happier with", "am thrilled with", "highly recommend", "adore"],
    4: ["really like", "am pleased with", "would recommend", "enjoy using", "am happy with"],
    3: ["have mixed feelings about", "am on the fence about", "feel so-so about", "neither love nor hate"],
    2: ["am disappointed with", "regret buying", "do not really like", "am unhappy with", "expected more from"],
    1: ["hate", "want a refund for", "am furious about", "cannot stand", "returned"],
}
ASPECT_WORDS: dict[int, list[str]] = {
    5: ["superb", "outstanding", "flawless", "fantastic", "excellent"],
    4: ["good", "solid", "nice", "pleasant", "reliable"],
    3: ["okay", "average", "acceptable", "nothing special", "fine"],
    2: ["poor", "weak", "flimsy", "mediocre", "annoying"],
    1: ["terrible", "awful", "broken", "useless", "horrible"],
}
ENDINGS: dict[int, list[str]] = {
    5: ["Best purchase this year!", "Five stars, no doubt.", "Worth every penny.", "Buy it, you will not regret it."],
    4: ["A good buy overall.", "Minor quibbles, but recommended.", "Does the job well.", "Pretty good value."],
    3: ["It is fine, I guess.", "Some good, some bad.", "Not sure I would buy it again.", "Average at best."],
    2: ["Not worth the money.", "I expected better.", "Would not recommend.", "Quite a letdown."],
    1: ["Total waste of money.", "Avoid at all costs.", "Worst purchase ever.", "Stay away from this one."],
}


def review(rng: random.Random, stars: int) -> str:
    product = rng.choice(PRODUCTS)
    a1, a2 = rng.sample(ASPECTS, 2)
    # mostly on-tone aspect words, sometimes one step off so reviews are not perfectly separable
    near = max(1, min(5, stars + rng.choice([-1, 0, 0, 0, 1])))
    w1, w2 = rng.choice(ASPECT_WORDS[stars]), rng.choice(ASPECT_WORDS[near])
    shapes = [
        f"I {rng.choice(TONE[stars])} this {product}. The {a1} is {w1} and the {a2} is {w2}. "
        f"{rng.choice(ENDINGS[stars])}",
        f"The {a1} of this {product} is {w1}. {rng.choice(ENDINGS[stars])}",
        f"{rng.choice(ENDINGS[stars])} I {rng.choice(TONE[stars])} the {product}; {a2}: {w2}.",
        f"Bought the {product} last month. {a1.capitalize()} {w1}, {a2} {w2}. "
        f"Honestly, I {rng.choice(TONE[stars])} it.",
    ]
    if rng.random() < 0.17:  # turn-around and mixed reviews: the first words point the wrong way
        flip = {5: 1, 4: 2, 3: 3, 2: 4, 1: 5}[stars]
        shapes = [
            f"I expected to {rng.choice(['hate', 'love'])} this {product}, but the {a1} is {w1}. "
            f"{rng.choice(ENDINGS[stars])}",
            f"The {a2} is {rng.choice(ASPECT_WORDS[flip])}, yet the {a1} is {w1}. Overall I "
            f"{rng.choice(TONE[stars])} this {product}.",
        ]
    return rng.choice(shapes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=600)
    ap.add_argument("--seed", type=int, default=11)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    lines = []
    while len(lines) < args.n:
        stars = rng.choice([1, 1, 2, 2, 3, 4, 4, 5, 5])  # fewer mixed reviews, like real shops
        text = review(rng, stars)
        if rng.random() < 0.04:  # the rating disagrees a little with the words
            stars = max(1, min(5, stars + rng.choice([-1, 1])))
        if text in seen:
            continue
        seen.add(text)
        lines.append(json.dumps({"review": text, "stars": stars}))
    OUT.write_text("\n".join(lines) + "\n")
    print(f"wrote {len(lines)} reviews to {OUT}")


if __name__ == "__main__":
    main()
