#!/usr/bin/env python3
"""Does the Clinic fork (fairseq 0.8) resume an `xform train --fp16` checkpoint with --fp16?

The checkpoint comes from cmd/xform's TestFP16CheckpointHasFP16OptimizerState, written by the
training checkpoint saver with exp_avg = the weights and exp_avg_sq = their squares (float32):

    XFORM_FP16_STATE_OUT=/tmp/fp16_state.pt go test -count=1 ./cmd/xform -run TestFP16CheckpointHasFP16OptimizerState
    PYTHONPATH=/tmp/clinic_local/fairseq /usr/bin/python3 tools/reference/fp16_state_check.py \
        --ckpt /tmp/fp16_state.pt --out fixtures/fp16_state/fp16_state_check.json

The fork is driven through its own path: a Trainer built with --fp16 (on the CPU: the model is
.half()'d, FP16Optimizer.build_optimizer flattens its parameters), then Trainer.load_checkpoint,
which asserts optimizer_history's criterion and optimizer class names, loads the lr scheduler
state and calls FP16Optimizer.load_state_dict. The reference for the flat layout is the fork's
own FP16Optimizer.build_fp32_params over the same weights in fp32: the loaded flat exp_avg must
equal it exactly and exp_avg_sq its square. Any torch works; no GPU, no training step.
"""
import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

# The fixture recipe (fixtures/clinic/runs/a_admin/commands.txt) plus --fp16 on the CPU.
RECIPE = """-s src -t tgt --arch transformer_iwslt_de_en --optimizer radam --adam-betas (0.9,0.98)
 --clip-norm 0.0 --lr 3e-3 --lr-scheduler inverse_sqrt --warmup-init-lr 1e-7 --warmup-updates 100
 --max-update 2000 --dropout 0.1 --attention-dropout 0.1 --relu-dropout 0.1 --weight-decay 0.0
 --criterion label_smoothed_cross_entropy --label-smoothing 0.1 --max-tokens 2048 --num-workers 0
 --seed 1111 --init-type adaptive --encoder-layers 3 --decoder-layers 3 --encoder-embed-dim 32
 --decoder-embed-dim 32 --encoder-ffn-embed-dim 64 --decoder-ffn-embed-dim 64
 --encoder-attention-heads 4 --decoder-attention-heads 4 --share-all-embeddings --fp16 --cpu""".split()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ckpt", required=True, help="checkpoint written by the Go test")
    ap.add_argument("--data", default=os.path.join(REPO, "fixtures/clinic/data-bin"))
    ap.add_argument("--profile", default=os.path.join(REPO, "fixtures/clinic/runs/a_admin/profile.ratio.init"))
    ap.add_argument("--user-dir", default=None, help="radam_fairseq (default: beside the fairseq on PYTHONPATH)")
    ap.add_argument("--loss-scale", type=float, default=0.25, help="the scale the Go test saved")
    ap.add_argument("--out", default=None, help="JSON file for the checked numbers")
    ns = ap.parse_args()
    ckpt = os.path.abspath(ns.ckpt)

    import torch
    import fairseq
    from fairseq import options, tasks, utils, checkpoint_utils
    from fairseq.trainer import Trainer
    from fairseq.optim.fp16_optimizer import FP16Optimizer

    user_dir = ns.user_dir or os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(fairseq.__file__))), "radam_fairseq")
    argv = [os.path.abspath(ns.data)] + RECIPE + ["--user-dir", user_dir]
    # Adaptive init reads profile.ratio.init from the working directory when building layers.
    work = tempfile.mkdtemp()
    shutil.copy(ns.profile, os.path.join(work, "profile.ratio.init"))
    os.chdir(work)

    # The parser learns radam's name only once the user dir is imported (the fork finds
    # --user-dir in sys.argv, not in input_args).
    utils.import_user_module(argparse.Namespace(user_dir=user_dir))
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, input_args=argv)
    utils.import_user_module(args)
    torch.manual_seed(args.seed)
    task = tasks.setup_task(args)
    task.load_dataset("train")

    # The fork reads the profile through a module-global file handle, so build the model
    # once. Reference: the fork's own flattening of our weights in fp32, taken before the
    # Trainer halves the model in place (load_checkpoint loads the same weights again).
    state = checkpoint_utils.load_checkpoint_to_cpu(ckpt)
    model = task.build_model(args)
    criterion = task.build_criterion(args)
    model.load_state_dict(state["model"], strict=True)
    ref_params = [p for p in model.parameters() if p.requires_grad]
    flat = FP16Optimizer.build_fp32_params(ref_params).data.clone()

    trainer = Trainer(args, task, model, criterion)
    trainer.load_checkpoint(ckpt)  # asserts the class names, then FP16Optimizer.load_state_dict

    opt = trainer.optimizer
    checks = {}

    def check(name, ok, value):
        checks[name] = {"ok": bool(ok), "value": value}
        print("%-34s %-5s %s" % (name, "ok" if ok else "FAIL", value))

    check("optimizer class", type(opt).__name__ == "FP16Optimizer", type(opt).__name__)
    check("wrapped optimizer", True, type(opt.fp32_optimizer).__name__)
    check("model dtype after --fp16", next(model.parameters()).dtype == torch.float16, str(next(model.parameters()).dtype))
    check("parameters flattened", len(ref_params) == len(opt.fp16_params), len(ref_params))
    n = int(opt.fp32_params.numel())
    check("flat length", n == flat.numel(), n)
    inner = opt.fp32_optimizer.optimizer
    st = inner.state[opt.fp32_params]
    m1, m2 = st["exp_avg"], st["exp_avg_sq"]
    check("exp_avg dtype/shape", m1.dtype == torch.float32 and tuple(m1.shape) == (n,), "%s %s" % (m1.dtype, tuple(m1.shape)))
    check("exp_avg == flat weights (exact)", torch.equal(m1, flat), float((m1 - flat).abs().max()))
    sq = flat * flat
    check("exp_avg_sq == weights^2 (exact)", torch.equal(m2, sq), float((m2 - sq).abs().max()))
    check("step", int(st["step"]) == state["last_optimizer_state"]["state"][0]["step"], int(st["step"]))
    ls = opt.scaler.loss_scale
    check("loss scale", ls == ns.loss_scale and ls == state["last_optimizer_state"]["loss_scale"], ls)
    check("num_updates", trainer.get_num_updates() == state["optimizer_history"][-1]["num_updates"], trainer.get_num_updates())
    fp16_flat = torch.cat([p.data.view(-1).float() for p in opt.fp16_params])
    check("fp16 weights == flat.half()", torch.equal(fp16_flat, flat.half().float()), int(fp16_flat.numel()))
    out = {
        "checkpoint": os.path.basename(ckpt),
        "torch": torch.__version__,
        "flat_len": n,
        "num_params": len(ref_params),
        "loss_scale": ls,
        "step": int(st["step"]),
        "num_updates": trainer.get_num_updates(),
        "lr": trainer.get_lr(),
        "exp_avg_sum": float(m1.double().sum()),
        "exp_avg_sq_sum": float(m2.double().sum()),
        "exp_avg_sha256": hashlib.sha256(m1.numpy().tobytes()).hexdigest(),
        "exp_avg_sq_sha256": hashlib.sha256(m2.numpy().tobytes()).hexdigest(),
        "checks": checks,
    }
    if ns.out:
        with open(os.path.join(REPO, ns.out) if not os.path.isabs(ns.out) else ns.out, "w") as f:
            json.dump(out, f, indent=1, sort_keys=True)
            f.write("\n")
    shutil.rmtree(work, ignore_errors=True)
    bad = [k for k, v in checks.items() if not v["ok"]]
    if bad:
        print("FAILED:", ", ".join(bad))
        return 1
    print("all %d checks passed" % len(checks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
