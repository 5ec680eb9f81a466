package main

import (
	"math"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/xform-dev/xform/kernels/cuda"
)

func needGPU(t *testing.T) {
	t.Helper()
	if r := cuda.Probe(cuda.DefaultSearch()); !r.Usable {
		if os.Getenv("XFORM_CUDA_REQUIRE") == "1" {
			t.Fatalf("XFORM_CUDA_REQUIRE=1 but no GPU: %s", r.Problem)
		}
		t.Skipf("no usable GPU: %s", r.Problem)
	}
}

var (
	overflowLine = regexp.MustCompile(`^\| WARNING: overflow detected, setting loss scale to: (\S+)$`)
	midStats     = regexp.MustCompile(`^\| epoch \d{3}: +\d+ / \d+ loss=([0-9.]+|nan|inf), .*num_updates=(\d+),.*$`)
	scaleField   = regexp.MustCompile(`loss_scale=([0-9.]+)`)
)

// TestTrainFP16OverflowsThenTrainsGPU trains the tiny fixture model with --fp16 from a
// loss scale of 2^30: the scaled loss gradient (|∂loss/∂logit| ≤ 1, times 2^30) exceeds
// fp16's 65504 as soon as the GEMMs round it to half, so the first updates overflow.
// Each overflow must print the fork's warning with the halved scale and skip the update
// (num_updates does not advance); once the scale is below ~2^16 the updates happen and
// the log lines carry the lowered loss_scale. A --bf16 run of the same recipe has no
// loss scaling at all, and its first loss is the fp32 CPU run's within bf16 rounding.
func TestTrainFP16OverflowsThenTrainsGPU(t *testing.T) {
	needGPU(t)
	tmp := t.TempDir()
	args := tinyTrainArgs(filepath.Join(tmp, "fp16"), 5, "--device", "cuda", "--fp16", "--fp16-init-scale", "1073741824", "--no-save")
	out, err := runXform(args...)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	var warnings []float64
	lastUpdates, logged := 0, 0
	for _, l := range strings.Split(out, "\n") {
		if m := overflowLine.FindStringSubmatch(l); m != nil {
			v, err := strconv.ParseFloat(m[1], 64)
			if err != nil {
				t.Fatalf("warning %q: %v", l, err)
			}
			warnings = append(warnings, v)
			continue
		}
		m := midStats.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		n, _ := strconv.Atoi(m[2])
		sm := scaleField.FindStringSubmatch(l)
		if sm == nil {
			t.Fatalf("an --fp16 log line without loss_scale: %s", l)
		}
		if n > lastUpdates { // a real update (an overflowed batch repeats the previous line)
			loss, _ := strconv.ParseFloat(m[1], 64)
			scale, _ := strconv.ParseFloat(sm[1], 64)
			if math.IsNaN(loss) || math.IsInf(loss, 0) || !(scale < 1<<30) {
				t.Errorf("update %d: loss %s, loss_scale %s (want finite, below 2^30)", n, m[1], sm[1])
			}
			logged++
		}
		lastUpdates = n
	}
	t.Logf("%d overflows, scales %v; %d updates logged", len(warnings), warnings, logged)
	if len(warnings) == 0 {
		t.Fatalf("no overflow from a loss scale of 2^30: are the GEMM operands fp16?\n%s", out)
	}
	for i, v := range warnings {
		if want := math.Ldexp(1, 29-i); v != want {
			t.Errorf("overflow %d set the scale to %g, want %g (halving from 2^30)", i+1, v, want)
		}
	}
	if logged != 5 || !strings.Contains(out, "| epoch") || strings.Contains(out, "Minimum loss scale") {
		t.Errorf("want 5 updates after the overflows, got %d:\n%s", logged, out)
	}

	// bf16: no scaler, no loss_scale field; the first update's loss (on the initial
	// weights) within 0.02 bits of the fp32 CPU run's. bf16 operands carry 8 significant
	// bits (relative rounding 2^-9 ≈ 2e-3 per operand); the loss averages thousands of
	// tokens' cross entropies of ~7.7 bits, so its deviation is far below 0.02, while a
	// wrong GEMM would be off by far more.
	firstLoss := func(out string) float64 {
		for _, l := range strings.Split(out, "\n") {
			if m := midStats.FindStringSubmatch(l); m != nil {
				v, _ := strconv.ParseFloat(m[1], 64)
				return v
			}
		}
		t.Fatalf("no log line:\n%s", out)
		return 0
	}
	bf, err := runXform(tinyTrainArgs(filepath.Join(tmp, "bf16"), 3, "--device", "cuda", "--bf16", "--no-save")...)
	if err != nil {
		t.Fatalf("bf16: %v\n%s", err, bf)
	}
	if strings.Contains(bf, "loss_scale") || strings.Contains(bf, "WARNING: overflow") {
		t.Errorf("a --bf16 run logs loss scaling:\n%s", bf)
	}
	ref, err := runXform(tinyTrainArgs(filepath.Join(tmp, "fp32"), 1, "--device", "cpu", "--no-save")...)
	if err != nil {
		t.Fatalf("fp32 CPU: %v\n%s", err, ref)
	}
	if d := math.Abs(firstLoss(bf) - firstLoss(ref)); !(d <= 0.02) {
		t.Errorf("first loss: bf16 GPU %.3f, fp32 CPU %.3f", firstLoss(bf), firstLoss(ref))
	}
}
