// Package pyfmt formats numbers as Python prints them, for output that must match
// fairseq's text byte for byte (hypothesis scores, loss-scale messages).
package pyfmt

import (
	"math"
	"strconv"
	"strings"
)

// Float formats v as Python's repr(float) and str(float) do: the shortest digits that
// round-trip, positional for decimal exponents −4…15 (a whole number keeps ".0"),
// scientific otherwise with at least two exponent digits (1e-05, 1e+16), and nan, inf,
// -inf, -0.0 as Python spells them.
func Float(v float64) string {
	switch {
	case math.IsNaN(v):
		return "nan"
	case math.IsInf(v, 1):
		return "inf"
	case math.IsInf(v, -1):
		return "-inf"
	}
	e := strconv.FormatFloat(v, 'e', -1, 64) // Go's exponent form is Python's: e-05, e+16
	exp, _ := strconv.Atoi(e[strings.IndexByte(e, 'e')+1:])
	if exp < -4 || exp >= 16 {
		return e
	}
	s := strconv.FormatFloat(v, 'f', -1, 64)
	if !strings.ContainsAny(s, ".") {
		s += ".0"
	}
	return s
}
