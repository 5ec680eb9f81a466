#!/usr/bin/env python3
"""Translate with an `xform export --onnx` directory and onnxruntime alone (no torch, no fairseq).

Search follows fairseq 0.8's SequenceGenerator: the decoder starts from EOS (id 2), log-probs
are taken in fp32, pad is never produced, EOS is forbidden before min_len and forced at
max_len = min(a*S + b, max_target_positions - 1) (S = padded source width), a hypothesis
ending in EOS is finalized only if it is among the first `beam` of the 2*beam candidates,
a sentence stops once it has `beam` finished hypotheses, and the score is
sum(log-probs incl. EOS) / len^lenpen. --beam 1 is fairseq's greedy (what `--beam 1` does).

Input: a fairseq data-bin (mmap .bin/.idx; dictionaries dict.<lang>.txt) or whitespace-
tokenized lines on stdin. Output: fairseq-generate style S-/H-/P- lines.

  python3 examples/onnx_translate.py EXPORT_DIR --data-bin DATA_BIN --beam 4
  python3 examples/onnx_translate.py EXPORT_DIR --data-bin DATA_BIN --beam 4 \\
      --check fixtures/clinic/runs/c_preln/gen_beam4_cpu.txt
  echo "s01 s02 s03" | python3 examples/onnx_translate.py EXPORT_DIR --dict-dir DATA_BIN
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import onnxruntime as ort

BOS, PAD, EOS, UNK = 0, 1, 2, 3

# ------------------------------------------------------------------ data


def load_dict(path):
    """fairseq dictionary: 4 implicit specials, then one '<word> <count>' per line."""
    words = ["<s>", "<pad>", "</s>", "<unk>"]
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if line:
                words.append(line[:line.rfind(" ")])
    return words


def read_mmap_dataset(prefix):
    """fairseq mmap indexed dataset (clinic-spec §5.3): MMIDIDX header, sizes, pointers."""
    dtypes = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64, 7: np.float64, 8: np.uint16}
    with open(prefix + ".idx", "rb") as f:
        idx = f.read()
    if idx[:9] != b"MMIDIDX\x00\x00":
        raise ValueError("%s.idx: not an mmap index" % prefix)
    version = int.from_bytes(idx[9:17], "little")
    if version != 1:
        raise ValueError("%s.idx: version %d" % (prefix, version))
    dtype = dtypes[idx[17]]
    n = int.from_bytes(idx[18:26], "little")
    sizes = np.frombuffer(idx, np.int32, n, 26)
    ptrs = np.frombuffer(idx, np.int64, n, 26 + 4 * n)
    data = np.memmap(prefix + ".bin", dtype=dtype, mode="r")
    isz = np.dtype(dtype).itemsize
    return [np.asarray(data[p // isz:p // isz + s], np.int64) for p, s in zip(ptrs, sizes)]


def string(words, ids):
    return " ".join(words[i] for i in ids if i not in (EOS, BOS, PAD))


# ------------------------------------------------------------------ model


class OnnxSeq2Seq:
    def __init__(self, d, threads=0, merged=False):
        so = ort.SessionOptions()
        so.log_severity_level = 3
        if threads:
            so.intra_op_num_threads = threads
        prov = ["CPUExecutionProvider"]
        self.enc = ort.InferenceSession(os.path.join(d, "encoder_model.onnx"), so, providers=prov)
        self.merged = merged
        if merged:
            self.mrg = ort.InferenceSession(os.path.join(d, "decoder_model_merged.onnx"), so, providers=prov)
        else:
            self.dec = ort.InferenceSession(os.path.join(d, "decoder_model.onnx"), so, providers=prov)
            self.dwp = ort.InferenceSession(os.path.join(d, "decoder_with_past_model.onnx"), so, providers=prov)
        cfg = json.load(open(os.path.join(d, "config.json")))
        self.layers = cfg["decoder_layers"]
        self.heads = cfg["decoder_attention_heads"]
        self.head_dim = cfg["d_model"] // self.heads
        self.max_target_positions = cfg["xform"]["config"]["max_target_positions"]
        self.ftype = np.float16 if cfg.get("torch_dtype") == "float16" else np.float32
        s = self.mrg if merged else self.dec
        self.out_names = [o.name for o in s.get_outputs()]
        self.step_names = [o.name for o in (self.mrg if merged else self.dwp).get_outputs()]

    def encode(self, src):
        mask = (src != PAD).astype(np.int64)
        return self.enc.run(None, {"input_ids": src, "attention_mask": mask})[0], mask

    def first_step(self, tok, enc, mask):
        """Returns fp32 logits [N,V] and the cache: self K/V and cross K/V per layer."""
        feed = {"input_ids": tok, "encoder_attention_mask": mask, "encoder_hidden_states": enc}
        if self.merged:
            z = np.zeros((tok.shape[0], self.heads, 1, self.head_dim), self.ftype)
            for n in self.past_names():
                feed[n] = z
            feed["use_cache_branch"] = np.array([False])
            out = dict(zip(self.out_names, self.mrg.run(None, feed)))
        else:
            out = dict(zip(self.out_names, self.dec.run(None, feed)))
        cache = {n: out[n.replace("past_key_values", "present")] for n in self.past_names()}
        return out["logits"][:, -1].astype(np.float32), cache

    def step(self, tok, mask, enc, cache):
        feed = {"input_ids": tok, "encoder_attention_mask": mask}
        feed.update(cache)
        if self.merged:
            feed["encoder_hidden_states"] = enc
            feed["use_cache_branch"] = np.array([True])
            out = dict(zip(self.step_names, self.mrg.run(None, feed)))
        else:
            out = dict(zip(self.step_names, self.dwp.run(None, feed)))
        new = dict(cache)
        for i in range(self.layers):
            for kv in ("key", "value"):
                new["past_key_values.%d.decoder.%s" % (i, kv)] = out["present.%d.decoder.%s" % (i, kv)]
        return out["logits"][:, -1].astype(np.float32), new

    def past_names(self):
        return ["past_key_values.%d.%s.%s" % (i, k, v) for i in range(self.layers)
                for k in ("decoder", "encoder") for v in ("key", "value")]


def log_softmax(x):
    m = x.max(-1, keepdims=True)
    y = x - m
    return (y - np.log(np.exp(y).sum(-1, keepdims=True))).astype(np.float32)


# ------------------------------------------------------------------ search


def topk_indices(x, k):
    """Indices of the k largest values of each row, largest first, ties by lower index (the order
    torch's CPU topk returns). argpartition finds the k-th value in O(V); every entry tied with it is
    kept, so a stable sort of the few survivors gives exactly what a full stable argsort would."""
    if k >= x.shape[1]:
        return np.argsort(-x, axis=1, kind="stable")[:, :k]
    kth = -np.partition(-x, k - 1, axis=1)[:, k - 1:k]   # the k-th largest value per row
    keep = x >= kth
    counts = keep.sum(axis=1)
    if np.all(counts == k):                              # no ties at the boundary: all rows at once
        cand = np.nonzero(keep)[1].reshape(x.shape[0], k)  # ascending indices per row
        order = np.argsort(-np.take_along_axis(x, cand, 1), axis=1, kind="stable")
        return np.take_along_axis(cand, order, 1)
    out = np.empty((x.shape[0], k), np.int64)
    for r in range(x.shape[0]):
        cand = np.nonzero(keep[r])[0]
        order = np.argsort(-x[r, cand], kind="stable")[:k]
        out[r] = cand[order]
    return out


def beam_search(model, src, beam=4, lenpen=1.0, unkpen=0.0, max_len_a=0.0, max_len_b=200, min_len=1):
    """fairseq 0.8 SequenceGenerator on a left-padded batch src [B,S]; returns per sentence
    a list of hypotheses {tokens, score, positional_scores} sorted by score."""
    B, S = src.shape
    max_len = min(int(max_len_a * S + max_len_b), model.max_target_positions - 1)
    enc, mask = model.encode(src)
    order = np.repeat(np.arange(B), beam)          # each sentence repeated beam times
    enc, mask = enc[order], mask[order]
    tokens = np.full((B * beam, max_len + 2), PAD, np.int64)
    tokens[:, 0] = EOS
    scores = np.zeros((B * beam, max_len + 1), np.float32)
    finalized = [[] for _ in range(B)]
    finished = [False] * B
    alive = np.arange(B)                              # original ids of the sentences still in the batch
    cache = None
    for step in range(max_len + 1):
        if step == 0:
            logits, cache = model.first_step(tokens[:, :1], enc, mask)
        else:
            logits, cache = model.step(tokens[:, step:step + 1], mask, enc, cache)
        lp = log_softmax(logits)
        V = lp.shape[1]
        lp[:, PAD] = -np.inf
        lp[:, UNK] -= unkpen
        if step >= max_len:
            lp[:, :EOS] = -np.inf
            lp[:, EOS + 1:] = -np.inf
        if step < min_len:
            lp[:, EOS] = -np.inf
        bsz = len(alive)
        lp = lp.reshape(bsz, beam, V)
        if step == 0:
            cand = lp[:, :1, :]                       # all beams are equal: use beam 0 only
        else:
            cand = lp + scores[:, step - 1].reshape(bsz, beam, 1)
        flat = cand.reshape(bsz, -1)
        k = min(2 * beam, flat.shape[1] - 1)
        idx = topk_indices(flat, k)
        cand_scores = np.take_along_axis(flat, idx, 1)
        cand_beams = idx // V
        cand_tokens = idx % V
        cand_bbsz = cand_beams + (np.arange(bsz) * beam)[:, None]
        eos = (cand_tokens == EOS) & np.isfinite(cand_scores)
        # finalize EOS among the first `beam` candidates
        newly = []
        for b in range(bsz):
            sent = alive[b]
            for j in range(beam):
                if not eos[b, j] or finished[sent]:
                    continue
                r = cand_bbsz[b, j]
                hyp = np.concatenate([tokens[r, 1:step + 1], [EOS]])
                cum = np.concatenate([scores[r, :step], [cand_scores[b, j]]])
                pos = np.concatenate([cum[:1], cum[1:] - cum[:-1]])
                if len(finalized[sent]) < beam:
                    finalized[sent].append({"tokens": hyp, "score": float(cand_scores[b, j] / (step + 1) ** lenpen),
                                            "positional_scores": pos})
            if not finished[sent] and (len(finalized[sent]) == beam or step == max_len):
                finished[sent] = True
                newly.append(b)
        if all(finished[s] for s in alive) or step >= max_len:
            break
        keep = [b for b in range(bsz) if b not in set(newly)]  # batch reduction, as fairseq
        # the first `beam` non-EOS candidates continue
        act = eos * k + np.arange(k)[None]  # EOS candidates sort last
        act_hypos = np.argsort(act, axis=1, kind="stable")[:, :beam]
        act_bbsz = np.take_along_axis(cand_bbsz, act_hypos, 1)
        act_tok = np.take_along_axis(cand_tokens, act_hypos, 1)
        act_sc = np.take_along_axis(cand_scores, act_hypos, 1)
        keep = np.array(keep, np.int64)
        act_bbsz, act_tok, act_sc = act_bbsz[keep], act_tok[keep], act_sc[keep]
        rows = act_bbsz.reshape(-1)
        tokens = tokens[rows]
        tokens[:, step + 1] = act_tok.reshape(-1)
        scores = scores[rows]
        scores[:, step] = act_sc.reshape(-1)
        cache = {n: v[rows] for n, v in cache.items()}
        enc, mask = enc[rows], mask[rows]
        alive = alive[keep]
    return [sorted(f, key=lambda h: -h["score"]) for f in finalized]


def batches(samples, batch_size):
    """Sort by source length (longest first, as fairseq's collater does inside a batch) and
    left-pad each batch to its own width."""
    order = sorted(range(len(samples)), key=lambda i: (-len(samples[i]), i))
    for s in range(0, len(order), batch_size):
        ids = order[s:s + batch_size]
        W = max(len(samples[i]) for i in ids)
        src = np.full((len(ids), W), PAD, np.int64)
        for r, i in enumerate(ids):
            src[r, W - len(samples[i]):] = samples[i]
        yield ids, src


def translate(model, samples, beam, batch_size, lenpen=1.0, max_len_a=0.0, max_len_b=200):
    out = {}
    for ids, src in batches(samples, batch_size):
        for i, hyps in zip(ids, beam_search(model, src, beam=beam, lenpen=lenpen, max_len_a=max_len_a, max_len_b=max_len_b)):
            out[i] = hyps[0]
    return out


def read_generate(path):
    """H- lines of a fairseq-generate output: id -> (score, hypothesis string, P scores)."""
    hyp, pos = {}, {}
    for line in open(path, encoding="utf-8"):
        f = line.rstrip("\n").split("\t")
        if f[0].startswith("H-"):
            hyp[int(f[0][2:])] = (float(f[1]), f[2] if len(f) > 2 else "")
        elif f[0].startswith("P-"):
            pos[int(f[0][2:])] = [float(x) for x in f[1].split()]
    return {i: (s, h, pos.get(i)) for i, (s, h) in hyp.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("export_dir")
    ap.add_argument("--data-bin", help="fairseq data-bin with {split}.{src}-{tgt}.{src}.bin/.idx")
    ap.add_argument("--dict-dir", help="directory with dict.*.txt (default: --data-bin or the export dir)")
    ap.add_argument("--split", default="test")
    ap.add_argument("-s", "--source-lang", default="src")
    ap.add_argument("-t", "--target-lang", default="tgt")
    ap.add_argument("--beam", type=int, default=5)
    ap.add_argument("--lenpen", type=float, default=1.0)
    ap.add_argument("--max-len-a", type=float, default=0.0)
    ap.add_argument("--max-len-b", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--merged", action="store_true", help="drive decoder_model_merged.onnx instead of the two decoders")
    ap.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0 = its default)")
    ap.add_argument("--check", help="fairseq-generate output to compare hypotheses with (exit 1 on a mismatch)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()

    model = OnnxSeq2Seq(args.export_dir, args.threads, args.merged)
    ddir = args.dict_dir or args.data_bin or args.export_dir
    src_words = load_dict(os.path.join(ddir, "dict.%s.txt" % args.source_lang))
    tgt_words = load_dict(os.path.join(ddir, "dict.%s.txt" % args.target_lang))
    if args.data_bin:
        prefix = os.path.join(args.data_bin, "%s.%s-%s.%s" % (args.split, args.source_lang, args.target_lang, args.source_lang))
        samples = read_mmap_dataset(prefix)
    else:
        index = {w: i for i, w in enumerate(src_words)}
        samples = [np.array([index.get(w, UNK) for w in line.split()] + [EOS], np.int64) for line in sys.stdin]

    t0 = time.perf_counter()
    hyps = translate(model, samples, args.beam, args.batch_size, args.lenpen, args.max_len_a, args.max_len_b)
    dt = time.perf_counter() - t0
    ntok = sum(len(h["tokens"]) for h in hyps.values())
    if not args.quiet:
        for i in range(len(samples)):
            h = hyps[i]
            print("S-%d\t%s" % (i, string(src_words, samples[i])))
            print("H-%d\t%s\t%s" % (i, h["score"], string(tgt_words, h["tokens"])))
            print("P-%d\t%s" % (i, " ".join("%.4f" % x for x in h["positional_scores"])))
    print("| Translated %d sentences (%d tokens) in %.2fs (%.1f tokens/s), beam=%d" %
          (len(samples), ntok, dt, ntok / dt, args.beam), file=sys.stderr)
    if args.check:
        ref = read_generate(args.check)
        bad, dscore, dpos = 0, 0.0, 0.0
        for i, (score, text, pos) in ref.items():
            h = hyps[i]
            if string(tgt_words, h["tokens"]) != text:
                bad += 1
                print("MISMATCH %d:\n  ref  %s\n  ours %s" % (i, text, string(tgt_words, h["tokens"])), file=sys.stderr)
                continue
            dscore = max(dscore, abs(score - h["score"]))
            if pos:
                dpos = max(dpos, float(np.abs(np.array(pos) - h["positional_scores"]).max()))
        print("| check %s: %d/%d hypotheses identical; max |Δscore| %.2e, max |ΔP| %.2e (P printed to 4 decimals)" %
              (args.check, len(ref) - bad, len(ref), dscore, dpos), file=sys.stderr)
        sys.exit(1 if bad or len(ref) != len(samples) else 0)


if __name__ == "__main__":
    main()
