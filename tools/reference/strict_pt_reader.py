#!/usr/bin/env python3
"""Strict reader for torch zip (.pt) files, written with the Python standard library only.

It checks what torch.save (torch 2.11) writes and what torch.load relies on, more strictly
than torch itself:

* the container: one top-level folder, every record STORED, record order data.pkl,
  .format_version, .storage_alignment, byteorder, data/0..N-1 (numeric order, each key
  used), version, .data/serialization_id; every record's data 64-byte aligned; CRC-32 of
  every record; version 3, byteorder little;
* the pickle: protocol 2, only allowed globals (mapped to inert stand-ins, nothing is
  imported or called), persistent ids ('storage', <torch.*Storage>, key, location, numel)
  whose byte size fits the record, tensor views inside their storage.

--weights-only restricts the globals to what torch's default weights_only=True unpickler
accepts for these files (no argparse.Namespace, no fairseq.*, no numpy).

Output (--json): {"top_level": [...], "globals": [...], "tensors": {path: {"dtype", "shape",
"sha256"}}} where path names the tensor's place in the tree (e.g. model/encoder.version)
and sha256 is over its elements in row-major order. Exit status 0 when the file passes,
1 with a message on stderr otherwise.
"""
import argparse
import hashlib
import io
import json
import pickle
import struct
import sys
import zipfile

ELEM = {
    "FloatStorage": ("float32", 4), "HalfStorage": ("float16", 2), "BFloat16Storage": ("bfloat16", 2),
    "DoubleStorage": ("float64", 8), "LongStorage": ("int64", 8), "IntStorage": ("int32", 4),
    "ShortStorage": ("int16", 2), "CharStorage": ("int8", 1), "ByteStorage": ("uint8", 1),
    "BoolStorage": ("bool", 1),
}


class Failure(Exception):
    pass


class StorageType:
    def __init__(self, name):
        self.name = name
        self.dtype, self.size = ELEM[name]


class Storage:
    def __init__(self, stype, key, data, numel):
        self.stype, self.key, self.data, self.numel = stype, key, data, numel


class TensorStandIn:
    def __init__(self, storage, offset, size, stride, requires_grad):
        self.storage, self.offset = storage, offset
        self.size, self.stride = tuple(size), tuple(stride)
        self.requires_grad = requires_grad
        numel = 1
        last = offset
        for s, st in zip(self.size, self.stride):
            if s < 0 or st < 0:
                raise Failure("negative size/stride %r %r" % (size, stride))
            numel *= s
            last += (s - 1) * st if s > 0 else 0
        if numel > 0 and last >= storage.numel:
            raise Failure("tensor view %r/%r at %d reaches past its %d-element storage" % (size, stride, offset, storage.numel))
        self.numel = numel

    def tobytes(self):
        es = self.storage.stype.size
        d = self.storage.data
        if self.numel == 0:
            return b""
        want, contiguous = 1, True
        for sz, st in reversed(list(zip(self.size, self.stride))):
            if sz != 1 and st != want:
                contiguous = False
            want *= sz
        if contiguous:
            return bytes(d[self.offset * es:(self.offset + self.numel) * es])
        out = bytearray()
        idx = [0] * len(self.size)
        for _ in range(self.numel):
            pos = self.offset + sum(i * s for i, s in zip(idx, self.stride))
            out += d[pos * es:(pos + 1) * es]
            for k in range(len(idx) - 1, -1, -1):
                idx[k] += 1
                if idx[k] < self.size[k]:
                    break
                idx[k] = 0
        return bytes(out)


class Instance:
    """An inert instance of an allowed class (argparse.Namespace, fairseq meters)."""

    def __init__(self, cls):
        self.cls = cls
        self.state = None

    def __setstate__(self, state):
        self.state = state


def make_class(module, name):
    def new(cls, *args):
        return Instance("%s.%s" % (module, name))
    return type(name, (), {"__new__": new})


class BytesStandIn:
    pass


def codecs_encode(s, enc):
    if enc != "latin1":
        raise Failure("_codecs.encode with %r" % enc)
    return s.encode("latin1")


def ordered_dict(*args):
    from collections import OrderedDict
    if args:
        raise Failure("OrderedDict called with arguments")
    return OrderedDict()


def rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks, metadata=None):
    if not isinstance(storage, Storage):
        raise Failure("_rebuild_tensor_v2 storage is %r" % type(storage))
    if hooks:
        raise Failure("tensor with backward hooks")
    return TensorStandIn(storage, offset, size, stride, requires_grad)


class StrictUnpickler(pickle.Unpickler):
    def __init__(self, f, records, prefix, weights_only):
        super().__init__(f)
        self.records, self.prefix, self.weights_only = records, prefix, weights_only
        self.storages = {}
        self.globals = set()

    def find_class(self, module, name):
        self.globals.add("%s.%s" % (module, name))
        if module == "torch" and name in ELEM:
            return StorageType(name)
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return rebuild_tensor_v2
        if (module, name) == ("collections", "OrderedDict"):
            return ordered_dict
        if (module, name) == ("_codecs", "encode"):
            return codecs_encode
        if module in ("__builtin__", "builtins") and name in ("set", "frozenset"):
            return {"set": set, "frozenset": frozenset}[name]
        if not self.weights_only:
            if (module, name) == ("argparse", "Namespace") or module == "fairseq.meters":
                return make_class(module, name)
        raise Failure("global %s.%s is not allowed%s" % (module, name, " with --weights-only" if self.weights_only else ""))

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or len(pid) != 5 or pid[0] != "storage":
            raise Failure("bad persistent id %r" % (pid,))
        _, stype, key, location, numel = pid
        if not isinstance(stype, StorageType):
            raise Failure("persistent id storage type %r" % (stype,))
        if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
            raise Failure("persistent id %r" % (pid,))
        if location != "cpu":
            raise Failure("storage %s has location %r, want 'cpu'" % (key, location))
        if key in self.storages:
            s = self.storages[key]
            if s.stype.name != stype.name or s.numel != numel:
                raise Failure("storage %s referenced with two types/sizes" % key)
            return s
        name = self.prefix + "data/" + key
        if name not in self.records:
            raise Failure("missing record %s" % name)
        data = self.records[name]
        if len(data) != numel * stype.size:
            raise Failure("record %s has %d bytes, %d %s elements need %d" % (name, len(data), numel, stype.dtype, numel * stype.size))
        s = Storage(stype, key, data, numel)
        self.storages[key] = s
        return s


def check_container(path):
    raw = open(path, "rb").read()
    z = zipfile.ZipFile(io.BytesIO(raw))
    infos = z.infolist()
    if not infos:
        raise Failure("empty archive")
    prefix = infos[0].filename.split("/", 1)[0] + "/"
    records = {}
    names = []
    for info in infos:
        if not info.filename.startswith(prefix):
            raise Failure("record %s outside folder %s" % (info.filename, prefix))
        if info.compress_type != zipfile.ZIP_STORED:
            raise Failure("record %s is compressed" % info.filename)
        off = info.header_offset
        sig, = struct.unpack("<I", raw[off:off + 4])
        if sig != 0x04034B50:
            raise Failure("bad local header for %s" % info.filename)
        nlen, elen = struct.unpack("<HH", raw[off + 26:off + 30])
        data_off = off + 30 + nlen + elen
        if data_off % 64:
            raise Failure("record %s data at %d is not 64-byte aligned" % (info.filename, data_off))
        records[info.filename] = z.read(info)  # verifies the CRC-32
        names.append(info.filename[len(prefix):])
    keys = [n[5:] for n in names if n.startswith("data/")]
    want = ["data.pkl", ".format_version", ".storage_alignment", "byteorder"] + \
        ["data/%d" % i for i in range(len(keys))] + ["version", ".data/serialization_id"]
    if names != want:
        raise Failure("record order %s, want %s" % (names, want))
    if records[prefix + "version"] != b"3\n":
        raise Failure("version record %r" % records[prefix + "version"])
    if records[prefix + "byteorder"] != b"little":
        raise Failure("byteorder %r" % records[prefix + "byteorder"])
    if records[prefix + ".storage_alignment"] != b"64" or records[prefix + ".format_version"] != b"1":
        raise Failure("format records")
    sid = records[prefix + ".data/serialization_id"]
    if len(sid) != 40 or not sid.isdigit():
        raise Failure("serialization_id %r" % sid)
    return records, prefix, keys


def walk(v, path, out):
    if isinstance(v, TensorStandIn):
        b = v.tobytes()
        out[path] = {"dtype": v.storage.stype.dtype, "shape": list(v.size), "sha256": hashlib.sha256(b).hexdigest()}
    elif isinstance(v, dict):
        for k, x in v.items():
            walk(x, "%s/%s" % (path, k) if path else str(k), out)
    elif isinstance(v, (list, tuple)):
        for i, x in enumerate(v):
            walk(x, "%s/%d" % (path, i), out)
    elif isinstance(v, Instance):
        walk(v.state, path, out)


def read(path, weights_only=False):
    records, prefix, keys = check_container(path)
    pkl = records[prefix + "data.pkl"]
    if pkl[:2] != b"\x80\x02":
        raise Failure("data.pkl is not a protocol-2 pickle")
    up = StrictUnpickler(io.BytesIO(pkl), records, prefix, weights_only)
    root = up.load()
    used = sorted(up.storages, key=int)
    if used != sorted(keys, key=int) or used != [str(i) for i in range(len(used))]:
        raise Failure("storage keys used %s, records %s (want 0..N-1, each used)" % (used, keys))
    tensors = {}
    walk(root, "", tensors)
    top = list(root.keys()) if isinstance(root, dict) else []
    return {"top_level": top, "globals": sorted(up.globals), "tensors": tensors}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--weights-only", action="store_true")
    ap.add_argument("--json", action="store_true", help="print the summary of the (last) file as JSON")
    a = ap.parse_args()
    summary = None
    for f in a.files:
        try:
            summary = read(f, a.weights_only)
        except (Failure, pickle.UnpicklingError, zipfile.BadZipFile, KeyError, ValueError, EOFError) as e:
            print("%s: FAIL: %s" % (f, e), file=sys.stderr)
            sys.exit(1)
        if not a.json:
            print("%s: ok (%d tensors)" % (f, len(summary["tensors"])))
    if a.json:
        json.dump(summary, sys.stdout, indent=1, sort_keys=True)


if __name__ == "__main__":
    main()
