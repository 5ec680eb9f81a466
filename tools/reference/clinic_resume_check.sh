#!/usr/bin/env bash
# Does the Clinic fork resume training from a checkpoint `xform train` wrote (weights, RAdam state,
# train_iterator, num_updates)? Trains 20 updates with xform (Admin recipe, tiny model), then runs
# the fork's train.py with --restore-file on it up to update 30.
#   CLINIC_SRC=.ref/clinic XFORM=.lead/xform tools/reference/clinic_resume_check.sh
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CL=$(SRC=$CLINIC_SRC "$HERE/clinic_setup.sh") || exit 1
XF=$(cd "$(dirname "$XFORM")" && pwd)/$(basename "$XFORM")
export PYTHONPATH=$CL TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1
W=$(mktemp -d) && cd "$W"
DB=$REPO/fixtures/clinic/data-bin
COMMON="$DB -s src -t tgt --arch transformer_iwslt_de_en --optimizer radam --adam-betas (0.9,0.98) --clip-norm 0.0
 --lr 3e-3 --lr-scheduler inverse_sqrt --warmup-init-lr 1e-7 --warmup-updates 100
 --dropout 0.1 --attention-dropout 0.1 --relu-dropout 0.1 --weight-decay 0.0 --label-smoothing 0.1 --max-tokens 2048
 --log-format simple --log-interval 5 --encoder-layers 3 --decoder-layers 3
 --encoder-embed-dim 32 --decoder-embed-dim 32 --encoder-ffn-embed-dim 64 --decoder-ffn-embed-dim 64
 --encoder-attention-heads 4 --decoder-attention-heads 4 --share-all-embeddings --seed 1111"
"$XF" train $COMMON --init adaptive --save-dir "$W/ckpt" --max-update 20 --device cpu >xform.log 2>&1
echo "xform: $(grep -c 'num_updates' xform.log) log lines; $(ls ckpt)"
cp ckpt/profile.ratio.init . 2>/dev/null || echo "(no profile.ratio.init in the save dir)"
python3 "$CL/fairseq_cli/train.py" $COMMON --criterion label_smoothed_cross_entropy --user-dir "$CL/../radam_fairseq" \
	--save-dir "$W/ckpt" --init-type adaptive --max-update 30 --num-workers 0 >clinic.log 2>&1
echo "clinic train.py rc=$?"
grep -E "loaded checkpoint|no existing checkpoint|num_updates 2[0-9]|num_updates 30|Error|error" clinic.log | head -20
tail -5 clinic.log
