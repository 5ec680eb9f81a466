#!/usr/bin/env python3
"""Cross-check an `xform import` directory with the real `safetensors` library (CI).

Usage: check_safetensors.py MODEL_DIR DUMP_DIR
Loads MODEL_DIR/model.safetensors with safetensors.numpy, checks config.json's dims against the
tensors, and checks sqrt(C)·E[src_tokens] against the Clinic fork's encoder_embedding dump in
DUMP_DIR (the reference's own numbers). Exits non-zero with a message on any mismatch.
"""
import json, sys
import numpy as np
from safetensors.numpy import load_file

mdir, dump = sys.argv[1], sys.argv[2]
cfg = json.load(open(f"{mdir}/config.json"))["model"]
ts = load_file(f"{mdir}/model.safetensors")
emb = ts["encoder.embed_tokens.weight"]
assert emb.shape == (cfg["src_vocab_size"], cfg["encoder_embed_dim"]), emb.shape
for i in range(cfg["encoder_layers"]):
    w = ts[f"encoder.layers.{i}.fc1.weight"]
    assert w.shape == (cfg["encoder_ffn_embed_dim"], cfg["encoder_embed_dim"]), (i, w.shape)
src = np.load(f"{dump}/batch/src_tokens.npy")
ref = np.load(f"{dump}/cpu_fp32/encoder_embedding.npy")
got = np.sqrt(np.float32(cfg["encoder_embed_dim"])) * emb.astype(np.float32)[src]
err = float(np.abs(got - ref).max())
print(f"{len(ts)} tensors; max |sqrt(C)E[src] - reference encoder_embedding| = {err:.3g}")
if err > 1e-6:
    sys.exit(f"embedding differs from the reference dump by {err}")
