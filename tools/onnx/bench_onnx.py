#!/usr/bin/env python3
"""Greedy / beam-4 decoding speed of an xform ONNX export in onnxruntime (CPU), driven by
examples/onnx_translate.py's fairseq search. Prints a markdown table row per setting:
batch size, beam, sentences, generated tokens (incl. EOS), wall seconds (best of --repeat),
ms per sentence and generated tokens per second.

  python3 tools/onnx/bench_onnx.py EXPORT_DIR --data-bin DATA_BIN [--threads N]
"""
import argparse
import importlib.util
import os
import platform
import time

import onnxruntime as ort

here = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("onnx_translate", os.path.join(here, "..", "..", "examples", "onnx_translate.py"))
tr = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tr)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("export_dir")
    ap.add_argument("--data-bin", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--merged", action="store_true")
    ap.add_argument("--max-len-b", type=int, default=200, help="cap output length (random-weight models never emit EOS)")
    ap.add_argument("--batch-sizes", default="1,128")
    args = ap.parse_args()
    model = tr.OnnxSeq2Seq(args.export_dir, args.threads, args.merged)
    samples = tr.read_mmap_dataset(os.path.join(args.data_bin, "%s.src-tgt.src" % args.split))
    print("onnxruntime %s, CPUExecutionProvider, %s, %d CPUs, intra-op threads %s, %s decoder" %
          (ort.__version__, platform.processor() or platform.machine(), os.cpu_count(), args.threads or "default",
           "merged" if args.merged else "decoder + decoder_with_past"))
    print("| batch | beam | sentences | tokens | seconds | ms/sentence | tokens/s |")
    print("|---|---|---|---|---|---|---|")
    for bs in [int(x) for x in args.batch_sizes.split(",")]:
        for beam in (1, 4):
            best = None
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                hyps = tr.translate(model, samples, beam, bs, max_len_b=args.max_len_b)
                dt = time.perf_counter() - t0
                best = dt if best is None else min(best, dt)
            ntok = sum(len(h["tokens"]) for h in hyps.values())
            print("| %d | %d | %d | %d | %.3f | %.2f | %.0f |" %
                  (bs, beam, len(samples), ntok, best, 1000 * best / len(samples), ntok / best))


if __name__ == "__main__":
    main()
