#!/usr/bin/env bash
# Training throughput of xform against the Clinic fork (the reference) and a modern PyTorch port
# (tools/bench/torch_competitor.py: eager bf16, torch.compile, torch.compile with CUDA graphs), on
# one GPU, same synthetic data-bin, same model and recipe (fixtures/clinic/README.md "Throughput
# anchor"), printed as one table with ratios and written to $OUT/bench_table.md.
#
# On the GPU machine (torch 2.x with CUDA, no network), from the repository root:
#
#   CGO_ENABLED=0 go build -o .device/xform ./cmd/xform          # here, before the run; carry .device
#   CLINIC_SRC=.ref/clinic XFORM=.device/xform OUT=/tmp/out tools/bench/run_all.sh
#
# Environment (defaults in brackets):
#   CLINIC_SRC   Transformer-Clinic checkout (prepared by tools/reference/clinic_setup.sh) [.ref/clinic]
#   XFORM        xform binary [.device/xform, else bin/xform, else built with go]
#   PY           python with torch [python3]
#   OUT          where bench_table.md, bench_results.jsonl and bench_logs.tar.gz go [./bench_out]
#   LAYERS       encoder=decoder depths ["6 18"]
#   PAIRS        synthetic training pairs [20000];  MAXTOK  max tokens per batch [8192]
#   SEED         batch order / init seed [1111] (the data is --synthetic-seed 1)
#   D FFN HEADS  model width [512 2048 8] (transformer_wmt_en_de's)
#   DEVICE       cuda, or cpu for a functional dry run of the script with a tiny model [cuda]
#   CLINIC_UPDATES [100]  TORCH_UPDATES [100]  TORCH_WARMUP [10]  XFORM_UPDATES [100]  XFORM_WARMUP [10]
#                (xform's fairseq-batching row as the port's: before the tenth session's end it
#                timed 30 updates after 3, and first uses of new shapes landed in them)
#   XFORM_TIME_LIMIT  xform's timed updates stop after this many seconds (at least one runs) [60]
#   XFORM_PRECISION  xform bench's GEMMs: bf16 (--bf16), fp16 (--fp16, with loss scaling) or fp32 (neither)
#                [bf16; fp32 with DEVICE=cpu, which has no 16-bit GEMMs]
#   TORCH_MODES  ["compile-cudagraphs eager compile"]   BUCKETS  static shapes for the compile modes [2]
#   SKIP_CLINIC=1 SKIP_TORCH=1 SKIP_XFORM=1   leave a part out
#   XFORM_NODROP=1  also run xform with every dropout 0 (6L only) to show what dropout costs [1]
#   XFORM_BUCKET=1  also run xform with --batching bucket --buckets $BUCKETS: the compile modes' batches
#                (static padded shapes), so that row compares like with like with them [1]
#   XFORM_GRAPHS=1  also run that bucket row with --cuda-graphs (each shape's step replayed as a CUDA
#                graph; warm-up XFORM_GRAPH_WARMUP [10] so the captures fall before the timed updates) [0]
#   XFORM_TUNED=1  also run the CUDA-graphs bucket row with --cuda-autotune (the cuBLASLt autotune;
#                needs XFORM_GRAPHS=1) [0]
#   XFORM_PACK=1  also run xform with --pack-tokens=auto (every layer on the real tokens only, where the
#                attention runs on packed rows; the default of xform train and bench with --bf16/--fp16 on
#                the GPU): with fairseq's batching and on the compile modes' bucket batches (and, with
#                XFORM_TUNED=1, the latter autotuned after XFORM_PACK_WARMUP [40] warm-up updates). The
#                other xform rows pass --pack-tokens=false: padded steps, as the competitors run [0]
#   XFORM_PACK_REPEAT=N  run that packed autotuned row N times and record the run with the median
#                target tokens/s (the lower middle one for an even N; its row says "median of N runs",
#                and every run's figure is kept in the results as repeats_tokens_per_s): one run of a
#                row varies by about ±1 % (thirteenth session) [1]
#   XFORM_CUDA_AUTOTUNE=1  (read by xform itself) the cuBLASLt autotune in every xform row; with
#                fairseq batching its one-off tuning lands in the few timed updates, so also raise
#                XFORM_WARMUP (docs/cuda.md, "cuBLASLt autotune")
#   BUDGET       seconds for the whole script; parts that would start later are skipped [470]
#   PART_TIMEOUT seconds one part may take [180]
#   TORCH_PART_TIMEOUT  the same for the PyTorch parts [PART_TIMEOUT]: torch.compile of 18L-18L
#                took more than 160 s on the H200 (seventh session), so give those more
# Two invocations (LAYERS=6, then LAYERS=18) measure everything if one does not fit the budget.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
cd "$REPO"
START=$(date +%s)
PY=${PY:-python3}
OUT=${OUT:-$REPO/bench_out}
LAYERS=${LAYERS:-6 18}
PAIRS=${PAIRS:-20000}
MAXTOK=${MAXTOK:-8192}
SEED=${SEED:-1111}
CLINIC_UPDATES=${CLINIC_UPDATES:-100}
TORCH_UPDATES=${TORCH_UPDATES:-100}
TORCH_WARMUP=${TORCH_WARMUP:-10}
XFORM_UPDATES=${XFORM_UPDATES:-100}
XFORM_WARMUP=${XFORM_WARMUP:-10}
XFORM_TIME_LIMIT=${XFORM_TIME_LIMIT:-60}
TORCH_MODES=${TORCH_MODES:-compile-cudagraphs eager compile}
BUCKETS=${BUCKETS:-2}
BUDGET=${BUDGET:-470}
PART_TIMEOUT=${PART_TIMEOUT:-180}
TORCH_PART_TIMEOUT=${TORCH_PART_TIMEOUT:-$PART_TIMEOUT}
XFORM_NODROP=${XFORM_NODROP:-1}
XFORM_BUCKET=${XFORM_BUCKET:-1}
XFORM_GRAPHS=${XFORM_GRAPHS:-0}
XFORM_GRAPH_WARMUP=${XFORM_GRAPH_WARMUP:-10}
XFORM_PACK_WARMUP=${XFORM_PACK_WARMUP:-40}
XFORM_TUNED=${XFORM_TUNED:-0}
XFORM_PACK=${XFORM_PACK:-0}
XFORM_PACK_REPEAT=${XFORM_PACK_REPEAT:-1}
D=${D:-512}
FFN=${FFN:-2048}
HEADS=${HEADS:-8}
DEVICE=${DEVICE:-cuda}
PREC=fp32
[ "$DEVICE" = cuda ] && PREC=bf16 CPREC=fp16 || CPREC=fp32
if [ "$DEVICE" = cuda ]; then XFORM_PRECISION=${XFORM_PRECISION:-bf16}; else XFORM_PRECISION=${XFORM_PRECISION:-fp32}; fi
case "$XFORM_PRECISION" in
bf16 | fp16) XPREC=(--"$XFORM_PRECISION") ;;
fp32) XPREC=() ;;
*) echo "XFORM_PRECISION=$XFORM_PRECISION: want bf16, fp16 or fp32"; exit 1 ;;
esac
XDIMS=(--encoder-embed-dim "$D" --decoder-embed-dim "$D" --encoder-ffn-embed-dim "$FFN" --decoder-ffn-embed-dim "$FFN"
	--encoder-attention-heads "$HEADS" --decoder-attention-heads "$HEADS")
mkdir -p "$OUT"
W=$(mktemp -d /tmp/xform-bench.XXXXXX)
RES=$W/results.jsonl
: >"$RES"
export PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR=$W/inductor

left() { echo $((BUDGET - ($(date +%s) - START))); }
note() { echo "[$(($(date +%s) - START))s] $*"; }
# record TAG LAYERS FRAMEWORK STATUS [JSON-FILE]: one line of results.jsonl
record() {
	"$PY" - "$@" >>"$RES" <<'EOF'
import json, sys
tag, layers, fw, status = sys.argv[1:5]
r = {}
if len(sys.argv) > 5:
    try:
        r = json.load(open(sys.argv[5]))
    except Exception as e:
        status = status if status != 'ok' else 'no result (%s)' % e
r.update({'tag': tag, 'layers': int(layers), 'framework': fw, 'status': status})
print(json.dumps(r))
EOF
}
# median_json OUT-JSON LOG...: the xform --json result (each log is one) with the median target tokens/s, with
# every log's figure added as repeats_tokens_per_s; fails when none has a result
median_json() {
	"$PY" - "$@" <<'EOF'
import json, sys
out, logs = sys.argv[1], sys.argv[2:]
runs = []
for path in logs:
    try:
        runs.append(json.load(open(path)))
    except Exception:
        pass
runs = [r for r in runs if 'target_tokens_per_s' in r]
if not runs:
    sys.exit('no result in ' + ' '.join(logs))
runs.sort(key=lambda r: r['target_tokens_per_s'])
med = dict(runs[(len(runs) - 1) // 2])
med['repeats_tokens_per_s'] = [r['target_tokens_per_s'] for r in runs]
json.dump(med, open(out, 'w'))
EOF
}
# part TAG LAYERS FRAMEWORK -- command...: runs with the smaller of PART_TIMEOUT and the budget left
part() {
	local tag=$1 L=$2 fw=$3
	shift 4
	local t=$(left)
	if [ "$t" -lt 20 ]; then
		note "$tag: skipped (budget)"
		record "$tag" "$L" "$fw" "skipped (budget)"
		return 1
	fi
	local cap=$PART_TIMEOUT
	case "$tag" in torch_*) cap=$TORCH_PART_TIMEOUT ;; esac
	[ "$t" -gt "$cap" ] && t=$cap
	note "$tag: start (limit ${t}s)"
	local t0=$(date +%s)
	timeout -k 5 "$t" "$@" >"$W/$tag.log" 2>"$W/$tag.err"
	local rc=$?
	note "$tag: rc=$rc after $(($(date +%s) - t0))s"
	if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
		record "$tag" "$L" "$fw" "timeout (${t}s)"
		return 1
	fi
	if [ $rc -ne 0 ]; then
		tail -5 "$W/$tag.err"
		record "$tag" "$L" "$fw" "failed (rc $rc)"
		return 1
	fi
	return 0
}

# --- xform binary --------------------------------------------------------------------------
if [ -z "${XFORM:-}" ]; then
	for c in .device/xform bin/xform; do [ -x "$c" ] && XFORM=$c && break; done
fi
if [ -z "${XFORM:-}" ]; then
	command -v go >/dev/null || { echo "no xform binary (set XFORM or build .device/xform) and no go"; exit 1; }
	CGO_ENABLED=0 go build -o "$W/xform" ./cmd/xform || exit 1
	XFORM=$W/xform
fi
XFORM=$(cd "$(dirname "$XFORM")" && pwd)/$(basename "$XFORM")
note "machine: $(nproc) cores; $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)"
note "torch: $("$PY" -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available())' 2>&1 | tail -1)"
"$XFORM" env 2>&1 | head -3

# --- data: synthetic text -> xform preprocess ----------------------------------------------
note "data: $PAIRS synthetic pairs"
"$XFORM" bench --write-text "$W/text" --pairs "$PAIRS" --valid-pairs 500 || exit 1
"$XFORM" preprocess -s src -t tgt --trainpref "$W/text/train" --validpref "$W/text/valid" \
	--destdir "$W/data-bin" --joined-dictionary --workers 4 >"$W/preprocess.log" || exit 1
BIN=$W/data-bin
tail -3 "$W/preprocess.log"

# --- Clinic fork setup -------------------------------------------------------------------------
CL=""
if [ "${SKIP_CLINIC:-0}" != 1 ]; then
	CLINIC_SRC=${CLINIC_SRC:-$REPO/.ref/clinic}
	note "clinic: setting up $CLINIC_SRC"
	if CLF=$(SRC=$CLINIC_SRC "$REPO/tools/reference/clinic_setup.sh" 2>"$W/clinic_setup.err"); then
		CL=$(dirname "$CLF")
	else
		tail -5 "$W/clinic_setup.err"
		note "clinic: setup failed, Clinic parts skipped"
	fi
fi

# clinic_script L: writes the two commands of the recipe (adaptive-profiling, then adaptive training in the
# same folder, where profile.ratio.init goes) to a script, so that timeout can run it
clinic_script() {
	local L=$1 rd=$W/clinic_${1}l
	mkdir -p "$rd"
	local args=("$REPO/fixtures/clinic/scripts/memwrap.py" "$CL/fairseq/fairseq_cli/train.py" "$BIN" -s src -t tgt
		--arch transformer_wmt_en_de --share-all-embeddings --optimizer radam --adam-betas "'(0.9, 0.98)'" --clip-norm 0.0
		--lr-scheduler inverse_sqrt --max-update "$CLINIC_UPDATES" --warmup-init-lr 1e-07 --warmup-updates 8000 --lr 0.001
		--min-lr 1e-09 --criterion label_smoothed_cross_entropy --label-smoothing 0.1 --weight-decay 0.0
		--attention-dropout 0.1 --relu-dropout 0.1 --max-tokens "$MAXTOK" --update-freq 1 --save-dir "$rd/ckpt"
		--restore-file x.pt --seed "$SEED" --user-dir "$CL/radam_fairseq" --log-format simple --log-interval 10
		--encoder-layers "$L" --decoder-layers "$L" --threshold-loss-scale 0.03125 --no-save --disable-validation "${XDIMS[@]}")
	if [ "$DEVICE" = cpu ]; then args+=(--cpu); else args+=(--fp16 --fp16-scale-window 256); fi
	{
		echo "set -e; cd '$rd'; export PYTHONPATH='$CL/fairseq'"
		echo "'$PY' ${args[*]} --init-type adaptive-profiling"
		echo "'$PY' ${args[*]} --init-type adaptive"
	} >"$rd/run.sh"
	echo "$rd/run.sh"
}
# clinic_json LOG JSON: the steady wps (windows after the first two) and MAXMEM of a Clinic log
clinic_json() {
	"$PY" - "$1" "$2" <<'EOF'
import json, re, statistics, sys
log, out = sys.argv[1:3]
wins, mem = [], {}
for line in open(log, errors='replace'):
    m = re.search(r'wps=(\d+), ups=([\d.]+), wpb=([\d.]+).*num_updates=(\d+)', line)
    if m:
        wins.append((int(m.group(4)), float(m.group(1)), float(m.group(2)), float(m.group(3))))
    m = re.search(r'MAXMEM max_memory_allocated=([\d.]+) GiB max_memory_reserved=([\d.]+) GiB', line)
    if m:
        mem = {'peak_allocated_bytes': float(m.group(1)) * 2**30, 'peak_held_bytes': float(m.group(2)) * 2**30}
steady = wins[2:] or wins
if not steady:
    sys.exit('no wps lines in ' + log)
wps = statistics.median(w[1] for w in steady)
json.dump({'mode': 'clinic fp16', 'target_tokens_per_s': wps, 'target_tokens_per_s_mean': statistics.mean(w[1] for w in steady),
           'updates_per_s': wps / statistics.mean(w[3] for w in steady), 'ups_logged': statistics.median(w[2] for w in steady),
           'target_tokens_per_update': statistics.mean(w[3] for w in steady), 'windows': wins,
           'memory': {'device': mem}}, open(out, 'w'))
EOF
}

# --- the runs ----------------------------------------------------------------------------------
for L in $LAYERS; do
	if [ "${SKIP_XFORM:-0}" != 1 ]; then
		xb=("$XFORM" bench --device "$DEVICE" --data "$BIN" --encoder-layers "$L" --decoder-layers "$L" "${XDIMS[@]}" --max-tokens "$MAXTOK"
			--seed "$SEED" --updates "$XFORM_UPDATES" --warmup "$XFORM_WARMUP" --time-limit "$XFORM_TIME_LIMIT" --json ${XPREC[@]+"${XPREC[@]}"})
		part "xform_${L}l" "$L" "xform ($XFORM_PRECISION, $DEVICE)" -- "${xb[@]}" --pack-tokens=false && record "xform_${L}l" "$L" "xform ($XFORM_PRECISION, $DEVICE)" ok "$W/xform_${L}l.log"
		if [ "$XFORM_NODROP" = 1 ] && [ "$L" = 6 ]; then
			part "xform_${L}l_nodrop" "$L" "xform ($XFORM_PRECISION, $DEVICE, dropout 0)" -- "${xb[@]}" --pack-tokens=false --dropout 0 --attention-dropout 0 --activation-dropout 0 &&
				record "xform_${L}l_nodrop" "$L" "xform ($XFORM_PRECISION, $DEVICE, dropout 0)" ok "$W/xform_${L}l_nodrop.log"
		fi
		if [ "$XFORM_BUCKET" = 1 ]; then
			# the batches of the competitor's compile modes (same --buckets), for a like-with-like row against them
			xbf="xform ($XFORM_PRECISION, $DEVICE, bucket batching as the compile modes, $BUCKETS buckets)"
			part "xform_${L}l_bucket" "$L" "$xbf" -- "${xb[@]}" --pack-tokens=false --batching bucket --buckets "$BUCKETS" &&
				record "xform_${L}l_bucket" "$L" "$xbf" ok "$W/xform_${L}l_bucket.log"
			if [ "$XFORM_GRAPHS" = 1 ]; then
				xbg="xform ($XFORM_PRECISION, $DEVICE, bucket batching, $BUCKETS buckets, CUDA graphs)"
				part "xform_${L}l_graphs" "$L" "$xbg" -- "${xb[@]}" --pack-tokens=false --batching bucket --buckets "$BUCKETS" --cuda-graphs --warmup "$XFORM_GRAPH_WARMUP" &&
					record "xform_${L}l_graphs" "$L" "$xbg" ok "$W/xform_${L}l_graphs.log"
				if [ "$XFORM_TUNED" = 1 ]; then
					xbt="xform ($XFORM_PRECISION, $DEVICE, bucket batching, $BUCKETS buckets, CUDA graphs, cuBLASLt autotune)"
					part "xform_${L}l_tuned" "$L" "$xbt" -- "${xb[@]}" --pack-tokens=false --batching bucket --buckets "$BUCKETS" --cuda-graphs --cuda-autotune --warmup "$XFORM_GRAPH_WARMUP" &&
						record "xform_${L}l_tuned" "$L" "$xbt" ok "$W/xform_${L}l_tuned.log"
				fi
			fi
		fi
		if [ "$XFORM_PACK" = 1 ]; then
			xbp="xform ($XFORM_PRECISION, $DEVICE, packed rows)"
			part "xform_${L}l_pack" "$L" "$xbp" -- "${xb[@]}" --pack-tokens=auto &&
				record "xform_${L}l_pack" "$L" "$xbp" ok "$W/xform_${L}l_pack.log"
			xbq="xform ($XFORM_PRECISION, $DEVICE, bucket batching as the compile modes, $BUCKETS buckets, packed rows)"
			part "xform_${L}l_bucket_pack" "$L" "$xbq" -- "${xb[@]}" --batching bucket --buckets "$BUCKETS" --pack-tokens=auto &&
				record "xform_${L}l_bucket_pack" "$L" "$xbq" ok "$W/xform_${L}l_bucket_pack.log"
			if [ "$XFORM_TUNED" = 1 ]; then
				# packed steps run eagerly, so the autotune's one-off timing of each new GEMM class lands in the first
				# updates: a longer warm-up (XFORM_PACK_WARMUP) keeps it out of the timed ones
				xbr="xform ($XFORM_PRECISION, $DEVICE, bucket batching as the compile modes, $BUCKETS buckets, packed rows, cuBLASLt autotune)"
				if [ "$XFORM_PACK_REPEAT" -gt 1 ]; then
					xbr="${xbr%)}, median of $XFORM_PACK_REPEAT runs)"
				fi
				logs=()
				for ((k = 1; k <= XFORM_PACK_REPEAT; k++)); do
					# each run its own tag when repeated, so a failed run's row does not share the median's
					tag="xform_${L}l_bucket_pack_tuned"
					[ "$XFORM_PACK_REPEAT" -gt 1 ] && tag="${tag}_r$k"
					part "$tag" "$L" "$xbr" -- "${xb[@]}" --batching bucket --buckets "$BUCKETS" --pack-tokens=auto --cuda-autotune --warmup "$XFORM_PACK_WARMUP" &&
						logs+=("$W/$tag.log")
				done
				if [ ${#logs[@]} -gt 0 ] && median_json "$W/xform_${L}l_bucket_pack_tuned.json" "${logs[@]}"; then
					record "xform_${L}l_bucket_pack_tuned" "$L" "$xbr" ok "$W/xform_${L}l_bucket_pack_tuned.json"
				fi
			fi
		fi
	fi
	if [ "${SKIP_CLINIC:-0}" != 1 ] && [ -n "$CL" ]; then
		if part "clinic_${L}l" "$L" "Clinic fork (fairseq 0.8, $CPREC)" -- bash "$(clinic_script "$L")"; then
			clinic_json "$W/clinic_${L}l.log" "$W/clinic_${L}l.json" && record "clinic_${L}l" "$L" "Clinic fork (fairseq 0.8, $CPREC)" ok "$W/clinic_${L}l.json"
		fi
	fi
	if [ "${SKIP_TORCH:-0}" != 1 ]; then
		for mode in $TORCH_MODES; do
			tb=("$PY" "$HERE/torch_competitor.py" --mode "$mode" --device "$DEVICE" --data "$BIN" --encoder-layers "$L" --decoder-layers "$L"
				--embed-dim "$D" --ffn-dim "$FFN" --heads "$HEADS"
				--max-tokens "$MAXTOK" --seed "$SEED" --updates "$TORCH_UPDATES" --warmup "$TORCH_WARMUP" --buckets "$BUCKETS" --json)
			if part "torch_${mode}_${L}l" "$L" "PyTorch $mode ($PREC)" -- "${tb[@]}"; then
				tail -1 "$W/torch_${mode}_${L}l.log" >"$W/torch_${mode}_${L}l.json"
				record "torch_${mode}_${L}l" "$L" "PyTorch $mode ($PREC)" ok "$W/torch_${mode}_${L}l.json"
			fi
			grep '^|' "$W/torch_${mode}_${L}l.log" 2>/dev/null
		done
	fi
done

# --- the table ------------------------------------------------------------------------------------
"$PY" "$HERE/make_table.py" "$RES" --date "$(date -u +%Y-%m-%d)" --device "$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)" \
	--data "$PAIRS synthetic pairs (xform bench --write-text, xform preprocess), max tokens $MAXTOK" | tee "$OUT/bench_table.md"
cp "$RES" "$OUT/bench_results.jsonl"
tar -czf "$OUT/bench_logs.tar.gz" -C "$W" --exclude=data-bin --exclude=text --exclude=clinic --exclude=inductor --exclude='ckpt' . 2>/dev/null
note "done; $OUT/bench_table.md, bench_results.jsonl, bench_logs.tar.gz"
