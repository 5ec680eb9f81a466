#!/usr/bin/env python3
"""Report which onnxruntime.transformers fusions fire on an xform ONNX export.

For each graph it runs onnxruntime.transformers.optimizer.optimize_model (model_type
"bart", the seq2seq type whose fusions ORT ships; heads and hidden size from config.json),
prints the fused-operator statistics, and checks that the optimized graph computes the
same outputs as the exported one on a random left-padded batch.

  python3 tools/onnx/ort_fusions.py EXPORT_DIR [--json out.json]
"""
import argparse
import json
import logging
import os
import tempfile

import numpy as np
import onnxruntime as ort
from onnxruntime.transformers.optimizer import optimize_model


def feeds(sess, cfg, rng):
    B, S, T, P = 2, 7, 5, 3
    H = cfg["decoder_attention_heads"]
    hd = cfg["d_model"] // H
    ft = np.float16 if cfg.get("torch_dtype") == "float16" else np.float32
    out = {}
    for i in sess.get_inputs():
        n = i.name
        if n == "input_ids":
            L = 1 if any(x.name.startswith("past_key_values") for x in sess.get_inputs()) else (S if "attention_mask" in [x.name for x in sess.get_inputs()] else T)
            ids = rng.integers(4, cfg["vocab_size"], (B, L))
            if "attention_mask" in [x.name for x in sess.get_inputs()]:
                ids[1, :3] = 1  # left padding
            out[n] = ids.astype(np.int64)
        elif n.endswith("attention_mask"):
            m = np.ones((B, S), np.int64)
            m[1, :3] = 0
            out[n] = m
        elif n == "encoder_hidden_states":
            out[n] = rng.standard_normal((B, S, cfg["d_model"])).astype(ft)
        elif n.startswith("past_key_values"):
            L = P if ".decoder." in n else S
            out[n] = rng.standard_normal((B, H, L, hd)).astype(ft)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("export_dir")
    ap.add_argument("--json")
    args = ap.parse_args()
    logging.disable(logging.WARNING)  # the optimizer warns that the producer is not pytorch
    cfg = json.load(open(os.path.join(args.export_dir, "config.json")))
    rng = np.random.default_rng(0)
    report = {"onnxruntime": ort.__version__}
    for f in ("encoder_model.onnx", "decoder_model.onnx", "decoder_with_past_model.onnx"):
        path = os.path.join(args.export_dir, f)
        m = optimize_model(path, model_type="bart", num_heads=cfg["decoder_attention_heads"], hidden_size=cfg["d_model"], opt_level=0)
        stats = {k: v for k, v in m.get_fused_operator_statistics().items() if v}
        with tempfile.TemporaryDirectory() as td:
            opt = os.path.join(td, "opt.onnx")
            m.save_model_to_file(opt)
            a = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            b = ort.InferenceSession(opt, providers=["CPUExecutionProvider"])
            fd = feeds(a, cfg, rng)
            diff = max(float(np.abs(x.astype(np.float64) - y.astype(np.float64)).max())
                       for x, y in zip(a.run(None, fd), b.run(None, fd)))
        report[f] = {"fused": stats, "max_abs_diff_vs_unoptimized": diff}
        print("%-30s %s  max|Δ| %.2e" % (f, stats, diff))
    if args.json:
        json.dump(report, open(args.json, "w"), indent=1)


if __name__ == "__main__":
    main()
