#!/usr/bin/env python3
"""Make fixtures/torch/b_postln_dictconfig.pt: the fairseq-0.12-layout fixture (b_postln_cfg.pt,
written by real torch) with its cfg replaced by a pickled omegaconf DictConfig, as fairseq masters
of 2020-10..2021-03 saved it. Needs only the standard library and omegaconf (no torch): the torch
zip is rewritten record by record and the pickle's tensor persistent ids are carried through unchanged.

usage: make_dictconfig_ckpt.py fixtures/torch/b_postln_cfg.pt fixtures/torch/b_postln_dictconfig.pt
"""
import argparse, io, pickle, sys, zipfile
from omegaconf import OmegaConf

src, dst = sys.argv[1], sys.argv[2]

class Stub:
    """Stands in for any class of the torch pickle; re-pickles under its original name."""
    def __init__(self, *a): self.a = a

def stub_class(module, name):
    cls = type(name, (Stub,), {"__module__": module, "__reduce__": lambda self: (cls, self.a)})
    return cls

class Load(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in {("argparse", "Namespace"), ("collections", "OrderedDict")}:
            return super().find_class(module, name)
        c = stub_class(module, name)
        sys.modules.setdefault(module, type(sys)(module))
        setattr(sys.modules[module], name, c)
        return c
    def persistent_load(self, pid):
        return ("PID", pid)

class Dump(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, tuple) and len(obj) == 2 and obj[0] == "PID":
            return obj[1]
        return None

zin = zipfile.ZipFile(src)
prefix = [n for n in zin.namelist() if n.endswith("/data.pkl")][0][:-len("data.pkl")]
obj = Load(io.BytesIO(zin.read(prefix + "data.pkl"))).load()
cfg = obj["cfg"]
model = vars(cfg["model"]).copy()  # a Namespace in the 0.12 fixture; a DictConfig node here
cfg = dict(cfg, model=model)
obj["cfg"] = OmegaConf.create(cfg, flags={"allow_objects": True})
buf = io.BytesIO()
Dump(buf, protocol=2).dump(obj)
with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
    new = dst.rsplit("/", 1)[-1].rsplit(".", 1)[0] + "/"
    for n in zin.namelist():
        data = buf.getvalue() if n == prefix + "data.pkl" else zin.read(n)
        zout.writestr(new + n[len(prefix):], data)
print("wrote", dst)
