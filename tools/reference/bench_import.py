#!/usr/bin/env python3
"""Benchmark `xform import` against torch.load on a 6L-6L transformer_wmt_en_de Clinic-layout
checkpoint with optimizer state (random weights, same keys, shapes and dtypes as a Clinic
fp32 RAdam checkpoint_last.pt). Run on the GPU machine:

  python3 bench_import.py XFORM_BINARY WORKDIR > result.txt

Prints wall time and peak RSS of each (3 runs each, median), in one run on one machine.
"""
import argparse, collections, json, os, resource, statistics, subprocess, sys, time, types
import torch

xform, work = sys.argv[1], sys.argv[2]
os.makedirs(work, exist_ok=True)
fm = types.ModuleType("fairseq.meters")
for n in ("AverageMeter", "TimeMeter", "StopwatchMeter"):
    setattr(fm, n, type(n, (object,), {"__module__": "fairseq.meters"}))
pkg = types.ModuleType("fairseq"); pkg.meters = fm
sys.modules["fairseq"] = pkg; sys.modules["fairseq.meters"] = fm

V, d, F, L = 32008, 512, 2048, 6
sd = collections.OrderedDict()
def add(k, *shape):
    sd[k] = torch.randn(*shape) * 0.02
sd["encoder.version"] = torch.tensor([3.0])
add("encoder.embed_tokens.weight", V, d)
sd["encoder.embed_positions._float_tensor"] = torch.zeros(1)
for side, n in (("encoder", L), ("decoder", L)):
    if side == "decoder":
        sd["decoder.version"] = torch.tensor([3.0])
        sd["decoder.embed_tokens.weight"] = sd["encoder.embed_tokens.weight"]
        sd["decoder.embed_positions._float_tensor"] = torch.zeros(1)
    for i in range(n):
        p = f"{side}.layers.{i}."
        ratios = ["attention_ratio_change", "fc_ratio_change"] if side == "encoder" else ["self_ratio_change", "encoder_ratio_change", "fc_ratio_change"]
        for r in ratios:
            sd[p + r] = torch.ones(d) * 1.5
        attns = ["self_attn"] if side == "encoder" else ["self_attn", "encoder_attn"]
        for a in attns:
            add(p + a + ".in_proj_weight", 3 * d, d); add(p + a + ".in_proj_bias", 3 * d)
            add(p + a + ".out_proj.weight", d, d); add(p + a + ".out_proj.bias", d)
        add(p + "fc1.weight", F, d); add(p + "fc1.bias", F); add(p + "fc2.weight", d, F); add(p + "fc2.bias", d)
        lns = ["self_attn_layer_norm", "final_layer_norm"] if side == "encoder" else ["self_attn_layer_norm", "encoder_attn_layer_norm", "final_layer_norm"]
        for ln in lns:
            sd[p + ln + ".weight"] = torch.ones(d); sd[p + ln + ".bias"] = torch.zeros(d)
a = torch.load(os.environ["TEMPLATE"], map_location="cpu", weights_only=False)["args"]
args = argparse.Namespace(**{**vars(a), "arch": "transformer_wmt_en_de", "encoder_embed_dim": d, "decoder_embed_dim": d,
                             "encoder_ffn_embed_dim": F, "decoder_ffn_embed_dim": F, "encoder_attention_heads": 8,
                             "decoder_attention_heads": 8, "encoder_layers": L, "decoder_layers": L, "init_type": "adaptive",
                             "decoder_output_dim": d, "decoder_input_dim": d})
params = [v for k, v in sd.items() if "version" not in k and "_float_tensor" not in k and k != "decoder.embed_tokens.weight"]
state = {i: {"step": 1000, "exp_avg": torch.randn_like(p), "exp_avg_sq": torch.rand_like(p)} for i, p in enumerate(params)}
ck = {"args": args, "model": sd,
      "optimizer_history": [{"criterion_name": "LabelSmoothedCrossEntropyCriterion", "optimizer_name": "FairseqRAdam",
                             "lr_scheduler_state": {"best": 3.0}, "num_updates": 1000}],
      "extra_state": {"train_iterator": {"epoch": 3, "iterations_in_epoch": 10}, "val_loss": 3.1, "best": 3.0,
                      "train_meters": collections.OrderedDict(wps=fm.TimeMeter())},
      "last_optimizer_state": {"state": state, "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.98), "eps": 1e-8,
                                "weight_decay": 0.0, "amsgrad": False, "params": list(range(len(params)))}]}}
path = f"{work}/checkpoint_last.pt"
torch.save(ck, path)
size = os.path.getsize(path)
print(f"checkpoint: {size} bytes, {sum(p.numel() for p in params)} parameters, torch {torch.__version__}")

PEAK = "import resource,subprocess,sys,time; t=time.perf_counter(); subprocess.run(sys.argv[1:],check=True,stdout=subprocess.DEVNULL); print(time.perf_counter()-t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"

def measure(cmd):
    """Wall time and peak RSS (KiB) of one child process, via a fresh wrapper each time."""
    r = subprocess.run([sys.executable, "-c", PEAK] + cmd, capture_output=True, text=True)
    if r.returncode != 0:
        subprocess.run(cmd)  # show the child's own error
        raise SystemExit(f"failed: {cmd}")
    out = r.stdout.split()
    return float(out[0]), int(out[1])

stub = "import sys,types;fm=types.ModuleType('fairseq.meters'); [setattr(fm,n,type(n,(object,),{'__module__':'fairseq.meters'})) for n in ('AverageMeter','TimeMeter','StopwatchMeter')]; p=types.ModuleType('fairseq'); p.meters=fm; sys.modules['fairseq']=p; sys.modules['fairseq.meters']=fm; import torch,time; "
torch_code = stub + f"t=time.perf_counter(); torch.load('{path}', map_location='cpu', weights_only=False); print('LOAD', time.perf_counter()-t, file=sys.stderr)"
rows = []
for name, cmd in (("torch.load (process)", [sys.executable, "-c", torch_code]),
                  ("xform import", [xform, "import", path, "-o", f"{work}/imported", "--force"]),
                  ("xform inspect", [xform, "inspect", path])):
    ts, rs = [], []
    for _ in range(3):
        t, r = measure(cmd)
        ts.append(t); rs.append(r)
    rows.append((name, statistics.median(ts), max(rs)))
    print(f"{name}: median wall {statistics.median(ts):.3f} s (3 runs), peak RSS {max(rs)/1024:.1f} MiB = {max(rs)*1024/size:.3f} x file size")
# torch.load's own time, without interpreter start and `import torch`
lt = []
for _ in range(3):
    r = subprocess.run([sys.executable, "-c", torch_code], check=True, capture_output=True, text=True)
    lt.append(float(r.stderr.split("LOAD")[1].split()[0]))
tl = statistics.median(lt)
print(f"torch.load call alone (in-process, excludes python start and import torch): median {tl:.3f} s")
xi = rows[1][1]
print(f"ratio xform import / torch.load call: {xi/tl:.3f}; / torch.load process: {xi/rows[0][1]:.3f}")
print(f"ratio xform inspect / torch.load call: {rows[2][1]/tl:.3f}")
