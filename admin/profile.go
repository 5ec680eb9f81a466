// Package admin holds what is specific to Admin (adaptive model initialisation): the profile
// ratio files the Clinic fork reads and writes, profiling, adaptive init and folding ω.
package admin

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"strings"
)

// ErrProfile wraps every malformed or mismatched profile file.
var ErrProfile = errors.New("invalid Admin profile file")

// ProfileFormat is the layout of a profile file.
type ProfileFormat int

const (
	// FormatIndexed is Clinic's profile.ratio.init: "<index> <value>" lines, encoder
	// indices 1..2N then decoder indices 1..3M.
	FormatIndexed ProfileFormat = iota
	// FormatPlain is one value per line in the same order (the Very Deep Transformers code).
	FormatPlain
)

// Profile is ω per residual branch: Encoder[2l] attention and [2l+1] FFN of encoder layer l;
// Decoder[3l], [3l+1], [3l+2] self-attention, encoder attention and FFN of decoder layer l.
type Profile struct {
	Encoder []float64
	Decoder []float64
	Format  ProfileFormat
	// Text keeps each value's text as read, so an unchanged profile is written back
	// byte for byte.
	encText, decText []string
}

// ReadProfileFile reads a profile for a model with encLayers/decLayers layers.
func ReadProfileFile(path string, encLayers, decLayers int) (*Profile, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("admin: %w", err)
	}
	p, err := ParseProfile(bytes.NewReader(b), encLayers, decLayers)
	if err != nil {
		return nil, fmt.Errorf("admin: %s: %w", path, err)
	}
	return p, nil
}

// ParseProfile parses either format, checking the count and, for the indexed format, that
// every index is the one the Clinic fork asserts at model build.
func ParseProfile(r io.Reader, encLayers, decLayers int) (*Profile, error) {
	nEnc, nDec := 2*encLayers, 3*decLayers
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 4096), 1<<20)
	p := &Profile{}
	line := 0
	var vals []string
	var idxs []string
	var lineNos []int
	for sc.Scan() {
		line++
		s := strings.TrimSpace(sc.Text())
		if s == "" {
			continue
		}
		f := strings.Fields(s)
		switch len(f) {
		case 1:
			if line == 1 || p.Format == FormatPlain {
				p.Format = FormatPlain
			} else {
				return nil, fmt.Errorf("%w: line %d: %q has one field, earlier lines had two", ErrProfile, line, s)
			}
			idxs = append(idxs, "")
			vals = append(vals, f[0])
		case 2:
			if p.Format == FormatPlain && line > 1 {
				return nil, fmt.Errorf("%w: line %d: %q has two fields, earlier lines had one", ErrProfile, line, s)
			}
			idxs = append(idxs, f[0])
			vals = append(vals, f[1])
		default:
			return nil, fmt.Errorf("%w: line %d: %q: want \"<index> <value>\" or \"<value>\"", ErrProfile, line, s)
		}
		lineNos = append(lineNos, line)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrProfile, err)
	}
	if len(vals) != nEnc+nDec {
		return nil, fmt.Errorf("%w: %d values, a %d-layer encoder and %d-layer decoder need %d (2×%d + 3×%d)",
			ErrProfile, len(vals), encLayers, decLayers, nEnc+nDec, encLayers, decLayers)
	}
	lineOf := func(n int) int { return lineNos[n] }
	for i, v := range vals {
		x, err := strconv.ParseFloat(v, 64)
		if err != nil || math.IsNaN(x) || math.IsInf(x, 0) || x <= 0 {
			return nil, fmt.Errorf("%w: line %d: value %q is not a positive finite number", ErrProfile, lineOf(i), v)
		}
		if p.Format == FormatIndexed {
			want := i + 1
			if i >= nEnc {
				want = i - nEnc + 1
			}
			got, err := strconv.ParseFloat(idxs[i], 64)
			if err != nil || got != float64(want) {
				stack := "encoder"
				if i >= nEnc {
					stack = "decoder"
				}
				return nil, fmt.Errorf("%w: line %d: index %q, the %s block expects %d here", ErrProfile, lineOf(i), idxs[i], stack, want)
			}
		}
		if i < nEnc {
			p.Encoder = append(p.Encoder, x)
			p.encText = append(p.encText, v)
		} else {
			p.Decoder = append(p.Decoder, x)
			p.decText = append(p.decText, v)
		}
	}
	return p, nil
}

// Write writes the profile in its format. Values read from a file keep their text; new
// values are written as the Clinic fork prints them (Python float repr of the float32
// value widened to float64; the first value of each stack is 1.0).
func (p *Profile) Write(w io.Writer) error {
	bw := bufio.NewWriter(w)
	emit := func(vals []float64, texts []string) {
		for i, v := range vals {
			s := FormatValue(v)
			if i < len(texts) && texts[i] != "" {
				if x, err := strconv.ParseFloat(texts[i], 64); err == nil && x == v {
					s = texts[i]
				}
			}
			if p.Format == FormatIndexed {
				fmt.Fprintf(bw, "%d %s\n", i+1, s)
			} else {
				fmt.Fprintf(bw, "%s\n", s)
			}
		}
	}
	emit(p.Encoder, p.encText)
	emit(p.Decoder, p.decText)
	return bw.Flush()
}

// FormatValue prints v like Python's repr of a float: shortest round-trip digits, ".0" for
// integral values.
func FormatValue(v float64) string {
	s := strconv.FormatFloat(v, 'g', -1, 64)
	if strings.ContainsAny(s, "e") {
		// Python switches to exponent notation at 1e16 / below 1e-4, like %r.
		if math.Abs(v) >= 1e-4 && math.Abs(v) < 1e16 {
			s = strconv.FormatFloat(v, 'f', -1, 64)
		} else {
			mant, exp, _ := strings.Cut(s, "e")
			if len(exp) == 2 { // e+5 → e+05
				exp = exp[:1] + "0" + exp[1:]
			}
			s = mant + "e" + exp
		}
	}
	if !strings.ContainsAny(s, ".eIN") {
		s += ".0"
	}
	return s
}
