#!/usr/bin/env bash
# Training quality: the Admin recipe of fixtures/clinic (a_admin) trained by the Clinic fork (GPU,
# fp32) and by `xform train` (CPU) with the same seeds, then beam-4 generation on the test split.
# Reports the valid loss at the last update and BLEU of each, so the seed-to-seed spread of the
# reference itself is measured in the same run.
#
#   CLINIC_SRC=.ref/clinic XFORM=.device/xform SEEDS="1111 2222 3333" tools/reference/train_quality.sh
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CL=$(SRC=$CLINIC_SRC "$HERE/clinic_setup.sh") || exit 1
XF=$(cd "$(dirname "$XFORM")" && pwd)/$(basename "$XFORM")
export PYTHONPATH=$CL TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1
W=$(mktemp -d)
DB=$REPO/fixtures/clinic/data-bin
COMMON="$DB -s src -t tgt --arch transformer_iwslt_de_en --optimizer radam --adam-betas (0.9,0.98) --clip-norm 0.0
 --lr 3e-3 --lr-scheduler inverse_sqrt --warmup-init-lr 1e-7 --warmup-updates 100 --max-update 1000
 --dropout 0.1 --attention-dropout 0.1 --relu-dropout 0.1 --weight-decay 0.0 --label-smoothing 0.1 --max-tokens 2048
 --no-epoch-checkpoints --log-format simple --log-interval 50 --encoder-layers 3 --decoder-layers 3
 --encoder-embed-dim 32 --decoder-embed-dim 32 --encoder-ffn-embed-dim 64 --decoder-ffn-embed-dim 64
 --encoder-attention-heads 4 --decoder-attention-heads 4 --share-all-embeddings"
clinic_run() { # seed
	local d=$W/clinic_$1
	mkdir -p "$d" && cd "$d" || return
	python3 "$CL/fairseq_cli/train.py" $COMMON --criterion label_smoothed_cross_entropy --user-dir "$CL/../radam_fairseq" \
		--save-dir "$d/ckpt" --restore-file x.pt --num-workers 0 --seed "$1" --init-type adaptive-profiling >profiling.log 2>&1
	python3 "$CL/fairseq_cli/train.py" $COMMON --criterion label_smoothed_cross_entropy --user-dir "$CL/../radam_fairseq" \
		--save-dir "$d/ckpt" --restore-file x.pt --num-workers 0 --seed "$1" --init-type adaptive >train.log 2>&1
	python3 "$CL/fairseq_cli/generate.py" "$DB" --path ckpt/checkpoint_last.pt --user-dir "$CL/../radam_fairseq" \
		--gen-subset test --batch-size 128 --beam 4 >gen.txt 2>&1
}
xform_run() { # seed
	local d=$W/xform_$1
	mkdir -p "$d" && cd "$d" || return
	"$XF" train $COMMON --init adaptive --save-dir "$d/ckpt" --seed "$1" --fast-linear >train.log 2>&1
	"$XF" generate "$DB" --path ckpt/checkpoint_last.pt --beam 4 --batch-size 128 --device cpu >gen.txt 2>&1
}
for s in ${SEEDS:-1111 2222 3333}; do
	[ "$s" = 1111 ] || clinic_run "$s" &
	xform_run "$s" &
done
wait
echo "reference seed 1111 (fixtures/clinic/runs/a_admin): $(grep "valid on" "$REPO/fixtures/clinic/runs/a_admin/train_main.log" | tail -1 | cut -d'|' -f4,5)  $(grep -o 'BLEU4 = [0-9.]*' "$REPO/fixtures/clinic/runs/a_admin/gen_beam4.txt")"
for s in ${SEEDS:-1111 2222 3333}; do
	for who in clinic xform; do
		d=$W/${who}_$s
		[ -d "$d" ] || continue
		echo "$who seed $s: $(grep "valid on" "$d/train.log" | tail -1 | cut -d'|' -f4,5)  $(grep -o 'BLEU4 = [0-9.]*' "$d/gen.txt")  $(grep -o 'wps [0-9]*' "$d/train.log" | tail -1)"
	done
done
tail -3 "$W/xform_${SEEDS%% *}/train.log" "$W"/clinic_*/train.log 2>/dev/null | tail -20
