// Package bleu is fairseq's tokenized corpus BLEU-4 over token ids (the libbleu scorer
// behind fairseq-generate's "BLEU4 = ..." line, clinic-spec §6.4): clipped n-gram
// matches for n = 1..4, geometric mean without smoothing, brevity penalty
// min(1, exp(1 − ref/sys)).
package bleu

import (
	"fmt"
	"math"
)

// Scorer accumulates sentence statistics. The zero value is not usable; call New.
type Scorer struct {
	pad, eos, unk int32
	reflen        int
	predlen       int
	match, count  [4]int
}

// New returns a scorer for a dictionary with the given special ids.
func New(pad, eos, unk int32) *Scorer { return &Scorer{pad: pad, eos: eos, unk: unk} }

// trim drops leading pads and trailing EOS/pads, keeping at least one token as
// libbleu does (a hypothesis of only EOS keeps that EOS).
func trim(s []int32, pad, eos int32) []int32 {
	for len(s) > 0 && s[0] == pad {
		s = s[1:]
	}
	if len(s) == 0 {
		return s
	}
	end := len(s) - 1
	for end > 0 && (s[end] == eos || s[end] == pad) {
		end--
	}
	return s[:end+1]
}

type ngram [4]int32

// Add scores one hypothesis against its reference. Reference <unk> tokens never
// match (fairseq sets them to −999).
func (sc *Scorer) Add(ref, pred []int32) {
	r := make([]int32, len(ref))
	for i, t := range ref {
		if t == sc.unk {
			t = -999
		}
		r[i] = t
	}
	r = trim(r, sc.pad, sc.eos)
	p := trim(pred, sc.pad, sc.eos)
	sc.reflen += len(r)
	sc.predlen += len(p)
	for n := 1; n <= 4; n++ {
		if len(p) < n {
			continue
		}
		sc.count[n-1] += len(p) - n + 1
		if len(r) < n {
			continue
		}
		counts := make(map[ngram]int, len(p))
		for i := 0; i+n <= len(p); i++ {
			var g ngram
			copy(g[:], p[i:i+n])
			counts[g]++
		}
		for i := 0; i+n <= len(r); i++ {
			var g ngram
			copy(g[:], r[i:i+n])
			if counts[g] > 0 {
				sc.match[n-1]++
				counts[g]--
			}
		}
	}
}

// Precision returns p1..p4 (0 where nothing was counted).
func (sc *Scorer) Precision() [4]float64 {
	var p [4]float64
	for i := range p {
		if sc.count[i] > 0 {
			p[i] = float64(sc.match[i]) / float64(sc.count[i])
		}
	}
	return p
}

// Brevity returns the brevity penalty.
func (sc *Scorer) Brevity() float64 {
	r := float64(sc.reflen) / float64(sc.predlen)
	return math.Min(1, math.Exp(1-r))
}

// Score returns BLEU-4 × 100.
func (sc *Scorer) Score() float64 {
	var psum float64
	for _, p := range sc.Precision() {
		if p > 0 {
			psum += math.Log(p)
		} else {
			psum += math.Inf(-1)
		}
	}
	return sc.Brevity() * math.Exp(psum/4) * 100
}

// String formats the result as fairseq's Scorer.result_string:
// "BLEU4 = 28.58, 66.5/40.2/21.6/11.6 (BP=1.000, ratio=1.218, syslen=1294, reflen=1062)".
func (sc *Scorer) String() string {
	p := sc.Precision()
	return fmt.Sprintf("BLEU4 = %.2f, %.1f/%.1f/%.1f/%.1f (BP=%.3f, ratio=%.3f, syslen=%d, reflen=%d)",
		sc.Score(), p[0]*100, p[1]*100, p[2]*100, p[3]*100, sc.Brevity(),
		float64(sc.predlen)/float64(sc.reflen), sc.predlen, sc.reflen)
}
