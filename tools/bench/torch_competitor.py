#!/usr/bin/env python3
"""The PyTorch competitor of `xform bench`: a plain, modern PyTorch port of fairseq's
transformer_wmt_en_de with Admin (the Transformer-Clinic fork's model), trained on the
same batches, reporting the same numbers.

Model (written from the formulas in fixtures/clinic/README.md "The math", not from fairseq code):
  * shared source/target/output embedding [V, d], N(0, d^-1/2), pad row 0, scaled by sqrt(d);
    fairseq's sinusoidal positions (pad id 1, positions count non-pad tokens from 2,
    [sin | cos] halves, frequency exp(-j ln(10000)/(d/2-1))); dropout on the sum;
  * Post-LN sub-layers with Admin's ω:  y = LN(ω ⊙ x + dropout(f(x)))  (ω a trained [d] vector,
    set by Admin's profiling forward: ω_i = sqrt(Σ_{j<i} Var(branch_j) + Var(x_0)) per stack,
    computed as the running r ← sqrt(Var(ω⊙x) + Var(f(x))) over the first batch);
  * attention with fused q|k|v projection [3d, d], F.scaled_dot_product_attention with the
    source key-padding mask (encoder, encoder-decoder) or is_causal (decoder), attention dropout;
  * FFN fc2(dropout(relu(fc1 x)));  xavier-uniform weights, zero biases;
  * label-smoothed cross entropy (ε = 0.1, fairseq's formula = F.cross_entropy's label_smoothing),
    summed over non-pad target tokens and divided by their number;
  * Adam (betas 0.9/0.98, eps 1e-8; fused=True on CUDA) standing in for the fork's RAdam
    (same memory traffic: two moments per weight), inverse_sqrt schedule warming up from 1e-7;
  * bf16 autocast (fp32 master weights, fp32 softmax/LN inside autocast as torch does).

Modes: eager; compile (torch.compile, default mode); compile-cudagraphs (torch.compile
mode="reduce-overhead": CUDA graphs, which need static shapes, so the batches are bucketed:
every batch of a bucket is padded to the same [B, L] shape).  Eager uses fairseq's batching
(the same batches as `xform bench` and the Clinic fork); the compile modes use the bucketed
batches (padding is not counted as tokens or FLOPs, so it costs them throughput honestly).

Data: --data DATA-BIN (its train split, fairseq mmap format, e.g. made by `xform preprocess`)
or the synthetic corpus that `xform bench` generates in memory (same generator, same seed:
see synth_ranks below and internal/bench/synth.go; identical token ids and dictionary).

Numbers (printed, and as one JSON object with --json): target tokens/s (non-pad target tokens
incl. </s>, fairseq's wps), updates/s, ms/update (mean and median, from CUDA events), MFU
(model FLOPs as internal/bench/flops.go counts them, over --peak-tflops), peak memory
(torch.cuda.max_memory_allocated / max_memory_reserved) and peak RSS.

Runs on torch 2.x with CUDA (the GPU machine: torch 2.11). Without CUDA it says so and exits 3
unless --device cpu is given (a slow functional check; torch.compile and SDPA are used only
where the installed torch has them).  Standard library + numpy + torch only.
"""
import argparse
import importlib
import json
import math
import os
import resource
import sys
import time
from datetime import datetime, timezone

import numpy as np

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError:  # pragma: no cover - reported at run time
    torch = None

PAD, EOS, UNK, BOS = 1, 2, 3, 0
NSPECIAL = 4

# ---------------------------------------------------------------------------------------------
# The synthetic corpus (must equal internal/bench/synth.go exactly; both document it the same way)
#   mix(seed, n) = SplitMix64 output of seed + n*0x9E3779B97F4A7C15 (mod 2^64)
#   pair p: src len = minlen + mix(seed, 2p+1) % (maxlen-minlen+1), tgt len = ... mix(seed, 2p+2)
#   words: one stream seeded seed ^ 0x6A09E667F3BCC909, draws n = 1, 2, ... in order
#   (pair 0 source, pair 0 target, pair 1 source, ...); u = (x >> 11) * 2^-53;
#   cdf[k] = cumulative float64 sum of 1/(k+1); rank = first k with cdf[k] > u*cdf[V-1] (<= V-1);
#   word = "w%05d" % rank; every sentence ends with </s>.
#   Dictionary = xform preprocess --joined-dictionary of the training text: 4 specials, then
#   the words seen, by count descending, ties by rank (= alphabetical), padded to a multiple of 8.
# ---------------------------------------------------------------------------------------------
GOLDEN = np.uint64(0x9E3779B97F4A7C15)
WORDS_SALT = 0x6A09E667F3BCC909


def mix(seed, n):
    """SplitMix64 outputs for the uint64 array n (1-based draw indices)."""
    with np.errstate(over='ignore'):
        z = np.uint64(seed) + n.astype(np.uint64) * GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def synth_lengths(npairs, seed, minlen=20, maxlen=40):
    """Source and target lengths (words) of pairs 0..npairs-1."""
    span = np.uint64(maxlen - minlen + 1)
    p = np.arange(npairs, dtype=np.uint64)
    src = minlen + (mix(seed, 2 * p + np.uint64(1)) % span).astype(np.int64)
    tgt = minlen + (mix(seed, 2 * p + np.uint64(2)) % span).astype(np.int64)
    return src, tgt


def synth_ranks(pairs, seed, first=0, vocab=32000, minlen=20, maxlen=40):
    """Word ranks of pairs first..first+pairs-1: (list of src arrays, list of tgt arrays)."""
    src_len, tgt_len = synth_lengths(first + pairs, seed, minlen, maxlen)
    before = int(src_len[:first].sum() + tgt_len[:first].sum())
    sl, tl = src_len[first:], tgt_len[first:]
    total = int(sl.sum() + tl.sum())
    cdf = np.cumsum(1.0 / np.arange(1, vocab + 1, dtype=np.float64))
    n = np.arange(before + 1, before + total + 1, dtype=np.uint64)
    x = mix(np.uint64(seed) ^ np.uint64(WORDS_SALT), n)
    u = (x >> np.uint64(11)).astype(np.float64) * (2.0 ** -53)
    ranks = np.minimum(np.searchsorted(cdf, u * cdf[-1], side='right'), vocab - 1)
    srcs, tgts, o = [], [], 0
    for a, b in zip(sl.tolist(), tl.tolist()):
        srcs.append(ranks[o:o + a]); o += a
        tgts.append(ranks[o:o + b]); o += b
    return srcs, tgts


def synth_corpus(pairs, seed, vocab=32000):
    """The synthetic training split as token ids (</s> appended) and the dictionary size."""
    srcs, tgts = synth_ranks(pairs, seed, vocab=vocab)
    counts = np.bincount(np.concatenate(srcs + tgts), minlength=vocab)
    seen = np.nonzero(counts)[0]
    order = seen[np.lexsort((seen, -counts[seen]))]
    ids = np.full(vocab, UNK, dtype=np.int64)
    ids[order] = NSPECIAL + np.arange(len(order))
    size = NSPECIAL + len(order)
    size += (-size) % 8
    eos = np.array([EOS])
    return ([np.concatenate([ids[s], eos]) for s in srcs], [np.concatenate([ids[t], eos]) for t in tgts], size)


def write_text(outdir, pairs, valid_pairs, seed):
    os.makedirs(outdir, exist_ok=True)
    for split, first, n in (('train', 0, pairs), ('valid', pairs, valid_pairs)):
        srcs, tgts = synth_ranks(n, seed, first=first)
        for side, sents in (('src', srcs), ('tgt', tgts)):
            with open(os.path.join(outdir, '%s.%s' % (split, side)), 'w') as f:
                f.write(''.join(' '.join('w%05d' % k for k in s.tolist()) + '\n' for s in sents))


# ---------------------------------------------------------------------------------------------
# A fairseq data-bin (mmap format, as fixtures/clinic/README.md describes it)
# ---------------------------------------------------------------------------------------------
_DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float32, 7: np.float64, 8: np.uint16}


def read_mmap(prefix):
    with open(prefix + '.idx', 'rb') as f:
        head = f.read(9 + 8 + 1 + 8)
        if head[:9] != b'MMIDIDX\x00\x00':
            raise ValueError('%s.idx: not a fairseq mmap index' % prefix)
        dtype = _DTYPES[head[17]]
        n = int(np.frombuffer(head[18:26], dtype='<u8')[0])
        sizes = np.frombuffer(f.read(4 * n), dtype='<i4').astype(np.int64)
        ptrs = np.frombuffer(f.read(8 * n), dtype='<i8')
    data = np.fromfile(prefix + '.bin', dtype=dtype)
    item = np.dtype(dtype).itemsize
    return [data[p // item:p // item + s].astype(np.int64) for p, s in zip(ptrs.tolist(), sizes.tolist())]


def read_data_bin(path, split='train'):
    names = os.listdir(path)
    pair = None
    for nm in sorted(names):
        parts = nm.split('.')
        if len(parts) >= 4 and parts[0] == split and parts[-1] == 'idx' and '-' in parts[1]:
            pair = parts[1]
            break
    if pair is None:
        raise SystemExit('%s: no %s split (fairseq mmap data-bin expected)' % (path, split))
    s, t = pair.split('-')
    with open(os.path.join(path, 'dict.%s.txt' % t)) as f:
        size = NSPECIAL + sum(1 for line in f if line.strip())
    src = read_mmap(os.path.join(path, '%s.%s.%s' % (split, pair, s)))
    tgt = read_mmap(os.path.join(path, '%s.%s.%s' % (split, pair, t)))
    return src, tgt, size


# ---------------------------------------------------------------------------------------------
# Batching: fairseq 0.8's (as train.Batches in xform), and static-shape buckets for CUDA graphs
# ---------------------------------------------------------------------------------------------
def fairseq_batches(src, tgt, max_tokens, seed, mult=8):
    sl = np.array([len(x) for x in src]); tl = np.array([len(x) for x in tgt])
    idx = np.random.RandomState(seed).permutation(len(src))
    idx = idx[np.argsort(tl[idx], kind='mergesort')]
    idx = idx[np.argsort(sl[idx], kind='mergesort')]
    batches, batch, lens, sample_len = [], [], [], 0
    for i in idx.tolist():
        n = max(sl[i], tl[i])
        lens.append(n)
        sample_len = max(sample_len, n)
        if batch and (len(batch) + 1) * sample_len > max_tokens:
            mod = max(mult * (len(batch) // mult), len(batch) % mult)
            batches.append(batch[:mod])
            batch, lens = batch[mod:], lens[mod:]
            sample_len = max(lens)
        batch.append(i)
    if batch:
        batches.append(batch)
    return batches


def epoch_order(batches, seed, epoch):
    perm = np.random.RandomState((seed + epoch) % 2**32).permutation(len(batches))
    return [batches[p] for p in perm]


def bucket_edges(src, tgt, k):
    m = np.array([max(len(a), len(b)) for a, b in zip(src, tgt)])
    lo, hi = int(m.min()), int(m.max())
    return sorted({int(math.ceil(lo + (hi - lo) * (j + 1) / k)) for j in range(k)})


def bucket_batches(src, tgt, max_tokens, seed, edges, mult=8):
    """Batches of one fixed [B_L, L] shape per bucket edge L (B_L = max_tokens // L, rounded
    down to a multiple of mult); the last incomplete batch of a bucket is dropped."""
    m = np.array([max(len(a), len(b)) for a, b in zip(src, tgt)])
    idx = np.random.RandomState(seed).permutation(len(src))
    out = []
    for j, L in enumerate(edges):
        lo = edges[j - 1] if j else 0
        members = [i for i in idx.tolist() if lo < m[i] <= L]
        B = max(mult, (max_tokens // L) // mult * mult)
        out += [(members[o:o + B], L) for o in range(0, len(members) - B + 1, B)]
    return out


def collate(ids, src, tgt, L=None):
    """Sources left-padded, targets right-padded, prev = </s> + target[:-1] (fairseq's collater,
    batch-first). With L every dimension is padded to L (static shapes)."""
    S = L or max(len(src[i]) for i in ids)
    T = L or max(len(tgt[i]) for i in ids)
    order = sorted(ids, key=lambda i: -len(src[i]))
    s = np.full((len(ids), S), PAD, dtype=np.int64)
    t = np.full((len(ids), T), PAD, dtype=np.int64)
    p = np.full((len(ids), T), PAD, dtype=np.int64)
    for r, i in enumerate(order):
        a, b = src[i], tgt[i]
        s[r, S - len(a):] = a
        t[r, :len(b)] = b
        p[r, 0] = EOS
        p[r, 1:len(b)] = b[:-1]
    sl = [len(src[i]) for i in order]; tl = [len(tgt[i]) for i in order]
    return s, p, t, sl, tl


def forward_flops(s, t, d, f, le, ld, vocab):
    """One pair's forward FLOPs, counted as internal/bench/flops.go does (train = 3x)."""
    enc = 2 * s * (4 * d * d + 2 * d * f) + 4 * s * s * d
    dec = 2 * t * (4 * d * d + 2 * d * f) + 4 * t * t * d + 2 * t * 2 * d * d + 2 * s * 2 * d * d + 4 * t * s * d
    return le * enc + ld * dec + 2 * t * d * vocab


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------
if torch is not None:
    HAVE_SDPA = hasattr(F, 'scaled_dot_product_attention')

    def sinusoids(rows, d):
        half = d // 2
        freq = torch.exp(torch.arange(half, dtype=torch.float) * -(math.log(10000.0) / (half - 1)))
        ang = torch.arange(rows, dtype=torch.float)[:, None] * freq[None, :]
        tab = torch.cat([torch.sin(ang), torch.cos(ang)], dim=1)
        if d % 2:
            tab = torch.cat([tab, torch.zeros(rows, 1)], dim=1)
        tab[PAD] = 0
        return tab

    class Profiler:
        """Admin's profiling state for one stack: the running ratio r."""
        def __init__(self):
            self.r = 1.0

    class Residual(nn.Module):
        """y = LN(ω ⊙ x + dropout(branch))."""
        def __init__(self, d, dropout):
            super().__init__()
            self.omega = nn.Parameter(torch.ones(d))
            self.ln = nn.LayerNorm(d)
            self.dropout = dropout

        def forward(self, x, branch, prof=None):
            if prof is not None:  # Admin profiling (no grad): ω ← r, r ← sqrt(Var(ω⊙x) + Var(branch))
                self.omega.data.fill_(prof.r)
                prof.r = math.sqrt(float((x.float() * prof.r).var(unbiased=False)) + float(branch.float().var(unbiased=False)))
            return self.ln(x * self.omega + F.dropout(branch, self.dropout, self.training))

    class Attention(nn.Module):
        def __init__(self, d, heads, dropout):
            super().__init__()
            self.h, self.d, self.p = heads, d, dropout
            self.in_proj = nn.Linear(d, 3 * d)
            self.out_proj = nn.Linear(d, d)
            nn.init.xavier_uniform_(self.in_proj.weight); nn.init.zeros_(self.in_proj.bias)
            nn.init.xavier_uniform_(self.out_proj.weight); nn.init.zeros_(self.out_proj.bias)

        def forward(self, x, kv=None, key_keep=None, causal=False):
            B, T, d = x.shape
            w, b = self.in_proj.weight, self.in_proj.bias
            if kv is None:
                q, k, v = F.linear(x, w, b).chunk(3, dim=-1)
            else:
                q = F.linear(x, w[:d], b[:d])
                k, v = F.linear(kv, w[d:], b[d:]).chunk(2, dim=-1)
            S = k.shape[1]
            hd = d // self.h
            q = q.view(B, T, self.h, hd).transpose(1, 2)
            k = k.view(B, S, self.h, hd).transpose(1, 2)
            v = v.view(B, S, self.h, hd).transpose(1, 2)
            p = self.p if self.training else 0.0
            if HAVE_SDPA:
                mask = None if key_keep is None else key_keep[:, None, None, :]
                o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=causal)
            else:  # torch < 2.0 (CPU check only)
                sc = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
                if key_keep is not None:
                    sc = sc.masked_fill(~key_keep[:, None, None, :], float('-inf'))
                if causal:
                    sc = sc.masked_fill(torch.ones(T, S, dtype=torch.bool, device=x.device).triu(1), float('-inf'))
                o = F.dropout(torch.softmax(sc.float(), -1).to(v.dtype), p, self.training) @ v
            return self.out_proj(o.transpose(1, 2).reshape(B, T, d))

    class FFN(nn.Module):
        def __init__(self, d, f, relu_dropout):
            super().__init__()
            self.fc1, self.fc2, self.p = nn.Linear(d, f), nn.Linear(f, d), relu_dropout
            for m in (self.fc1, self.fc2):
                nn.init.xavier_uniform_(m.weight); nn.init.zeros_(m.bias)

        def forward(self, x):
            return self.fc2(F.dropout(F.relu(self.fc1(x)), self.p, self.training))

    class EncoderLayer(nn.Module):
        def __init__(self, a):
            super().__init__()
            self.attn, self.ffn = Attention(a.embed_dim, a.heads, a.attention_dropout), FFN(a.embed_dim, a.ffn_dim, a.relu_dropout)
            self.r1, self.r2 = Residual(a.embed_dim, a.dropout), Residual(a.embed_dim, a.dropout)

        def forward(self, x, keep, prof=None):
            x = self.r1(x, self.attn(x, key_keep=keep), prof)
            return self.r2(x, self.ffn(x), prof)

    class DecoderLayer(nn.Module):
        def __init__(self, a):
            super().__init__()
            d = a.embed_dim
            self.self_attn, self.cross = Attention(d, a.heads, a.attention_dropout), Attention(d, a.heads, a.attention_dropout)
            self.ffn = FFN(d, a.ffn_dim, a.relu_dropout)
            self.r1, self.r2, self.r3 = (Residual(d, a.dropout) for _ in range(3))

        def forward(self, x, enc, keep, prof=None):
            x = self.r1(x, self.self_attn(x, causal=True), prof)
            x = self.r2(x, self.cross(x, kv=enc, key_keep=keep), prof)
            return self.r3(x, self.ffn(x), prof)

    class AdminTransformer(nn.Module):
        def __init__(self, a, vocab):
            super().__init__()
            d = a.embed_dim
            self.embed = nn.Embedding(vocab, d, padding_idx=PAD)
            nn.init.normal_(self.embed.weight, 0, d ** -0.5)
            with torch.no_grad():
                self.embed.weight[PAD].zero_()
            self.register_buffer('pos', sinusoids(1024 + PAD + 1, d), persistent=False)
            self.scale, self.p, self.eps = math.sqrt(d), a.dropout, a.label_smoothing
            self.enc = nn.ModuleList(EncoderLayer(a) for _ in range(a.encoder_layers))
            self.dec = nn.ModuleList(DecoderLayer(a) for _ in range(a.decoder_layers))

        def embed_tokens(self, tok):
            keep = tok.ne(PAD)
            positions = (torch.cumsum(keep.int(), dim=1) * keep.int()).long() + PAD
            return F.dropout(self.embed(tok) * self.scale + self.pos[positions], self.p, self.training), keep

        def forward(self, src, prev, target, prof=None):
            """Summed label-smoothed loss (nats) over the non-pad target tokens."""
            x, keep = self.embed_tokens(src)
            pe = Profiler() if prof else None
            for layer in self.enc:
                x = layer(x, keep, pe)
            y, _ = self.embed_tokens(prev)
            pd = Profiler() if prof else None
            for layer in self.dec:
                y = layer(y, x, keep, pd)
            logits = F.linear(y, self.embed.weight)
            return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), target.view(-1), ignore_index=PAD,
                                   label_smoothing=self.eps, reduction='sum')


# ---------------------------------------------------------------------------------------------
# Training loop and measurement
# ---------------------------------------------------------------------------------------------
def inverse_sqrt(step, lr, warmup, init=1e-7):
    """fairseq's inverse_sqrt: linear warm-up from init to lr over warmup updates, then lr*sqrt(warmup/step)."""
    if step < warmup:
        return init + step * (lr - init) / warmup
    return lr * math.sqrt(warmup) / math.sqrt(max(step, 1))


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--mode', default='eager', choices=['eager', 'compile', 'compile-cudagraphs'])
    ap.add_argument('--data', help='fairseq data-bin (its train split); default: the synthetic corpus')
    ap.add_argument('--pairs', type=int, default=20000, help='synthetic corpus: training pairs')
    ap.add_argument('--valid-pairs', type=int, default=500, help='synthetic corpus: validation pairs (--write-text)')
    ap.add_argument('--synthetic-seed', type=int, default=1)
    ap.add_argument('--write-text', metavar='DIR', help='write the synthetic corpus as text (as xform bench --write-text) and exit')
    ap.add_argument('--encoder-layers', type=int, default=6)
    ap.add_argument('--decoder-layers', type=int, default=6)
    ap.add_argument('--embed-dim', type=int, default=512)
    ap.add_argument('--ffn-dim', type=int, default=2048)
    ap.add_argument('--heads', type=int, default=8)
    ap.add_argument('--max-tokens', type=int, default=8192)
    ap.add_argument('--updates', type=int, default=100, help='timed updates')
    ap.add_argument('--warmup', type=int, default=10, help='untimed updates first (compile modes add 3 per bucket shape)')
    ap.add_argument('--seed', type=int, default=1111)
    ap.add_argument('--lr', type=float, default=1e-3)
    ap.add_argument('--warmup-updates', type=int, default=8000)
    ap.add_argument('--dropout', type=float, default=0.1)
    ap.add_argument('--attention-dropout', type=float, default=0.1)
    ap.add_argument('--relu-dropout', type=float, default=0.1)
    ap.add_argument('--label-smoothing', type=float, default=0.1)
    ap.add_argument('--clip-norm', type=float, default=0.0, help='0: the norm is computed (as fairseq logs it) but not applied')
    ap.add_argument('--init', default='adaptive', choices=['adaptive', 'default'], help='adaptive: Admin profiling of ω on the first batch')
    ap.add_argument('--buckets', type=int, default=3, help='compile modes: static [B, L] shapes (bucket edges over max(src, tgt) length)')
    ap.add_argument('--batching', choices=['auto', 'fairseq', 'bucket'], default='auto', help='auto: fairseq for eager, bucket for the compile modes')
    ap.add_argument('--dtype', choices=['auto', 'bf16', 'fp32'], default='auto', help='auto: bf16 autocast on CUDA, fp32 on the CPU')
    ap.add_argument('--device', default='cuda', help='cuda, cuda:N or cpu (cpu: a slow functional check)')
    ap.add_argument('--peak-tflops', type=float, default=790.0)
    ap.add_argument('--json', action='store_true', help='print the result as one JSON object on the last line')
    ap.add_argument('--verbose', action='store_true', help='one line per update on stderr')
    return ap.parse_args(argv)


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def main(argv=None):
    a = parse_args(argv)
    if a.write_text:
        write_text(a.write_text, a.pairs, a.valid_pairs, a.synthetic_seed)
        print('| wrote %s/{train,valid}.{src,tgt}: %d + %d synthetic pairs (seed %d)' % (a.write_text, a.pairs, a.valid_pairs, a.synthetic_seed))
        return 0
    if torch is None:
        log('torch_competitor: torch is not importable; install torch (2.x with CUDA) to run the competitor')
        return 3
    dev = torch.device(a.device)
    if dev.type == 'cuda' and not torch.cuda.is_available():
        log('torch_competitor: CUDA is not available to this torch (%s, built for CUDA %s); '
            'the competitor needs a GPU. --device cpu runs a slow functional check instead.' % (torch.__version__, torch.version.cuda))
        return 3
    compiling = a.mode != 'eager'
    if compiling and not hasattr(torch, 'compile'):
        log('torch_competitor: --mode %s needs torch.compile (torch >= 2.0); this torch is %s' % (a.mode, torch.__version__))
        return 3
    if a.mode == 'compile-cudagraphs' and dev.type != 'cuda':
        log('torch_competitor: --mode compile-cudagraphs needs CUDA')
        return 3
    bf16 = a.dtype == 'bf16' or (a.dtype == 'auto' and dev.type == 'cuda')
    torch.manual_seed(a.seed)
    np.random.seed(a.seed)
    if dev.type == 'cuda':
        # torch 2.11 refuses set_device('cuda') without an index
        torch.cuda.set_device(dev.index if dev.index is not None else 0)

    # Data
    t0 = time.time()
    if a.data:
        src, tgt, vocab = read_data_bin(a.data)
        desc = '%s (train, %d pairs)' % (a.data, len(src))
    else:
        src, tgt, vocab = synth_corpus(a.pairs, a.synthetic_seed)
        desc = 'synthetic (%d pairs, seed %d)' % (a.pairs, a.synthetic_seed)
    batching = a.batching if a.batching != 'auto' else ('bucket' if compiling else 'fairseq')
    if batching == 'fairseq':
        frozen = [(b, None) for b in fairseq_batches(src, tgt, a.max_tokens, a.seed)]
        edges = []
    else:
        edges = bucket_edges(src, tgt, a.buckets)
        frozen = bucket_batches(src, tgt, a.max_tokens, a.seed, edges)
    if not frozen:
        log('torch_competitor: no batch fits (too few pairs for --max-tokens)')
        return 3
    # Warm-up: every bucket shape 3 times first (compilation, CUDA-graph recording), then --warmup more.
    plan = []
    if compiling and edges:
        for L in edges:
            first = [b for b in frozen if b[1] == L][:1]
            plan += first * 3
    nwarm = len(plan) + a.warmup
    epoch = 1
    while len(plan) < nwarm + a.updates:
        plan += epoch_order(frozen, a.seed, epoch)
        epoch += 1
    plan = plan[:nwarm + a.updates]

    def to_dev(b):
        ids, L = b
        s, p, t, sl, tl = collate(ids, src, tgt, L)
        flops = 3 * sum(forward_flops(x, y, a.embed_dim, a.ffn_dim, a.encoder_layers, a.decoder_layers, vocab) for x, y in zip(sl, tl))
        return (torch.from_numpy(s).to(dev), torch.from_numpy(p).to(dev), torch.from_numpy(t).to(dev), sum(tl), sum(sl), flops, s.size + t.size)
    batches = [to_dev(b) for b in plan]  # collated and on the device before timing, as xform bench does
    data_s = time.time() - t0

    # Model, Admin profiling, optimizer
    model = AdminTransformer(a, vocab).to(dev)
    nparams = sum(p.numel() for p in model.parameters())
    if a.init == 'adaptive':
        model.train()
        with torch.no_grad():  # the first batch, dropout on, fp32: the fork's adaptive-profiling run
            model(batches[0][0], batches[0][1], batches[0][2], prof=True)
    opt_kw = dict(lr=a.lr, betas=(0.9, 0.98), eps=1e-8)
    fused = dev.type == 'cuda'
    try:
        opt = torch.optim.Adam(model.parameters(), fused=fused, **opt_kw) if fused else torch.optim.Adam(model.parameters(), **opt_kw)
    except (TypeError, RuntimeError):
        opt = torch.optim.Adam(model.parameters(), **opt_kw)
        fused = False
    model.train()
    fwd = model
    if a.mode == 'compile':
        fwd = torch.compile(model, dynamic=False)
    elif a.mode == 'compile-cudagraphs':
        fwd = torch.compile(model, mode='reduce-overhead', dynamic=False)
    if compiling:
        dynamo = importlib.import_module('torch._dynamo')
        dynamo.config.cache_size_limit = max(dynamo.config.cache_size_limit, 4 * len(edges) + 8)
    params = [p for p in model.parameters()]
    mark_step = getattr(getattr(torch, 'compiler', None), 'cudagraph_mark_step_begin', None)
    autocast = (lambda: torch.autocast(device_type=dev.type, dtype=torch.bfloat16)) if bf16 else None

    def step(i, b):
        s, p, t, ntok = b[0], b[1], b[2], b[3]
        for g in opt.param_groups:
            g['lr'] = inverse_sqrt(i, a.lr, a.warmup_updates)
        opt.zero_grad(set_to_none=True)
        if a.mode == 'compile-cudagraphs' and mark_step is not None:
            mark_step()
        if autocast:
            with autocast():
                loss = fwd(s, p, t)
        else:
            loss = fwd(s, p, t)
        (loss / ntok).backward()
        loss = loss.detach().clone()  # a CUDA graph's output is overwritten by its next replay
        if hasattr(torch, '_foreach_norm'):
            gnorm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm([q.grad for q in params if q.grad is not None])))
        else:
            gnorm = torch.norm(torch.stack([q.grad.norm() for q in params if q.grad is not None]))
        if a.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, a.clip_norm)
        opt.step()
        return loss, gnorm

    cuda = dev.type == 'cuda'
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    losses = []
    tw = time.time()
    for i in range(nwarm):
        loss, _ = step(i, batches[i])
        losses.append(loss)
        if a.verbose:
            sync(); log('| warm-up update %d: loss %.3f' % (i + 1, float(loss) / batches[i][3] / math.log(2)))
    sync()
    warm_s = time.time() - tw
    if cuda:
        ev = [torch.cuda.Event(enable_timing=True) for _ in range(a.updates + 1)]
        ev[0].record()
    per = []
    tt = time.perf_counter()
    last = time.perf_counter()
    for j in range(a.updates):
        i = nwarm + j
        loss, _ = step(i, batches[i])
        losses.append(loss)
        if cuda:
            ev[j + 1].record()
        else:
            now = time.perf_counter(); per.append(now - last); last = now
        if a.verbose:
            sync(); log('| update %d: loss %.3f' % (i + 1, float(loss) / batches[i][3] / math.log(2)))
    sync()
    secs = time.perf_counter() - tt
    if cuda:
        per = [ev[j].elapsed_time(ev[j + 1]) / 1e3 for j in range(a.updates)]
    timed = batches[nwarm:]
    ttok = sum(b[3] for b in timed)
    flops = sum(b[5] for b in timed)
    slots = sum(b[6] for b in timed)
    per_sorted = sorted(per)
    n = len(per_sorted)
    p50 = per_sorted[n // 2] if n % 2 else (per_sorted[n // 2 - 1] + per_sorted[n // 2]) / 2
    first_loss = float(losses[0]) / batches[0][3] / math.log(2)
    last_loss = float(losses[-1]) / batches[-1][3] / math.log(2)
    res = {
        'mode': a.mode, 'framework': 'torch %s' % torch.__version__, 'date': datetime.now(timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ'),
        'device': torch.cuda.get_device_name(dev) if cuda else 'cpu', 'dtype': 'bf16 autocast' if bf16 else 'fp32',
        'fused_adam': fused, 'sdpa': HAVE_SDPA, 'batching': batching, 'bucket_lengths': edges,
        'model': {'arch': 'transformer_wmt_en_de', 'init': a.init, 'encoder_layers': a.encoder_layers, 'decoder_layers': a.decoder_layers,
                  'embed_dim': a.embed_dim, 'ffn_dim': a.ffn_dim, 'heads': a.heads, 'vocab': vocab, 'params': nparams},
        'data': desc, 'max_tokens': a.max_tokens, 'warmup_updates': nwarm, 'updates': a.updates,
        'target_tokens': ttok, 'source_tokens': sum(b[4] for b in timed), 'seconds': secs,
        'target_tokens_per_s': ttok / secs, 'updates_per_s': a.updates / secs,
        'ms_per_update_mean': 1e3 * sum(per) / n, 'ms_per_update_p50': 1e3 * p50,
        'ms_per_update_min': 1e3 * per_sorted[0], 'ms_per_update_max': 1e3 * per_sorted[-1],
        'target_tokens_per_update': ttok / a.updates, 'padding_fraction': 1 - (ttok + sum(b[4] for b in timed)) / max(slots, 1),
        'flops_per_target_token': flops / max(ttok, 1), 'six_n_per_target_token': 6 * nparams,
        'model_tflops_per_s': flops / secs / 1e12, 'peak_tflops': a.peak_tflops, 'mfu': flops / secs / 1e12 / a.peak_tflops,
        'first_loss': first_loss, 'last_loss': last_loss, 'setup_seconds': data_s, 'warmup_seconds': warm_s,
        'memory': {'peak_rss_bytes': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024},
    }
    if cuda:
        # peaks over the whole run (profiling, compilation and warm-up included), as xform bench reports
        res['memory']['device'] = {'peak_allocated_bytes': torch.cuda.max_memory_allocated(), 'peak_held_bytes': torch.cuda.max_memory_reserved()}
    print('| torch %s %s on %s, %s, %dL-%dL d %d, vocab %d, %d params, data %s, %s batching%s' % (
        a.mode, res['dtype'], res['device'], a.init, a.encoder_layers, a.decoder_layers, a.embed_dim, vocab, nparams, desc, batching,
        (' (lengths %s)' % edges) if edges else ''))
    print('| warm-up %d updates %.1f s | target tokens/s %.0f | updates/s %.2f | ms/update mean %.1f p50 %.1f | target tokens/update %.0f | padding %.1f%%' % (
        nwarm, warm_s, res['target_tokens_per_s'], res['updates_per_s'], res['ms_per_update_mean'], res['ms_per_update_p50'],
        res['target_tokens_per_update'], 100 * res['padding_fraction']))
    mem = ''
    if cuda:
        mem = ' | max allocated %.2f GiB, reserved %.2f GiB' % (res['memory']['device']['peak_allocated_bytes'] / 2**30,
                                                                res['memory']['device']['peak_held_bytes'] / 2**30)
    print('| model FLOPs %.1f MFLOP/target token | %.1f TFLOP/s | MFU %.2f%% of %.0f | loss %.3f -> %.3f bits | peak RSS %.2f GiB%s' % (
        res['flops_per_target_token'] / 1e6, res['model_tflops_per_s'], 100 * res['mfu'], a.peak_tflops, first_loss, last_loss,
        res['memory']['peak_rss_bytes'] / 2**30, mem), flush=True)
    if a.json:
        print(json.dumps(res), flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
