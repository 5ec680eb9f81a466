package preprocess

import (
	"strconv"
	"strings"
)

// pyPrecision formats v as Python's "{:.<p>}".format(v) does for a float: 'g'
// style with p significant digits, except that fixed notation keeps at least
// one digit after the point and scientific notation starts at exponent p-1
// (so 100.0 with p=3 prints "1e+02", as fairseq's unk percentage does).
func pyPrecision(v float64, p int) string {
	if v == 0 {
		return "0.0"
	}
	e := strconv.FormatFloat(v, 'e', p-1, 64)
	mant, expStr, _ := strings.Cut(e, "e")
	exp, _ := strconv.Atoi(expStr)
	if exp < -4 || exp >= p-1 {
		mant = trimZeros(mant)
		sign := "+"
		if exp < 0 {
			sign, exp = "-", -exp
		}
		es := strconv.Itoa(exp)
		if len(es) < 2 {
			es = "0" + es
		}
		return mant + "e" + sign + es
	}
	s := trimZeros(strconv.FormatFloat(v, 'f', p-1-exp, 64))
	if !strings.Contains(s, ".") {
		s += ".0"
	}
	return s
}

func trimZeros(s string) string {
	if !strings.Contains(s, ".") {
		return s
	}
	s = strings.TrimRight(s, "0")
	return strings.TrimSuffix(s, ".")
}
