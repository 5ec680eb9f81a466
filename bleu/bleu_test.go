package bleu

import (
	"math"
	"testing"
)

func TestScorer(t *testing.T) {
	for _, tc := range []struct {
		name      string
		ref, pred [][]int32
		want      float64
		wantStr   string
	}{
		{"identical", [][]int32{{4, 5, 6, 7, 2}}, [][]int32{{4, 5, 6, 7, 2}}, 100,
			"BLEU4 = 100.00, 100.0/100.0/100.0/100.0 (BP=1.000, ratio=1.000, syslen=4, reflen=4)"},
		{"no 4-gram", [][]int32{{4, 5, 6, 7, 2}}, [][]int32{{4, 5, 7, 6, 2}}, 0, ""},
		// Reference <unk> (3) never matches, even an <unk> in the hypothesis.
		{"unk", [][]int32{{3, 5, 6, 7, 8, 2}}, [][]int32{{3, 5, 6, 7, 8, 2}},
			100 * math.Exp((math.Log(4.0/5)+math.Log(3.0/4)+math.Log(2.0/3)+math.Log(1.0/2))/4), ""},
		// Short hypothesis: brevity penalty exp(1 − 8/4).
		{"brevity", [][]int32{{4, 5, 6, 7, 8, 9, 10, 11, 2}}, [][]int32{{4, 5, 6, 7, 2}}, 100 * math.Exp(1-2.0), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sc := New(1, 2, 3)
			for i := range tc.ref {
				sc.Add(tc.ref[i], tc.pred[i])
			}
			if got := sc.Score(); math.Abs(got-tc.want) > 1e-9 {
				t.Fatalf("score %v, want %v", got, tc.want)
			}
			if tc.wantStr != "" && sc.String() != tc.wantStr {
				t.Fatalf("got %q", sc.String())
			}
		})
	}
}

func TestTrimKeepsLoneEOS(t *testing.T) {
	if got := trim([]int32{2}, 1, 2); len(got) != 1 {
		t.Fatalf("trim([eos]) = %v", got)
	}
	if got := trim([]int32{1, 1, 4, 2, 1}, 1, 2); len(got) != 1 || got[0] != 4 {
		t.Fatalf("trim = %v", got)
	}
}
