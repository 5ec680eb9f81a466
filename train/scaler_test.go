package train_test

import (
	"strings"
	"testing"

	"github.com/xform-dev/xform/train"
)

// The scaler's update rule against sequences worked out by hand from the Clinic fork's
// DynamicLossScaler.update_scale (fp16_optimizer.py), starting from its fresh counters
// (iter 0, last overflow -1, last rescale -1). Each entry of want is the scale after that
// iteration and text is the scale as the fork's warning prints it (Python's str: an int
// until the first change, then a float).
func TestLossScalerUpdateRule(t *testing.T) {
	cases := []struct {
		name     string
		cfg      train.LossScaleConfig
		overflow string // one letter per iteration: x = overflow, . = finite gradients
		want     []float64
		text     string // str(scale) after the last iteration
	}{
		{
			// Growth when (iter - last_overflow) % window == 0: iteration 3 is the 4th
			// since "overflow -1"; the overflow at 2 halves and restarts the count, so
			// the next doubling is at 2+4 = 6, then 10.
			name: "window 4, tolerance 0", cfg: train.LossScaleConfig{InitScale: 128, Window: 4, MinScale: 1e-4},
			overflow: "..x........",
			want:     []float64{128, 128, 64, 64, 64, 64, 128, 128, 128, 128, 256},
			text:     "256.0",
		},
		{
			name: "no overflow, window 4", cfg: train.LossScaleConfig{InitScale: 128, Window: 4, MinScale: 1e-4},
			overflow: "........",
			want:     []float64{128, 128, 128, 256, 256, 256, 256, 512},
			text:     "512.0",
		},
		{
			// Tolerance 0.25: iteration 0 is 1 overflow in 1 → 64 (rescale at 0);
			// iteration 5: 1 overflow in 5 iterations since = 0.2 → kept; iteration 7:
			// 2 in 7 = 0.29 → 32 (rescale at 7); iteration 8: 1 in 1 → 16.
			name: "tolerance 0.25", cfg: train.LossScaleConfig{InitScale: 128, Window: 100, Tolerance: 0.25, MinScale: 1e-4},
			overflow: "x....x.xx",
			want:     []float64{64, 64, 64, 64, 64, 64, 64, 32, 16},
			text:     "16.0",
		},
		{
			// 1 overflow in 2 iterations = 0.5 < 0.6: the scale is still argparse's int.
			name: "tolerance keeps the int", cfg: train.LossScaleConfig{InitScale: 128, Window: 100, Tolerance: 0.6, MinScale: 1e-4},
			overflow: ".x",
			want:     []float64{128, 128},
			text:     "128",
		},
		{
			// then 2 in 3 = 0.67 ≥ 0.6 → 64.0
			name: "tolerance then halves", cfg: train.LossScaleConfig{InitScale: 128, Window: 100, Tolerance: 0.6, MinScale: 1e-4},
			overflow: ".xx",
			want:     []float64{128, 128, 64},
			text:     "64.0",
		},
		{
			name: "threshold 50", cfg: train.LossScaleConfig{InitScale: 128, Window: 1000, Threshold: 50, MinScale: 1e-4},
			overflow: "xxx",
			want:     []float64{64, 50, 50},
			text:     "50.0",
		},
		{
			// 2**30 halves to 2**-1 in 31 overflows and prints in Python's float form.
			name: "many halvings", cfg: train.LossScaleConfig{InitScale: 1 << 30, Window: 1000, MinScale: 1e-9},
			overflow: strings.Repeat("x", 31),
			want:     halvings(1<<30, 31),
			text:     "0.5",
		},
		{
			name: "tiny scale prints in exponent form", cfg: train.LossScaleConfig{InitScale: 1, Window: 1000, MinScale: 1e-9},
			overflow: strings.Repeat("x", 17),
			want:     halvings(1, 17),
			text:     "7.62939453125e-06",
		},
		{
			name: "large scale prints positional", cfg: train.LossScaleConfig{InitScale: 1 << 40, Window: 1, MinScale: 1e-9},
			overflow: ".",
			want:     []float64{1 << 41},
			text:     "2199023255552.0",
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			sc, err := train.NewLossScaler(c.cfg)
			if err != nil {
				t.Fatal(err)
			}
			for i, o := range c.overflow {
				sc.Update(o == 'x')
				if got := sc.Scale(); got != c.want[i] {
					t.Fatalf("iteration %d (%q): scale %g, want %g", i, c.overflow[:i+1], got, c.want[i])
				}
			}
			if got := sc.String(); got != c.text {
				t.Errorf("str(scale) = %q, want %q", got, c.text)
			}
		})
	}
}

func halvings(init float64, n int) []float64 {
	var out []float64
	for i := 0; i < n; i++ {
		init /= 2
		out = append(out, init)
	}
	return out
}

// fairseq's default window for update-freq 3 is 2**14/3 = 5461.33…, and
// (iter - last_overflow) % window is then never exactly 0 (Python's float modulo of
// 16384 by it is 9.1e-13): the fork's scale never grows. A power-of-two update-freq
// gives an integral window, which doubles on schedule.
func TestLossScalerFractionalWindow(t *testing.T) {
	sc, err := train.NewLossScaler(train.LossScaleConfig{InitScale: 128, Window: train.DefaultScaleWindow(3), MinScale: 1e-4})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 40000; i++ {
		if sc.Update(false) {
			t.Fatalf("iteration %d: the scale changed to %g", i, sc.Scale())
		}
	}
	sc, _ = train.NewLossScaler(train.LossScaleConfig{InitScale: 128, Window: train.DefaultScaleWindow(4), MinScale: 1e-4})
	for i := 0; i < 4096; i++ {
		changed := sc.Update(false)
		if changed != (i == 4095) {
			t.Fatalf("window 4096: iteration %d changed=%v (scale %g)", i, changed, sc.Scale())
		}
	}
}

// The minimum: with init 1 and the default --min-loss-scale 1e-4, the 14th overflow
// leaves 2**-14 = 6.1e-5 ≤ 1e-4 (the 13th leaves 1.2e-4). The error is the fork's
// FloatingPointError text with Python's str of the minimum.
func TestLossScalerMinimum(t *testing.T) {
	sc, err := train.NewLossScaler(train.LossScaleConfig{InitScale: 1, Window: 1000, MinScale: 1e-4})
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 14; i++ {
		sc.Update(true)
		if sc.AtMinimum() != (i == 14) {
			t.Fatalf("overflow %d: scale %g, at minimum %v", i, sc.Scale(), sc.AtMinimum())
		}
	}
	want := "FloatingPointError: Minimum loss scale reached (0.0001). Your loss is probably exploding. " +
		"Try lowering the learning rate, using gradient clipping or increasing the batch size."
	if got := (&train.MinLossScaleError{Min: 1e-4}).Error(); got != want {
		t.Errorf("error text\n%q\nwant\n%q", got, want)
	}
}
