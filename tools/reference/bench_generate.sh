#!/usr/bin/env bash
# Beam-4 generation speed of xform against the reference (the Clinic fork's generate.py, PyTorch
# eager on the CPU) on the same machine, same data, same thread budget; and the hypotheses compared.
#
#   CLINIC_SRC=.ref/clinic XFORM=.device/xform tools/reference/bench_generate.sh > result.txt
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CL=$(SRC=$CLINIC_SRC "$HERE/clinic_setup.sh")
XF=$(cd "$(dirname "$XFORM")" && pwd)/$(basename "$XFORM")
export PYTHONPATH=$CL TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1
W=$(mktemp -d)
cp -r "$REPO/fixtures/clinic/data-bin" "$W/data-bin"
THREADS=${THREADS:-$(nproc)}
echo "machine: $(nproc) cores; threads used by both: $THREADS; torch $(python3 -c 'import torch;print(torch.__version__)')"
for run in a_admin b_postln c_preln; do
	mkdir -p "$W/$run" && cp "$REPO/fixtures/clinic/runs/$run/ckpt/checkpoint_last.pt" "$W/$run/"
	[ -f "$REPO/fixtures/clinic/runs/$run/profile.ratio.init" ] && cp "$REPO/fixtures/clinic/runs/$run/profile.ratio.init" "$W/$run/"
	cd "$W/$run"
	for beam in 4 1; do
		t0=$(date +%s.%N)
		OMP_NUM_THREADS=$THREADS python3 "$CL/fairseq_cli/generate.py" "$W/data-bin" --path checkpoint_last.pt \
			--user-dir "$CL/../radam_fairseq" --gen-subset test --batch-size 128 --beam $beam --cpu >ref.txt 2>ref.err
		t1=$(date +%s.%N)
		GOMAXPROCS=$THREADS "$XF" generate "$W/data-bin" --path checkpoint_last.pt --beam $beam --batch-size 128 >xf.txt 2>xf.err
		t2=$(date +%s.%N)
		same=$(diff <(grep '^H-' ref.txt | cut -f1,3 | sort) <(grep '^H-' xf.txt | cut -f1,3 | sort) >/dev/null && echo identical || echo DIFFERENT)
		echo "$run beam $beam: hypotheses $same"
		echo "  reference: wall $(python3 -c "print(round($t1 - $t0, 2))") s (process); $(grep '^| Translated' ref.txt)"
		echo "  xform:     wall $(python3 -c "print(round($t2 - $t1, 2))") s (process); $(grep '^| Translated' xf.txt)"
		echo "  reference: $(grep 'BLEU4' ref.txt)"
		echo "  xform:     $(grep 'BLEU4' xf.txt)"
	done
done
