"""Near-duplicate removal: recall and false drops of the prepare stage's MinHash/LSH rule, seeded.

A synthetic corpus of distinct "documents" (random words from a made-up vocabulary, so unrelated
documents share almost no 5-character shingles) plus variants of some of them with a few words
replaced, spanning exact shingle-Jaccard similarities from about 0.6 to 1.0 to their original, shuffled.
Ground truth is the exact greedy rule the stage implements: walking the records in order, a record is a
near-duplicate when its exact shingle Jaccard similarity to an earlier *kept* record reaches the
threshold. Reported for the current rule (`prepare._near_duplicates`) and for the previous one (LSH
tuned at the threshold, decided by the MinHash estimate):

- recall: share of true near-duplicates removed (overall and by similarity band);
- distinct dropped: records removed although no earlier record reaches the threshold (false drops);
- precision: removed records that are true near-duplicates / removed records.

    python bench/near_dedup.py [--docs 1500] [--variants 1500] [--threshold 0.85] [--seed 0] [--json-out f]

Exits 1 when the current rule misses its targets (recall >= 98 %, no distinct record dropped).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "trainer-image"))

from kubeforge_trainer import prepare  # noqa: E402


def make_corpus(n_docs: int, n_variants: int, seed: int, ngram: int) -> list[dict[str, Any]]:
    """Records {text, family, sim}: originals (sim None) and variants with their exact Jaccard to the original."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = sorted({"".join(rng.choice(letters) for _ in range(rng.randint(3, 9))) for _ in range(5000)})
    docs = [[rng.choice(vocab) for _ in range(rng.randint(40, 90))] for _ in range(n_docs)]
    records: list[dict[str, Any]] = [{"text": " ".join(d), "family": i, "sim": None} for i, d in enumerate(docs)]
    for _ in range(n_variants):
        fam = rng.randrange(n_docs)
        words = list(docs[fam])
        # replace 0-12 % of the words: similarities from ~0.6 up to 1 around the 0.85 threshold
        for _ in range(rng.randint(0, max(1, len(words) * 12 // 100))):
            words[rng.randrange(len(words))] = rng.choice(vocab)
        text = " ".join(words)
        sim = prepare.jaccard(prepare.shingles(text, ngram), prepare.shingles(records[fam]["text"], ngram))
        records.append({"text": text, "family": fam, "sim": sim})
    rng.shuffle(records)
    return records


def truth(records: list[dict[str, Any]], threshold: float, ngram: int) -> tuple[list[bool], list[bool], float]:
    """(is_duplicate per the exact greedy rule, has any earlier record >= threshold, max cross-family sim).

    Exact within a family (variants of one document); across families every pair an LSH at 0.3 proposes
    is checked exactly, and the largest such similarity is returned to show families are unrelated.
    """
    from datasketch import MinHash, MinHashLSH

    sets = [prepare.shingles(r["text"], ngram) for r in records]
    kept_by_family: dict[int, list[int]] = defaultdict(list)
    seen_by_family: dict[int, list[int]] = defaultdict(list)
    dup, near_any = [], []
    for i, r in enumerate(records):
        fam = r["family"]
        is_dup = any(prepare.jaccard(sets[j], sets[i]) >= threshold for j in kept_by_family[fam])
        near_any.append(is_dup or any(prepare.jaccard(sets[j], sets[i]) >= threshold for j in seen_by_family[fam]))
        dup.append(is_dup)
        seen_by_family[fam].append(i)
        if not is_dup:
            kept_by_family[fam].append(i)
    lsh = MinHashLSH(threshold=0.3, num_perm=64)
    cross = 0.0
    for i, sh in enumerate(sets):
        m = MinHash(num_perm=64, seed=7)
        m.update_batch([s.encode() for s in sorted(sh)])
        for k in lsh.query(m):
            j = int(k)
            if records[j]["family"] != records[i]["family"]:
                cross = max(cross, prepare.jaccard(sets[i], sets[j]))
        lsh.insert(str(i), m)
    return dup, near_any, cross


def old_rule(pipe: prepare.Pipeline, threshold: float, num_perm: int, ngram: int) -> None:
    """The rule before this change: LSH tuned at the threshold, decided by the MinHash estimate."""
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    kept, hashes = [], {}
    for i, r in enumerate(pipe.records):
        m = MinHash(num_perm=num_perm, seed=1)
        m.update_batch([s.encode("utf-8") for s in sorted(prepare.shingles(prepare.content(r), ngram))])
        if any(hashes[k].jaccard(m) >= threshold for k in lsh.query(m)):
            continue
        lsh.insert(str(i), m)
        hashes[str(i)] = m
        kept.append(r)
    pipe.records = kept


def score(
    name: str, rule: Any, records: list[dict[str, Any]], dup: list[bool], near_any: list[bool], args: Any
) -> dict[str, Any]:
    """Run one rule and compare its removals to the truth."""
    pipe = prepare.Pipeline([{"text": r["text"]} for r in records])
    ids = {id(rec): i for i, rec in enumerate(pipe.records)}  # the rules keep the record objects themselves
    t0 = time.perf_counter()
    rule(pipe, args.threshold, args.num_perm, args.ngram)
    seconds = time.perf_counter() - t0
    kept = {ids[id(rec)] for rec in pipe.records}
    removed = [i for i in range(len(records)) if i not in kept]
    true_dups = [i for i, d in enumerate(dup) if d]
    caught = [i for i in true_dups if i not in kept]
    false_drops = [i for i in removed if not near_any[i]]
    bands = {}
    t = args.threshold
    for lo, hi in ((t, t + 0.05), (t + 0.05, t + 0.10), (t + 0.10, 1.0001)):
        members = [i for i in true_dups if records[i]["sim"] is not None and lo <= records[i]["sim"] < hi]
        if members:
            bands[f"{lo:.2f}-{min(hi, 1.0):.2f}"] = round(sum(i not in kept for i in members) / len(members), 4)
    return {
        "rule": name,
        "records": len(records),
        "true_near_duplicates": len(true_dups),
        "removed": len(removed),
        "recall": round(len(caught) / len(true_dups), 4) if true_dups else 1.0,
        "recall_by_similarity": bands,
        "distinct_dropped": len(false_drops),
        "precision": round(1 - len(false_drops) / len(removed), 4) if removed else 1.0,
        "seconds": round(seconds, 2),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=1500)
    ap.add_argument("--variants", type=int, default=1500)
    ap.add_argument("--threshold", type=float, default=0.85)
    ap.add_argument("--num-perm", type=int, default=128)
    ap.add_argument("--ngram", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json-out", type=Path)
    args = ap.parse_args()

    records = make_corpus(args.docs, args.variants, args.seed, args.ngram)
    dup, near_any, cross = truth(records, args.threshold, args.ngram)
    sims = [r["sim"] for r in records if r["sim"] is not None]
    print(
        f"{len(records)} records: {args.docs} documents, {args.variants} variants "
        f"({sum(s >= args.threshold for s in sims)} at Jaccard >= {args.threshold}, "
        f"{sum(args.threshold - 0.15 <= s < args.threshold for s in sims)} in the "
        f"{args.threshold - 0.15:.2f}-{args.threshold:.2f} band just below); largest cross-document "
        f"similarity {cross:.3f}; bands,rows = {prepare.lsh_params(args.threshold, args.num_perm)}"
    )
    results = [
        score("current", prepare._near_duplicates, records, dup, near_any, args),
        score("previous", old_rule, records, dup, near_any, args),
    ]
    print(f"{'rule':10} {'true dups':>9} {'removed':>8} {'recall':>7} {'precision':>9} {'distinct dropped':>16} "
          f"{'seconds':>8}  recall by similarity")
    for r in results:
        print(
            f"{r['rule']:10} {r['true_near_duplicates']:>9} {r['removed']:>8} {r['recall']:>7.2%} "
            f"{r['precision']:>9.2%} {r['distinct_dropped']:>16} {r['seconds']:>8}  {r['recall_by_similarity']}"
        )
    body = {"threshold": args.threshold, "numPerm": args.num_perm, "ngram": args.ngram, "seed": args.seed,
            "results": results}
    print(json.dumps(body))
    if args.json_out:
        args.json_out.write_text(json.dumps(body, indent=2) + "\n")
    current = results[0]
    ok = current["recall"] >= 0.98 and current["distinct_dropped"] == 0
    if not ok:
        print("FAIL: the current rule must remove >= 98 % of true near-duplicates and drop no distinct record")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
