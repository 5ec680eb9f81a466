#!/usr/bin/env bash
# Reference data for xform train / xform profile (issue 6), made by the Transformer-Clinic fork's
# own model, criterion, RAdam/Adam, inverse_sqrt and data loading on the fixture data-bin.
#
#   CLINIC=/path/to/Transformer-Clinic OUT=fixtures/train tools/reference/train_parity.sh
#
# CLINIC: a checkout with the patches listed in fixtures/clinic/README.md and the Cython
# extensions built (fairseq/fairseq/data/data_utils_fast*.so). Needs python3 with torch and
# numpy; no GPU and no network (workers run on the CPU, one thread, fp32, dropout 0).
# Takes about a minute. Writes OUT/{meta.json,batches.npz,profile.ratio.init,
# runs_admin.npz,runs_default.npz,log.txt}; the Go tests in train/ and admin/ read
# fixtures/train/ and skip while it is missing.
set -euo pipefail
: "${CLINIC:?set CLINIC to a Transformer-Clinic checkout}"
: "${OUT:?set OUT to the output directory (fixtures/train)}"
PY=${PYTHON:-python3}
HERE=$(cd "$(dirname "$0")" && pwd)
exec "$PY" "$HERE/train_parity.py" --clinic "$CLINIC" --out "$OUT" --fixtures "$HERE/../../fixtures/clinic"
