#!/usr/bin/env bash
# Prepare a working copy of the Transformer-Clinic fork for running it as the reference on a
# machine with torch (the GPU machine). Never committed: the checkout comes from
# LiyuanLucasLiu/Transformer-Clinic (for the GPU machine: fetched here into .ref/clinic and carried).
#
#   SRC=.ref/clinic DST=/tmp/clinic tools/reference/clinic_setup.sh
#
# Applies the three compatibility patches listed in fixtures/clinic/README.md (none changes the
# math), builds data_utils_fast, token_block_utils_fast and libbleu in place, and prints the
# PYTHONPATH to use. Idempotent.
set -euo pipefail
: "${SRC:?set SRC to a Transformer-Clinic checkout}"
DST=${DST:-/tmp/clinic}
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
if [ ! -f "$DST/.xform-ready" ]; then
	rm -rf "$DST" && mkdir -p "$DST" && cp -r "$SRC"/. "$DST"/
	F=$DST/fairseq/fairseq
	# 1. numpy >= 1.24 removed the np.float alias (it was the builtin float)
	sed -i -E 's/np\.float([,:])/float\1/' "$F/data/indexed_dataset.py"
	# 2. integer division into an int64 out= tensor needs an explicit rounding mode on torch >= 1.7
	sed -i "s/torch.div(self.indices_buf, vocab_size, out=self.beams_buf)/torch.div(self.indices_buf, vocab_size, rounding_mode='trunc', out=self.beams_buf)/" "$F/search.py"
	# 3. torch >= 2.6 loads weights only by default: checkpoints pickle a Namespace and meters
	sed -i 's/torch.load(/torch.load(weights_only=False, f=/' "$F/checkpoint_utils.py"
	(cd "$DST/fairseq" && python3 "$REPO/fixtures/clinic/scripts/build_ext.py" build_ext --inplace -j 8 >/tmp/clinic_build.log 2>&1) || { tail -20 /tmp/clinic_build.log; exit 1; }
	touch "$DST/.xform-ready"
fi
echo "$DST/fairseq"
