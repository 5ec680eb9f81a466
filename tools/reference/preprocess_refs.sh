#!/usr/bin/env bash
# Reference data-bins for xform preprocess, made by the Transformer-Clinic fork's own
# fairseq 0.8 preprocess.py from the committed corpora in fixtures/preprocess/inputs/.
#
#   CLINIC=/path/to/Transformer-Clinic OUT=fixtures/preprocess/ref tools/reference/preprocess_refs.sh
#
# Needs python3 with torch and numpy (any version the fork imports with; no GPU, no
# network). Writes OUT/<case>/ (dict.*.txt, *.bin, *.idx or raw copies, preprocess.log =
# stdout, stderr.log, args.txt) and OUT/MANIFEST.txt. The Go tests in preprocess/ read
# fixtures/preprocess/ref/ and skip while it is missing.
set -euo pipefail
: "${CLINIC:?set CLINIC to a Transformer-Clinic checkout}"
: "${OUT:?set OUT to the output directory (fixtures/preprocess/ref)}"
PY=${PYTHON:-python3}
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CLINIC=$(cd "$CLINIC" && pwd)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
test -f "$CLINIC/fairseq/preprocess.py" || { echo "no $CLINIC/fairseq/preprocess.py" >&2; exit 1; }

# Input paths in the logs are relative to fixtures/preprocess (inputs/a/train.src).
cd "$REPO/fixtures/preprocess"
rm -rf "$OUT/gen"
"$PY" "$HERE/preprocess_ref_helper.py" gen-big "$OUT/gen/big"

A=(--trainpref inputs/a/train --validpref inputs/a/valid,inputs/a/valid2 --testpref inputs/a/test)
B=(--trainpref inputs/b/train --validpref inputs/b/valid --testpref inputs/b/test)
ST=(--source-lang src --target-lang tgt)

run() {
	local name=$1
	shift
	rm -rf "${OUT:?}/$name"
	mkdir -p "$OUT/$name"
	printf '%s\n' "$*" >"$OUT/$name/args.txt"
	echo "== $name: preprocess.py $*"
	"$PY" "$HERE/preprocess_ref_helper.py" run "$CLINIC" "$@" --destdir "$OUT/$name" \
		>"$OUT/$name/preprocess.log" 2>"$OUT/$name/stderr.log"
}

run joined "${ST[@]}" "${A[@]}" --joined-dictionary --workers 1
run separate "${ST[@]}" "${A[@]}" --workers 1
run threshold "${ST[@]}" "${A[@]}" --thresholdsrc 3 --thresholdtgt 2 --workers 1
run nwords "${ST[@]}" "${A[@]}" --nwordssrc 21 --nwordstgt 13 --workers 1
run nopad "${ST[@]}" "${A[@]}" --nwordssrc 30 --padding-factor 1 --workers 1
# fairseq's multi-worker binarizer mis-splits files holding \r (corpus a has them in
# valid/test), so its own --workers 2 path is checked on corpus b.
run workers2 "${ST[@]}" "${B[@]}" --workers 2
run srcdict "${ST[@]}" "${B[@]}" --srcdict inputs/b/srcdict.txt --workers 1
run cached "${ST[@]}" "${A[@]}" --joined-dictionary --dataset-impl cached --workers 1
run lazy "${ST[@]}" "${A[@]}" --joined-dictionary --dataset-impl lazy --workers 1
run raw "${ST[@]}" "${A[@]}" --joined-dictionary --dataset-impl raw --workers 1
run onlysource --source-lang src --only-source --trainpref inputs/a/train --testpref inputs/a/test --workers 1
run bigvocab "${ST[@]}" --trainpref "$OUT/gen/big/train" --joined-dictionary --workers 1
rm -rf "$OUT/gen"

{
	echo "made by tools/reference/preprocess_refs.sh on $(date -u +%Y-%m-%dT%H:%M:%SZ)"
	echo "clinic: $CLINIC ($(git -C "$CLINIC" rev-parse HEAD 2>/dev/null || echo 'not a git checkout'))"
	"$PY" -c 'import sys, numpy, torch; print("python", sys.version.split()[0], "numpy", numpy.__version__, "torch", torch.__version__)'
	for d in "$OUT"/*/; do echo "$(basename "$d"): $(cat "$d/args.txt")"; done
} >"$OUT/MANIFEST.txt"
echo "wrote $OUT"
