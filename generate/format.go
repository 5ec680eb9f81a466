package generate

import (
	"strconv"
	"strings"
)

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
