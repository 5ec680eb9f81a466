#!/usr/bin/env python3
"""Helper for preprocess_refs.sh.

  preprocess_ref_helper.py run CLINIC ARGS...   run the Clinic fork's fairseq 0.8
      preprocess.py (CLINIC/fairseq/preprocess.py) with ARGS, unmodified; the only
      shim is numpy's removed np.float alias (it was the builtin float), which the
      fork's indexed_dataset.py needs to import on numpy >= 1.24.
  preprocess_ref_helper.py gen-big DIR          write DIR/train.{src,tgt}, a corpus
      whose joined dictionary exceeds 65500 symbols (mmap dtype int32). The Go
      test regenerates the same text with the same formula.
"""
import multiprocessing
import os
import runpy
import sys


def run(clinic, args):
    import numpy as np
    if "float" not in np.__dict__:
        np.float = float
    root = os.path.join(clinic, "fairseq")
    sys.path.insert(0, root)
    # Workers are forked as in the reference environment (the functions they
    # run live in the __main__ that runpy creates).
    multiprocessing.set_start_method("fork", force=True)
    sys.argv = [os.path.join(root, "preprocess.py")] + args
    runpy.run_path(sys.argv[0], run_name="__main__")


def gen_big(out):
    os.makedirs(out, exist_ok=True)
    # 33,000 lines: source "b<2i> b<2i+1>", target "c<i>" (5-digit, zero-padded):
    # 99,000 types, every count 1, so ordering is by symbol alone.
    with open(os.path.join(out, "train.src"), "w", encoding="utf-8") as f:
        for i in range(33000):
            f.write("b%05d b%05d\n" % (2 * i, 2 * i + 1))
    with open(os.path.join(out, "train.tgt"), "w", encoding="utf-8") as f:
        for i in range(33000):
            f.write("c%05d\n" % i)


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "run":
        run(sys.argv[2], sys.argv[3:])
    elif len(sys.argv) == 3 and sys.argv[1] == "gen-big":
        gen_big(sys.argv[2])
    else:
        sys.exit(__doc__)
