package preprocess

import "testing"

// Expected strings are what CPython 3 prints for "{:.3}".format(v).
func TestPyPrecision(t *testing.T) {
	for _, tc := range []struct {
		v    float64
		want string
	}{
		{0, "0.0"},
		{100, "1e+02"},
		{99.96, "1e+02"},
		{50, "50.0"},
		{12.3456, "12.3"},
		{1, "1.0"},
		{0.5, "0.5"},
		{0.012345, "0.0123"},
		{0.00012345, "0.000123"},
		{0.000012345, "1.23e-05"},
		{3.0 / 7 * 100, "42.9"},
		{9.999, "10.0"},
		{1.25, "1.25"},
	} {
		if got := pyPrecision(tc.v, 3); got != tc.want {
			t.Errorf("pyPrecision(%v) = %q, want %q", tc.v, got, tc.want)
		}
	}
}
