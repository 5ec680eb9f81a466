#!/usr/bin/env python3
"""Make small torch-written files for xform's reader tests (run with real torch on the GPU machine).

Usage: python3 make_torch_files.py FIXTURES_DIR OUT_DIR
Writes into OUT_DIR:
  tensors_zip.pt, tensors_legacy.pt   one dict of tensors of every dtype, views, tied storages,
                                      saved with torch's zip and legacy (_use_new_zipfile_serialization=False) writers
  tensors_expected.json               dtype, shape and contiguous little-endian bytes (hex) of each tensor
  a_admin_legacy.pt                   runs/a_admin/ckpt/checkpoint_last.pt re-saved in the legacy format
  a_admin_fp16.pt                     the same checkpoint with the model state in fp16 (as --fp16 training stores it)
  b_postln_cfg.pt                     runs/b_postln checkpoint reshaped into the fairseq 0.12 layout
                                      (args None, cfg dicts with cfg['model'] a Namespace, split q/k/v names)
  versions.json                       torch/numpy versions
No fairseq code is needed: fairseq.meters classes are stand-ins so the checkpoints unpickle and re-pickle
under their original names.
"""
import argparse, collections, json, sys, types

import numpy as np
import torch

fx, out = sys.argv[1], sys.argv[2]

# Stand-ins for the classes Clinic checkpoints pickle (module fairseq.meters).
fm = types.ModuleType("fairseq.meters")
for n in ("AverageMeter", "TimeMeter", "StopwatchMeter"):
    setattr(fm, n, type(n, (object,), {"__module__": "fairseq.meters"}))
pkg = types.ModuleType("fairseq"); pkg.meters = fm
sys.modules["fairseq"] = pkg; sys.modules["fairseq.meters"] = fm

g = torch.Generator().manual_seed(1234)
w = torch.randn(3, 4, generator=g)
d = collections.OrderedDict()
d["f32"] = w
d["f16"] = torch.randn(5, generator=g).half()
d["bf16"] = torch.randn(2, 3, generator=g).bfloat16()
d["f64"] = torch.randn(4, generator=g).double()
d["i64"] = torch.arange(-3, 3, dtype=torch.int64)
d["i32"] = torch.arange(7, dtype=torch.int32) * -5
d["u8"] = torch.arange(250, 256, dtype=torch.uint8)
d["bool"] = torch.tensor([True, False, True])
d["i8"] = torch.tensor([-128, 0, 127], dtype=torch.int8)
d["row_view"] = w[1]            # offset view into f32's storage
d["transposed"] = w.t()         # strided view
d["tied"] = w                   # same storage again
d["scalar"] = torch.tensor(2.5)
d["empty"] = torch.zeros(0, 3)
obj = {"tensors": d, "meta": {"n": 3, "name": "x", "floats": [1.5, -0.0], "nested": (1, (2, None))}}
torch.save(obj, f"{out}/tensors_zip.pt")
torch.save(obj, f"{out}/tensors_legacy.pt", _use_new_zipfile_serialization=False)
exp = {k: {"dtype": str(v.dtype).replace("torch.", ""), "shape": list(v.shape),
           "hex": v.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes().hex() if v.numel() else ""}
       for k, v in d.items()}
json.dump(exp, open(f"{out}/tensors_expected.json", "w"), indent=1)

ck = torch.load(f"{fx}/runs/a_admin/ckpt/checkpoint_last.pt", map_location="cpu", weights_only=False)
torch.save(ck, f"{out}/a_admin_legacy.pt", _use_new_zipfile_serialization=False)
half = dict(ck)
half["model"] = collections.OrderedDict((k, v.half()) for k, v in ck["model"].items())
# A real --fp16 run keeps the tied embedding as one storage; keep that tie.
half["model"]["decoder.embed_tokens.weight"] = half["model"]["encoder.embed_tokens.weight"]
half["args"] = argparse.Namespace(**{**vars(ck["args"]), "fp16": True})
torch.save(half, f"{out}/a_admin_fp16.pt")

b = torch.load(f"{fx}/runs/b_postln/ckpt/checkpoint_last.pt", map_location="cpu", weights_only=False)
sd = collections.OrderedDict()
for k, v in b["model"].items():
    if k.endswith("in_proj_weight") or k.endswith("in_proj_bias"):
        base, kind = k.rsplit(".", 1)
        suf = "weight" if kind == "in_proj_weight" else "bias"
        q, kk, vv = v.chunk(3, dim=0)
        sd[f"{base}.q_proj.{suf}"] = q.clone(); sd[f"{base}.k_proj.{suf}"] = kk.clone(); sd[f"{base}.v_proj.{suf}"] = vv.clone()
    else:
        sd[k] = v
sd["decoder.output_projection.weight"] = sd["decoder.embed_tokens.weight"]
mns = argparse.Namespace(**{**vars(b["args"]), "_name": b["args"].arch})
cfg = {"_name": None, "common": {"_name": None, "fp16": False, "seed": 1111},
       "model": mns,
       "task": {"_name": "translation", "data": "data-bin", "source_lang": "src", "target_lang": "tgt",
                "left_pad_source": True, "max_source_positions": 1024, "max_target_positions": 1024},
       "optimization": {"_name": None, "lr": [0.003], "max_update": 1000}}
new = {"args": None, "cfg": cfg, "model": sd, "criterion": None,
       "optimizer_history": b["optimizer_history"], "task_state": {},
       "extra_state": {"metrics": {}, "previous_training_time": 12.5,
                       "train_iterator": b["extra_state"]["train_iterator"], "val_loss": b["extra_state"]["val_loss"]},
       "last_optimizer_state": b["last_optimizer_state"]}
torch.save(new, f"{out}/b_postln_cfg.pt")
json.dump({"torch": torch.__version__, "numpy": np.__version__}, open(f"{out}/versions.json", "w"))
print("made", sorted(__import__("os").listdir(out)))
