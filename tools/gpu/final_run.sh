#!/usr/bin/env bash
# A session's last GPU call, sized for a short device budget: the day's targeted kernel
# tests first, then the competitors (tools/bench/run_all.sh, 6L-6L), the CLI GPU tests, and
# as much of the kernel test suite (-test.short) as the remaining time allows. From the
# repository root on the GPU machine, after `make gpu-bundle` here, carrying .device and
# .ref/clinic (tools/reference/clinic_setup.sh):
#
#   TARGETED='TestA|TestB' BUDGET_S=440 bash tools/gpu/final_run.sh
#
# Environment: TARGETED (test regex run first; empty: skipped), BUDGET_S (seconds the
# whole script may take [440]), RUNALL_BUDGET (run_all.sh's BUDGET [210]), SKIP (tests the
# suite leaves out, for time [TestListKernels6L6L|TestLinearBackwardBGrad|TestLtLinearBackward16]),
# OUT (logs; the device tool's $OUT). Prints a summary; the logs stay in $OUT.
set -uo pipefail
export LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}:/usr/local/cuda-13.0/targets/x86_64-linux/lib:/usr/local/nvidia/lib64
OUT=${OUT:-$(mktemp -d)}
BUDGET_S=${BUDGET_S:-440}
SKIP=${SKIP:-TestListKernels6L6L|TestLinearBackwardBGrad|TestLtLinearBackward16}
L=$(mktemp -d)
mkdir -p "$OUT/runall"
for f in .device/xform.xz .device/cudatest.xz .device/clitest.xz; do
	b=$(basename "$f" .xz)
	python3 -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'))" "$f" "$L/$b"
	chmod +x "$L/$b"
done
start=$(date +%s)
elapsed() { echo $(($(date +%s) - start)); }
if [ -n "${TARGETED:-}" ]; then
	(cd kernels/cuda && XFORM_CUDA_REQUIRE=1 timeout 80 "$L/cudatest" -test.count=1 -test.v -test.run "$TARGETED" >"$OUT/targeted.log" 2>&1)
	echo "targeted: exit $?, $(grep -c -- '^--- PASS' "$OUT/targeted.log") passed ($(elapsed) s)"
	grep -B2 -A12 -- '--- FAIL' "$OUT/targeted.log" | head -30
fi
CLINIC_SRC=.ref/clinic XFORM=$L/xform OUT=$OUT/runall LAYERS=6 TORCH_MODES=compile-cudagraphs XFORM_NODROP=0 \
	BUDGET=${RUNALL_BUDGET:-210} PART_TIMEOUT=110 bash tools/bench/run_all.sh >"$OUT/runall/run_all.log" 2>&1
tail -12 "$OUT/runall/run_all.log"
echo "run_all done ($(elapsed) s)"
(cd cmd/xform && XFORM_CUDA_REQUIRE=1 timeout 120 "$L/clitest" -test.count=1 -test.v -test.run 'GPU|CUDA|Device|FP16' >"$OUT/clitest.log" 2>&1)
echo "cmd/xform GPU tests: exit $?, $(grep -c -- '--- PASS' "$OUT/clitest.log") passed ($(elapsed) s)"
grep -A15 -- '--- FAIL' "$OUT/clitest.log" | head -30
left=$((BUDGET_S - $(elapsed)))
if [ "$left" -gt 20 ]; then
	(cd kernels/cuda && XFORM_CUDA_REQUIRE=1 timeout "$left" "$L/cudatest" -test.count=1 -test.v -test.short -test.skip "$SKIP" >"$OUT/suite.log" 2>&1)
	echo "suite: exit $? (124: out of time), $(grep -c -- '^--- PASS' "$OUT/suite.log") passed, last: $(grep '^=== RUN' "$OUT/suite.log" | tail -1)"
	grep -B2 -A12 -- '^--- FAIL' "$OUT/suite.log" | head -40
fi
