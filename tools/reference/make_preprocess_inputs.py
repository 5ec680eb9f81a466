#!/usr/bin/env python3
"""Write the small corpora under fixtures/preprocess/inputs/ (deterministic:
Python's random.Random with fixed seeds, no other input). They exercise what a
re-implementation of fairseq 0.8's preprocess can get wrong: count ties,
non-ASCII symbols (ordering by code point), Python's whitespace set (NBSP,
ideographic space, \\x1c..\\x1f, thin space) as separators, \\r\\n and lone
\\r line ends in valid/test (Python's universal newlines), empty lines, a BOM, literal
<unk> and </s> tokens, and words missing from a given dictionary.

Usage: make_preprocess_inputs.py OUTDIR   (OUTDIR = fixtures/preprocess/inputs)
"""
import os
import random
import sys

SEPS = [" ", " ", " ", " ", "  ", "\t", "\u00a0", "\u3000", "\x1c", "\u2009", " \t "]


def words(prefix, n, extra):
    return ["%s%02d" % (prefix, i) for i in range(n)] + extra


SRC_A = words("s", 40, ["é", "école", "über", "Zebra", "zebra", "日本", "语言", "😀", "ﬁ", "x\u0301"])
TGT_A = words("t", 30, ["α", "β", "γ", "Ω", "ß", "ñ", "🚀", "東京"])


def sentence(rng, vocab, weights, lo, hi):
    n = rng.randint(lo, hi)
    return rng.choices(vocab, weights=weights, k=n)


def join(rng, toks):
    if not toks:
        return rng.choice(["", " ", "\t"])
    out = []
    if rng.random() < 0.1:
        out.append(rng.choice(SEPS))
    for i, t in enumerate(toks):
        if i:
            out.append(rng.choice(SEPS))
        out.append(t)
    if rng.random() < 0.1:
        out.append(rng.choice(SEPS))
    return "".join(out)


def make_pair(rng, n, src_vocab, tgt_vocab, specials=True, cr=True):
    sw = [1.0 / (i + 1) ** 0.9 for i in range(len(src_vocab))]
    tw = [1.0 / (i + 1) ** 0.7 for i in range(len(tgt_vocab))]
    src, tgt, ends = [], [], []
    for i in range(n):
        # An empty line on both sides, never last: a last line without a
        # terminator and without characters does not exist for Python, which
        # would leave the two sides with different line counts.
        if rng.random() < 0.03 and i < n - 1:
            s, t = [], []
        else:
            s = sentence(rng, src_vocab, sw, 1, 14)
            t = sentence(rng, tgt_vocab, tw, 1, 14)
        if specials and rng.random() < 0.02:
            s.insert(rng.randrange(len(s) + 1), rng.choice(["<unk>", "</s>"]))
        src.append(join(rng, s))
        tgt.append(join(rng, t))
        r = rng.random()
        # A lone \r ends a line in Python's text mode, so it is used on both
        # sides at once to keep the line counts equal.
        ends.append(("\r\n" if r < 0.1 else "\r") if cr and r < 0.13 else "\n")
    return src, tgt, ends


def write(path, lines, ends, bom=False, last_newline=True):
    with open(path, "w", encoding="utf-8", newline="") as f:
        if bom:
            f.write("\ufeff")
        for i, (l, e) in enumerate(zip(lines, ends)):
            if i == len(lines) - 1 and not last_newline:
                e = ""
            f.write(l + e)


def main():
    out = sys.argv[1]
    a = os.path.join(out, "a")
    b = os.path.join(out, "b")
    os.makedirs(a, exist_ok=True)
    os.makedirs(b, exist_ok=True)

    rng = random.Random(20240611)
    for split, n in [("train", 600), ("valid", 60), ("valid2", 40), ("test", 50)]:
        # No \r in train: fairseq 0.8 may stop counting a dictionary file
        # early when it holds one (its f.tell() check, see docs/preprocess.md);
        # valid/test are binarized by one worker, which has no such check.
        src, tgt, ends = make_pair(rng, n, SRC_A, TGT_A, cr=(split != "train"))
        write(os.path.join(a, split + ".src"), src, ends, bom=(split == "train"), last_newline=(split != "test"))
        write(os.path.join(a, split + ".tgt"), tgt, ends, last_newline=(split != "test"))

    # Corpus b: a source side with words that a given --srcdict lacks.
    rng = random.Random(99)
    src_b = words("s", 25, ["é", "日本"]) + words("oov", 12, [])
    tgt_b = words("t", 20, ["α"])
    for split, n in [("train", 300), ("valid", 40), ("test", 40)]:
        src, tgt, ends = make_pair(rng, n, src_b, tgt_b, specials=(split == "train"), cr=False)
        write(os.path.join(b, split + ".src"), src, ends)
        write(os.path.join(b, split + ".tgt"), tgt, ends)
    # The reused source dictionary: fairseq's format, split at the last space,
    # counts read with int() (so "+7" and " 12" are fine), file order = ids.
    lines = ["s%02d %d" % (i, 1000 - 37 * i) for i in range(18)]
    lines += ["日本 7", "é +7", "two words 3", "s03 1"]  # s03 twice: later id wins
    with open(os.path.join(b, "srcdict.txt"), "w", encoding="utf-8", newline="") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
