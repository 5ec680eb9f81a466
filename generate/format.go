package generate

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// PyFloat formats x as Python's repr(float) does (shortest round-trip digits,
// exponent notation below 1e-4 and from 1e16, always a '.0' or exponent), which is how
// fairseq prints hypothesis scores (float32 values widened to double).
func PyFloat(x float64) string {
	switch {
	case math.IsNaN(x):
		return "nan"
	case math.IsInf(x, 1):
		return "inf"
	case math.IsInf(x, -1):
		return "-inf"
	}
	e := strconv.FormatFloat(x, 'e', -1, 64) // d.ddde±XX
	mant, expS, _ := strings.Cut(e, "e")
	exp, _ := strconv.Atoi(expS)
	if exp < -4 || exp >= 16 {
		sign := "+"
		if exp < 0 {
			sign, exp = "-", -exp
		}
		return fmt.Sprintf("%se%s%02d", mant, sign, exp)
	}
	s := strconv.FormatFloat(x, 'f', -1, 64)
	if !strings.ContainsAny(s, ".") {
		s += ".0"
	}
	return s
}

// positional formats positional scores as fairseq's P- line ('{:.4f}' each).
func positional(p []float32) string {
	var b strings.Builder
	for i, x := range p {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(strconv.FormatFloat(float64(x), 'f', 4, 64))
	}
	return b.String()
}
