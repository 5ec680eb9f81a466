package tensor

import (
	"math"
	"testing"
)

// Every one of the 65536 half bit patterns must survive widen-then-narrow unchanged
// (NaNs keep NaN-ness), which is what keeping fp16 checkpoints bit-exact relies on.
func TestHalfRoundTripAllPatterns(t *testing.T) {
	for h := 0; h < 1<<16; h++ {
		f := HalfToFloat(uint16(h))
		back := FloatToHalf(f)
		if math.IsNaN(float64(f)) {
			if back&0x7c00 != 0x7c00 || back&0x3ff == 0 {
				t.Fatalf("NaN %#04x came back as %#04x", h, back)
			}
			continue
		}
		if back != uint16(h) {
			t.Fatalf("%#04x -> %g -> %#04x", h, f, back)
		}
	}
}

func TestFloatToHalfKnownValues(t *testing.T) {
	cases := []struct {
		in   float32
		want uint16
	}{
		{1, 0x3c00}, {-2, 0xc000}, {65504, 0x7bff}, {65520, 0x7c00}, {5.960464477539063e-08, 0x0001},
		{1.5756056308746338, 0x3e4d}, // the profiled ω of clinic-spec §8.2, stored as 1.5752 in fp16
		{0.1, 0x2e66}, {2.9802322387695312e-08, 0x0000},
	}
	for _, c := range cases {
		if got := FloatToHalf(c.in); got != c.want {
			t.Errorf("FloatToHalf(%g) = %#04x, want %#04x", c.in, got, c.want)
		}
	}
}
