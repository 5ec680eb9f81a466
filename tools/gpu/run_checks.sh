#!/usr/bin/env bash
# The first command of a GPU session: every GPU test of the CUDA backend and the CLI, then
# one training benchmark per precision, from the binaries `make gpu-bundle` left in
# .device/ (the GPU machine has no Go). Run from the repository root on the GPU machine,
# carrying .device:
#
#   make gpu-bundle                      # here
#   bash tools/gpu/run_checks.sh         # there (device tool, carry [".device"])
#
# Prints a short summary (passed tests, failures with their output, tokens/s); writes the
# full logs to $OUT when set. Exit status: that of the kernel tests.
set -uo pipefail
export LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}:/usr/local/cuda-13.0/targets/x86_64-linux/lib:/usr/local/nvidia/lib64
L=$(mktemp -d)
for f in .device/*.xz; do
	b=$(basename "$f" .xz)
	python3 -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'))" "$f" "$L/$b"
	chmod +x "$L/$b"
done
OUT=${OUT:-$L}
echo "== kernels/cuda GPU tests"
(cd kernels/cuda && XFORM_CUDA_REQUIRE=1 timeout 300 "$L/cudatest" -test.count=1 -test.v >"$OUT/cudatest.log" 2>&1)
rc=$?
echo "exit $rc, $(grep -c '^--- PASS' "$OUT/cudatest.log") passed"
grep -B2 -A20 '^--- FAIL' "$OUT/cudatest.log" | head -120
echo "== cmd/xform GPU tests"
(cd cmd/xform && XFORM_CUDA_REQUIRE=1 timeout 200 "$L/clitest" -test.count=1 -test.run 'GPU|CUDA|Device|FP16' >"$OUT/clitest.log" 2>&1)
echo "exit $?"
grep -A20 -- '--- FAIL' "$OUT/clitest.log" | head -60
for p in --bf16 --fp16 ""; do
	echo "== xform bench 6L-6L ${p:-fp32}"
	timeout 120 "$L/xform" bench --device cuda $p --updates 30 --warmup 3 --pairs 6000 2>&1 | grep -E 'target tokens/s|peak'
done
# The competitor's static shapes, eagerly and as CUDA graphs, then where the device time
# goes (XFORM_CUDA_PROFILE=gpu: events around every kernel and GEMM; top 30 kinds).
for g in "" --cuda-graphs; do
	echo "== xform bench 6L-6L --bf16 --batching bucket --buckets 3 $g"
	timeout 120 "$L/xform" bench --device cuda --bf16 --batching bucket --buckets 3 --updates 40 --warmup 3 --pairs 6000 $g 2>&1 |
		grep -E 'target tokens/s|CUDA graphs'
done
echo "== device time per kernel (bf16, bucket batching)"
XFORM_CUDA_PROFILE=gpu timeout 120 "$L/xform" bench --device cuda --bf16 --batching bucket --buckets 3 --updates 40 --warmup 3 --pairs 6000 >"$OUT/profile_gpu.txt" 2>&1
sed -n '/cuda profile/,$p' "$OUT/profile_gpu.txt" | head -31
exit $rc
