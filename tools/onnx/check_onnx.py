#!/usr/bin/env python3
"""Check an `xform export --onnx` directory with onnx and onnxruntime.

For one exported directory this script
  1. runs onnx.checker.check_model(path, full_check=True) on all four graphs;
  2. compares onnxruntime outputs with a reference:
       --dump RUN/dump_last   the fairseq (Clinic) reference tensors of a fixture run
                              (cpu_fp32/encoder_out.npy [S,B,C], logits.npy, lprobs.npy)
                              for the batch in batch/, and for a 2-sentence sub-batch
                              re-padded to its own width (both in one session, so the
                              dynamic axes and left padding are exercised);
       --params DIR           a float64 numpy forward written from the formulas
                              (clinic-spec) over parameters dumped as DIR/<name>.npy,
                              on random left-padded batches of two shapes;
  3. checks that stepping decoder_with_past_model token by token (after a first
     decoder_model step) reproduces the full decoder_model run, and that the merged
     decoder gives the same numbers on both If branches.

Tolerances: fp32 exports must match within --atol (default 1e-5 absolute). The reference
is torch fp32 on CPU; onnxruntime computes the same fp32 operations with other GEMM
kernels (blocking, FMA) and its own LayerNorm/Softmax, so results differ by rounding
only: a few ulps per op, accumulated over ~20 sub-layers, on values up to ~10
(ulp(8) = 9.5e-7). A real bug (a wrong position, mask or scale) shows up as errors of
1e-2 or more. fp16 exports (--fp16) are judged by relative error
max|ours - ref| / max|ref| <= --rtol (default 1e-2): fp16 keeps 11 significant bits
(relative rounding 4.9e-4 per op).

Exit status 0 when everything passes; a JSON summary is printed (--json FILE too).
"""
import argparse
import json
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort

FILES = ["encoder_model.onnx", "decoder_model.onnx", "decoder_with_past_model.onnx", "decoder_model_merged.onnx"]
PAD, EOS = 1, 2


def session(path):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


class Export:
    def __init__(self, d):
        self.dir = d
        self.enc = session(os.path.join(d, FILES[0]))
        self.dec = session(os.path.join(d, FILES[1]))
        self.dwp = session(os.path.join(d, FILES[2]))
        self.merged = session(os.path.join(d, FILES[3]))
        self.fp16 = self.enc.get_outputs()[0].type == "tensor(float16)"
        self.ftype = np.float16 if self.fp16 else np.float32
        self.nlayers = sum(1 for o in self.dec.get_outputs() if o.name.endswith(".decoder.key"))
        k = [i for i in self.dwp.get_inputs() if i.name == "past_key_values.0.decoder.key"][0]
        self.heads, self.head_dim = k.shape[1], k.shape[3]

    def encode(self, src):
        mask = (src != PAD).astype(np.int64)
        return self.enc.run(None, {"input_ids": src, "attention_mask": mask})[0], mask

    def decode_full(self, prev, enc_out, mask):
        outs = self.dec.run(None, {"input_ids": prev, "encoder_attention_mask": mask, "encoder_hidden_states": enc_out})
        names = [o.name for o in self.dec.get_outputs()]
        return dict(zip(names, outs))

    def decode_steps(self, prev, enc_out, mask):
        """decoder_model on the first token, then decoder_with_past one token at a time."""
        first = self.decode_full(prev[:, :1], enc_out, mask)
        logits = [first["logits"]]
        past = {}
        for i in range(self.nlayers):
            for kind in ("decoder", "encoder"):
                for kv in ("key", "value"):
                    past["past_key_values.%d.%s.%s" % (i, kind, kv)] = first["present.%d.%s.%s" % (i, kind, kv)]
        names = [o.name for o in self.dwp.get_outputs()]
        for t in range(1, prev.shape[1]):
            feed = {"input_ids": prev[:, t:t + 1], "encoder_attention_mask": mask}
            feed.update(past)
            out = dict(zip(names, self.dwp.run(None, feed)))
            logits.append(out["logits"])
            for i in range(self.nlayers):
                for kv in ("key", "value"):
                    past["past_key_values.%d.decoder.%s" % (i, kv)] = out["present.%d.decoder.%s" % (i, kv)]
        return np.concatenate(logits, axis=1)

    def decode_merged(self, prev, enc_out, mask):
        """The merged decoder as optimum drives it: dummy past on the first step."""
        B = prev.shape[0]
        names = [o.name for o in self.merged.get_outputs()]
        past = {}
        for i in range(self.nlayers):
            for kind in ("decoder", "encoder"):
                for kv in ("key", "value"):
                    past["past_key_values.%d.%s.%s" % (i, kind, kv)] = np.zeros((B, self.heads, 1, self.head_dim), self.ftype)
        feed = {"input_ids": prev[:, :1], "encoder_attention_mask": mask, "encoder_hidden_states": enc_out,
                "use_cache_branch": np.array([False])}
        feed.update(past)
        out = dict(zip(names, self.merged.run(None, feed)))
        logits = [out["logits"]]
        for k in past:
            past[k] = out[k.replace("past_key_values", "present")]
        for t in range(1, prev.shape[1]):
            feed = {"input_ids": prev[:, t:t + 1], "encoder_attention_mask": mask, "encoder_hidden_states": enc_out,
                    "use_cache_branch": np.array([True])}
            feed.update(past)
            out = dict(zip(names, self.merged.run(None, feed)))
            logits.append(out["logits"])
            assert out["present.0.encoder.key"].shape[0] == 0, "cached branch must return empty cross K/V"
            for i in range(self.nlayers):
                for kv in ("key", "value"):
                    past["past_key_values.%d.decoder.%s" % (i, kv)] = out["present.%d.decoder.%s" % (i, kv)]
        return np.concatenate(logits, axis=1)


def log_softmax(x):
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def errors(ours, ref):
    ours = np.asarray(ours, np.float64)
    ref = np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    a = float(np.abs(ours - ref).max())
    return a, a / max(float(np.abs(ref).max()), 1e-30)


# ---------------------------------------------------------------- numpy reference
class NpRef:
    """float64 forward of a fairseq/Clinic Transformer from the formulas in clinic-spec."""

    def __init__(self, pdir):
        self.c = json.load(open(os.path.join(pdir, "config.json")))
        self.p = {f[:-4]: np.load(os.path.join(pdir, f)).astype(np.float64)
                  for f in os.listdir(pdir) if f.endswith(".npy")}
        c = self.c
        self.d = c["encoder_embed_dim"]
        self.omega = c["init_type"] in ("adaptive", "adaptive-profiling")
        self.alpha = (0.0, 0.0)
        if c["init_type"] == "deepnet":
            n, m = c["encoder_layers"], c["decoder_layers"]
            self.alpha = (0.81 * (n ** 4 * m) ** (1 / 16), (3 * m) ** 0.25)

    def sinusoid(self, rows):
        d = self.d
        half = d // 2
        f = np.exp(np.arange(half) * -(np.log(10000) / (half - 1)))
        a = np.arange(rows)[:, None] * f[None]
        t = np.concatenate([np.sin(a), np.cos(a)], 1)
        t[PAD] = 0
        return t

    def positions(self, tok, decoder):
        nonpad = tok != PAD
        pos = np.cumsum(nonpad, 1) * nonpad + PAD
        learned = self.c["decoder_learned_pos" if decoder else "encoder_learned_pos"]
        if learned:
            return self.p[("decoder" if decoder else "encoder") + ".embed_positions.weight"][pos]
        return self.sinusoid(pos.max() + 1)[pos]

    def ln(self, x, pre):
        m = x.mean(-1, keepdims=True)
        v = ((x - m) ** 2).mean(-1, keepdims=True)
        return (x - m) / np.sqrt(v + 1e-5) * self.p[pre + ".weight"] + self.p[pre + ".bias"]

    def lin(self, x, pre):
        return x @ self.p[pre + ".weight"].T + self.p[pre + ".bias"]

    def act(self, x):
        a = self.c["activation_fn"]
        if a == "relu":
            return np.maximum(x, 0)
        if a == "gelu":
            from math import erf, sqrt
            return x * 0.5 * (1 + np.vectorize(erf)(x / sqrt(2)))
        if a in ("gelu_accurate", "gelu_fast"):
            return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
        if a == "tanh":
            return np.tanh(x)
        return x

    def mha(self, x, kv, pre, heads, bias):
        B, T, d = x.shape
        S = kv.shape[1]
        hd = d // heads
        q = self.lin(x, pre + "q_proj") * hd ** -0.5
        k = self.lin(kv, pre + "k_proj")
        v = self.lin(kv, pre + "v_proj")
        q = q.reshape(B, T, heads, hd).transpose(0, 2, 1, 3)
        k = k.reshape(B, S, heads, hd).transpose(0, 2, 1, 3)
        v = v.reshape(B, S, heads, hd).transpose(0, 2, 1, 3)
        s = q @ k.transpose(0, 1, 3, 2) + bias
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        o = (s @ v).transpose(0, 2, 1, 3).reshape(B, T, d)
        return self.lin(o, pre + "out_proj")

    def block(self, x, pre, ln, omega, alpha, prenorm, f):
        if prenorm:
            return x + f(self.ln(x, pre + ln))
        r = x
        if self.omega:
            r = x * self.p[pre + omega]
        elif alpha:
            r = x * alpha
        return self.ln(r + f(x), pre + ln)

    def forward(self, src, prev):
        c = self.c
        emb = self.p["encoder.embed_tokens.weight"]
        x = np.sqrt(self.d) * emb[src] + self.positions(src, False)
        kbias = np.where(src == PAD, -np.inf, 0.0)[:, None, None, :]
        H = c["encoder_attention_heads"]
        pre_e = c["encoder_normalize_before"]
        for i in range(c["encoder_layers"]):
            p = "encoder.layers.%d." % i
            x = self.block(x, p, "self_attn_layer_norm", "self_attn_omega", self.alpha[0], pre_e,
                           lambda y: self.mha(y, y, p + "self_attn.", H, kbias))
            x = self.block(x, p, "final_layer_norm", "ffn_omega", self.alpha[0], pre_e,
                           lambda y: self.lin(self.act(self.lin(y, p + "fc1")), p + "fc2"))
        if pre_e:
            x = self.ln(x, "encoder.layer_norm")
        enc = x
        demb = emb if c["share_all_embeddings"] else self.p["decoder.embed_tokens.weight"]
        y = np.sqrt(self.d) * demb[prev] + self.positions(prev, True)
        T = prev.shape[1]
        causal = np.triu(np.full((T, T), -np.inf), 1)
        sbias = causal[None, None] + np.where(prev == PAD, -np.inf, 0.0)[:, None, None, :]
        H = c["decoder_attention_heads"]
        pre_d = c["decoder_normalize_before"]
        for i in range(c["decoder_layers"]):
            p = "decoder.layers.%d." % i
            y = self.block(y, p, "self_attn_layer_norm", "self_attn_omega", self.alpha[1], pre_d,
                           lambda z: self.mha(z, z, p + "self_attn.", H, sbias))
            y = self.block(y, p, "encoder_attn_layer_norm", "encoder_attn_omega", self.alpha[1], pre_d,
                           lambda z: self.mha(z, enc, p + "encoder_attn.", H, kbias))
            y = self.block(y, p, "final_layer_norm", "ffn_omega", self.alpha[1], pre_d,
                           lambda z: self.lin(self.act(self.lin(z, p + "fc1")), p + "fc2"))
        if pre_d:
            y = self.ln(y, "decoder.layer_norm")
        if c["share_all_embeddings"] or c["share_decoder_input_output_embed"]:
            out = demb
        else:
            out = self.p["decoder.output_projection.weight"]
        return enc, y @ out.T


def random_batch(rng, B, S, T, V):
    """Left-padded sources ending in EOS (one full-width row), right-padded EOS-first targets."""
    src = np.full((B, S), PAD, np.int64)
    prev = np.full((B, T), PAD, np.int64)
    for b in range(B):
        n = S if b == 0 else int(rng.integers(1, S + 1))
        src[b, S - n:] = rng.integers(4, V, n)
        src[b, -1] = EOS
        m = T if b == 0 else int(rng.integers(1, T + 1))
        prev[b, 0] = EOS
        prev[b, 1:m] = rng.integers(4, V, m - 1)
    return src, prev


def subbatch(src, prev, rows):
    """Rows of a batch re-padded to their own width (strip all-pad columns)."""
    s, p = src[rows], prev[rows]
    keep_s = (s != PAD).any(0)
    first = int(np.argmax(keep_s))
    keep_p = (p != PAD).any(0)
    last = len(keep_p) - int(np.argmax(keep_p[::-1]))
    return s[:, first:], p[:, :last], first, last


# ---------------------------------------------------------------- checks
def check_structure(d, res):
    for f in FILES:
        onnx.checker.check_model(os.path.join(d, f), full_check=True)
    res["checker"] = "ok (full_check) for " + ", ".join(FILES)


def compare(ex, src, prev, ref_enc, ref_logits, tag, res, args):
    enc, mask = ex.encode(src)
    full = ex.decode_full(prev, enc, mask)
    r = {}
    r["encoder_out"] = errors(enc, ref_enc)
    r["logits"] = errors(full["logits"], ref_logits)
    r["lprobs"] = errors(log_softmax(full["logits"]), log_softmax(ref_logits))
    # stepping and merged: on the unpadded prefix common to all rows (generation never pads)
    tmin = int((prev != PAD).sum(1).min())
    steps = ex.decode_steps(prev[:, :tmin], enc, mask)
    r["with_past_vs_full"] = errors(steps, full["logits"][:, :tmin])
    merged = ex.decode_merged(prev[:, :tmin], enc, mask)
    r["merged_vs_full"] = errors(merged, full["logits"][:, :tmin])
    res[tag] = {k: {"max_abs": v[0], "rel": v[1]} for k, v in r.items()}
    res[tag]["shape"] = {"batch": int(src.shape[0]), "src_len": int(src.shape[1]), "tgt_len": int(prev.shape[1])}
    bad = []
    for k, (a, rel) in r.items():
        if ex.fp16:
            if rel > args.rtol:
                bad.append("%s %s: rel %.3g > %.3g" % (tag, k, rel, args.rtol))
        elif a > args.atol:
            bad.append("%s %s: max abs %.3g > %.3g" % (tag, k, a, args.atol))
    return bad


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("export_dir")
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--dump", help="fixture run dump dir (…/dump_last) with batch/ and cpu_fp32/")
    g.add_argument("--params", help="dir of <param>.npy + config.json for the numpy reference")
    ap.add_argument("--atol", type=float, default=1e-5)
    ap.add_argument("--rtol", type=float, default=1e-2)
    ap.add_argument("--json", help="also write the summary here")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    res = {"export": args.export_dir, "onnxruntime": ort.__version__, "onnx": onnx.__version__}
    check_structure(args.export_dir, res)
    ex = Export(args.export_dir)
    res["dtype"] = "float16" if ex.fp16 else "float32"
    bad = []
    if args.dump:
        b = os.path.join(args.dump, "batch")
        r = os.path.join(args.dump, "cpu_fp32")
        src = np.load(os.path.join(b, "src_tokens.npy"))
        prev = np.load(os.path.join(b, "prev_output_tokens.npy"))
        ref_enc = np.load(os.path.join(r, "encoder_out.npy")).transpose(1, 0, 2)  # [S,B,C] -> [B,S,C]
        ref_logits = np.load(os.path.join(r, "logits.npy"))
        ref_lprobs = np.load(os.path.join(r, "lprobs.npy"))
        res["ref_lprobs_vs_log_softmax_ref_logits"] = errors(log_softmax(ref_logits), ref_lprobs)[0]
        bad += compare(ex, src, prev, ref_enc, ref_logits, "full_batch", res, args)
        rows = [2, 3]  # the two shortest sources: heavy left padding, re-padded to their own width
        s2, p2, c0, c1 = subbatch(src, prev, rows)
        bad += compare(ex, s2, p2, ref_enc[rows][:, c0:], ref_logits[rows][:, :c1], "sub_batch", res, args)
        # lprobs against the reference's own fp32 log_softmax
        enc, mask = ex.encode(src)
        lp = log_softmax(ex.decode_full(prev, enc, mask)["logits"])
        a, rel = errors(lp, ref_lprobs)
        res["full_batch"]["lprobs_vs_ref_lprobs"] = {"max_abs": a, "rel": rel}
        if (not ex.fp16 and a > args.atol) or (ex.fp16 and rel > args.rtol):
            bad.append("lprobs vs reference lprobs.npy: %.3g" % a)
    else:
        ref = NpRef(args.params)
        rng = np.random.default_rng(args.seed)
        V = ref.p["encoder.embed_tokens.weight"].shape[0]
        for tag, (B, S, T) in (("batch_a", (4, 11, 9)), ("batch_b", (3, 6, 13))):
            src, prev = random_batch(rng, B, S, T, V)
            enc, logits = ref.forward(src, prev)
            bad += compare(ex, src, prev, enc, logits, tag, res, args)
    res["failures"] = bad
    out = json.dumps(res, indent=1)
    print(out)
    if args.json:
        with open(args.json, "w") as f:
            f.write(out)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
