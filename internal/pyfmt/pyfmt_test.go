package pyfmt

import (
	"math"
	"testing"
)

// Expected strings are Python 3's repr of the same doubles.
func TestFloat(t *testing.T) {
	for _, tc := range []struct {
		in   float64
		want string
	}{
		{float64(float32(-1.4694700241088867)), "-1.4694700241088867"},
		{-1, "-1.0"}, {0, "0.0"}, {math.Copysign(0, -1), "-0.0"}, {-5e-05, "-5e-05"}, {1.5e-7, "1.5e-07"},
		{1e16, "1e+16"}, {1.5e16, "1.5e+16"}, {123.25, "123.25"}, {1e-4, "0.0001"}, {1e-5, "1e-05"},
		{64, "64.0"}, {0.5, "0.5"}, {1 << 30, "1073741824.0"}, {9999999999999998, "9999999999999998.0"},
		{6.103515625e-05, "6.103515625e-05"}, {5e-324, "5e-324"}, {math.MaxFloat64, "1.7976931348623157e+308"},
		{math.NaN(), "nan"}, {math.Inf(1), "inf"}, {math.Inf(-1), "-inf"},
	} {
		if got := Float(tc.in); got != tc.want {
			t.Errorf("Float(%v) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
