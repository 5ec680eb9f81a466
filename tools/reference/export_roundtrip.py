#!/usr/bin/env python3
"""Round trip of xform's fairseq exports through real torch and the Clinic fork.

Run on the GPU machine through export_roundtrip.sh (which sets the environment):

  CLINIC  a Transformer-Clinic checkout, patched as fixtures/clinic/README.md says
  XFORM   the xform binary (static build)
  OUT     a work directory (created)
  FAIRSEQ012_PY (optional) a python whose `fairseq` is 0.12.x, for the fairseq-0.12 files

What it does, for the fixture runs a_admin (Admin), b_postln and c_preln:

 1. xform writes: the Clinic profile without folding (a), folded exports for fairseq-0.10
    (b) and fairseq-0.12 (c), a weights-only file, and for a_admin a --keep-architecture
    fold (informational: it is approximate by design).
 2. torch.load of every file with weights_only=False, weights_only=True (expected to
    fail exactly for files holding an argparse.Namespace) and mmap=True; unfolded
    exports must hold tensors equal (torch.equal, same dtype) to the fixture checkpoint's.
 3. The fork's generate.py (--beam 4 --cpu --batch-size 128, test subset) on (a), on the
    unfolded re-exports and on (b) built with the fork's default init: the hypotheses must
    be the SAME as the fixture's gen_beam4_cpu.txt (scores are printed with their max
    difference). With FAIRSEQ012_PY, fairseq 0.12's generate on (c) too.

Exit status 0 when every check passes; a summary table is printed and written to
OUT/summary.json.
"""
import json
import os
import re
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
FX = os.path.normpath(os.path.join(HERE, "..", "..", "fixtures", "clinic"))
RUNS = ["a_admin", "b_postln", "c_preln"]

results = []


def record(name, ok, detail=""):
    results.append({"check": name, "ok": bool(ok), "detail": detail})
    print("%-70s %s %s" % (name, "ok  " if ok else "FAIL", detail), flush=True)


def sh(cmd, cwd=None, env=None, check=True):
    p = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if check and p.returncode != 0:
        raise RuntimeError("%s failed (%d):\n%s" % (" ".join(cmd), p.returncode, p.stdout[-4000:]))
    return p


def exports(xform, out):
    """Writes every export; returns {label: (path, kind)}."""
    files = {}
    for run in RUNS:
        src = os.path.join(FX, "runs", run, "ckpt", "checkpoint_last.pt")
        admin = run == "a_admin"
        jobs = [("clinic", ["export", "--fairseq", src, "--target", "clinic"], "same")]
        if admin:
            jobs += [
                ("fold010", ["fold", src, "--target", "fairseq-0.10", "--data", os.path.join(FX, "data-bin")], "fold"),
                ("fold012", ["fold", src, "--target", "fairseq-0.12"], "fold"),
                ("foldkeep", ["fold", src, "--keep-architecture", "--data", os.path.join(FX, "data-bin")], "approx"),
                ("weights", ["export", "--fairseq", src, "--weights-only"], "same"),
            ]
        else:
            jobs += [
                ("f010", ["export", "--fairseq", src, "--target", "fairseq-0.10"], "same"),
                ("f012", ["export", "--fairseq", src, "--target", "fairseq-0.12"], "same012"),
                ("weights", ["export", "--fairseq", src, "--weights-only"], "same"),
            ]
        for label, args, kind in jobs:
            d = os.path.join(out, run + "_" + label)
            os.makedirs(d, exist_ok=True)
            path = os.path.join(d, "checkpoint.pt")
            p = sh([xform] + args + ["-o", path, "--force"], check=False)
            with open(os.path.join(d, "xform.log"), "w") as f:
                f.write(p.stdout)
            record("xform %s %s" % (run, label), p.returncode == 0, "" if p.returncode == 0 else p.stdout[-300:])
            if p.returncode == 0:
                files[run + "_" + label] = (path, kind, run)
    return files


def torch_checks(files):
    import argparse
    import torch

    for label, (path, kind, run) in sorted(files.items()):
        try:
            full = torch.load(path, map_location="cpu", weights_only=False)
            record("torch.load weights_only=False %s" % label, True)
        except Exception as e:  # noqa: BLE001 - report any failure
            record("torch.load weights_only=False %s" % label, False, repr(e)[:200])
            continue
        has_ns = isinstance(full.get("args"), argparse.Namespace) or _has_namespace(full.get("cfg"))
        try:
            torch.load(path, map_location="cpu", weights_only=True)
            wo_ok = True
            err = ""
        except Exception as e:  # noqa: BLE001
            wo_ok = False
            err = repr(e)[:120]
        record("torch.load weights_only=True %s (expect %s)" % (label, "fail: Namespace" if has_ns else "ok"),
               wo_ok != has_ns, err)
        try:
            torch.load(path, map_location="cpu", weights_only=False, mmap=True)
            record("torch.load mmap=True %s" % label, True)
        except Exception as e:  # noqa: BLE001
            record("torch.load mmap=True %s" % label, False, repr(e)[:200])
        if kind in ("same", "same012"):
            ref = torch.load(os.path.join(FX, "runs", run, "ckpt", "checkpoint_last.pt"), map_location="cpu", weights_only=False)
            ok, detail = _compare_state(ref["model"], full["model"], kind == "same012")
            record("tensors bit-identical to the fixture %s" % label, ok, detail)


def _has_namespace(v):
    import argparse
    if isinstance(v, argparse.Namespace):
        return True
    if isinstance(v, dict):
        return any(_has_namespace(x) for x in v.values())
    return False


def _compare_state(ref, got, upgraded):
    import torch
    want = dict(ref)
    if upgraded:  # fairseq 0.12 names: split in_proj, output_projection
        want = {}
        for k, v in ref.items():
            m = re.match(r"(.*)\.in_proj_(weight|bias)$", k)
            if m:
                for i, x in enumerate("qkv"):
                    d = v.shape[0] // 3
                    want["%s.%s_proj.%s" % (m.group(1), x, m.group(2))] = v[i * d:(i + 1) * d]
            else:
                want[k] = v
        if "decoder.output_projection.weight" in got and "decoder.output_projection.weight" not in want:
            want["decoder.output_projection.weight"] = want.get("decoder.embed_out", want["decoder.embed_tokens.weight"])
            want.pop("decoder.embed_out", None)
    bad = []
    for k, v in want.items():
        if k.endswith("_float_tensor"):
            continue
        g = got.get(k)
        if g is None or g.dtype != v.dtype or g.shape != v.shape or not torch.equal(g, v):
            bad.append(k)
    extra = [k for k in got if k not in want]
    if bad or extra:
        return False, "differ: %s extra: %s" % (bad[:5], extra[:5])
    return True, "%d tensors" % len(want)


def hyps(path):
    out = {}
    scores = {}
    for line in open(path, encoding="utf-8"):
        if line.startswith("H-"):
            parts = line.rstrip("\n").split("\t")
            out[parts[0]] = parts[2] if len(parts) > 2 else ""
            scores[parts[0]] = float(parts[1])
    return out, scores


def generate_checks(files, clinic, out):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.join(clinic, "fairseq") + os.pathsep + env.get("PYTHONPATH", "")
    env["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    gen = os.path.join(clinic, "fairseq", "fairseq_cli", "generate.py")
    for label, (path, kind, run) in sorted(files.items()):
        if label.endswith(("_fold012", "_f012", "_weights")):
            continue  # 0.12 layout / weights-only: not for the 0.8 fork
        d = os.path.dirname(path)
        # The fork opens ./profile.ratio.init when it builds an adaptive model.
        if kind == "same" and run == "a_admin" and not os.path.exists(os.path.join(d, "profile.ratio.init")):
            shutil.copy(os.path.join(FX, "runs", run, "profile.ratio.init"), d)
        p = sh([sys.executable, gen, os.path.join(FX, "data-bin"), "--path", path, "--user-dir", os.path.join(clinic, "radam_fairseq"),
                "--gen-subset", "test", "--batch-size", "128", "--beam", "4", "--cpu"], cwd=d, env=env, check=False)
        gfile = os.path.join(d, "gen_beam4_cpu.txt")
        with open(gfile, "w") as f:
            f.write(p.stdout)
        if p.returncode != 0:
            record("clinic generate %s" % label, False, p.stdout[-300:])
            continue
        _compare_hyps("clinic generate %s" % label, gfile, run, kind)


def _compare_hyps(name, gfile, run, kind):
    ref, rs = hyps(os.path.join(FX, "runs", run, "gen_beam4_cpu.txt"))
    got, gs = hyps(gfile)
    same = sum(1 for k in ref if got.get(k) == ref[k])
    dmax = max((abs(gs[k] - rs[k]) for k in ref if k in gs), default=float("inf"))
    detail = "%d/%d same hypotheses, max |Δscore| %.2g" % (same, len(ref), dmax)
    if kind == "approx":
        record(name + " (approximate fold, informational)", True, detail)
    else:
        record(name, same == len(ref) and len(got) == len(ref), detail)


def fairseq012_checks(files, py):
    for label, (path, kind, run) in sorted(files.items()):
        if not label.endswith(("_fold012", "_f012")):
            continue
        d = os.path.dirname(path)
        p = sh([py, "-m", "fairseq_cli.generate", os.path.join(FX, "data-bin"), "--path", path, "--gen-subset", "test",
                "--batch-size", "128", "--beam", "4", "--cpu"], cwd=d, check=False)
        gfile = os.path.join(d, "gen012_beam4_cpu.txt")
        with open(gfile, "w") as f:
            f.write(p.stdout)
        if p.returncode != 0:
            record("fairseq 0.12 generate %s" % label, False, p.stdout[-300:])
            continue
        _compare_hyps("fairseq 0.12 generate %s" % label, gfile, run, kind)


def main():
    clinic, xform, out = os.environ.get("CLINIC"), os.environ.get("XFORM"), os.environ.get("OUT")
    if not (clinic and xform and out):
        sys.exit("set CLINIC, XFORM and OUT (see the docstring)")
    os.makedirs(out, exist_ok=True)
    files = exports(xform, out)
    torch_checks(files)
    generate_checks(files, clinic, out)
    if os.environ.get("FAIRSEQ012_PY"):
        fairseq012_checks(files, os.environ["FAIRSEQ012_PY"])
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(results, f, indent=1)
    failed = [r for r in results if not r["ok"]]
    print("\n%d checks, %d failed; details in %s" % (len(results), len(failed), os.path.join(out, "summary.json")))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
