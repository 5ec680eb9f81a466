#!/usr/bin/env bash
# Round trip of xform's fairseq exports through real torch and the Clinic fork (GPU machine).
#   CLINIC=<Transformer-Clinic checkout, patched per fixtures/clinic/README.md> \
#   XFORM=<xform static binary> OUT=<work dir> tools/reference/export_roundtrip.sh
# Optional: FAIRSEQ012_PY=<python with fairseq 0.12> to also run fairseq 0.12's generate.
set -uo pipefail
: "${CLINIC:?set CLINIC to the Transformer-Clinic checkout}"
: "${XFORM:?set XFORM to the xform binary}"
: "${OUT:?set OUT to a work directory}"
here="$(cd "$(dirname "$0")" && pwd)"
export TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1
# the fixtures pickle fairseq.meters objects: torch.load of the originals needs the fork importable
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$CLINIC/fairseq"
mkdir -p "$OUT"
python3 "$here/export_roundtrip.py" 2>&1 | tee "$OUT/export_roundtrip.log"
status=${PIPESTATUS[0]}
# Every file written must also pass the strict standard-library reader.
while IFS= read -r -d '' f; do
  python3 "$here/strict_pt_reader.py" "$f" || status=1
done < <(find "$OUT" -name '*.pt' -print0)
echo "export_roundtrip: exit $status"
exit "$status"
