package cuda

import (
	"math"
	"testing"
)

// The autotune's switch and choice rule (autotune.go), on the CPU.

// TestEnvSwitch: an Options switch and its environment override (--cuda-graphs and
// XFORM_CUDA_GRAPHS, --cuda-autotune and XFORM_CUDA_AUTOTUNE).
func TestEnvSwitch(t *testing.T) {
	for _, c := range []struct {
		opt  bool
		env  string
		want bool
	}{
		{false, "", false}, {true, "", true},
		{false, "1", true}, {true, "0", false},
		{true, "1", true}, {false, "0", false},
		{false, "true", false}, {true, "yes", true}, {false, " 1", false},
	} {
		if got := envSwitch(c.opt, c.env); got != c.want {
			t.Errorf("option %v, environment %q: on %v, want %v", c.opt, c.env, got, c.want)
		}
	}
}

// TestTuneAlgosFrom: XFORM_CUDA_TUNE_ALGOS sets the autotune's candidate count from 1
// to ltTuneAlgosMax; anything else keeps ltTuneAlgos.
func TestTuneAlgosFrom(t *testing.T) {
	for env, want := range map[string]int{"": ltTuneAlgos, "1": 1, "32": 32, "64": 64, "65": ltTuneAlgos,
		"0": ltTuneAlgos, "-3": ltTuneAlgos, "many": ltTuneAlgos, " 16": ltTuneAlgos} {
		if got := tuneAlgosFrom(env); got != want {
			t.Errorf("XFORM_CUDA_TUNE_ALGOS=%q: %d candidates, want %d", env, got, want)
		}
	}
}

func TestLtPickFastest(t *testing.T) {
	nan := math.NaN()
	for _, c := range []struct {
		name string
		us   []float64
		want int
	}{
		{"empty", nil, -1},
		{"none ran", []float64{-1, -1}, -1},
		{"one", []float64{30}, 0},
		{"first fastest", []float64{25, 60, 94}, 0},
		{"later much faster", []float64{94, 60, 25.7}, 2},
		{"tie goes to the earlier", []float64{101.9, 100, 130}, 0},
		{"just outside the tie", []float64{102.1, 100}, 1},
		{"earliest within the tie, not the first", []float64{110, 101.5, 100}, 1},
		{"skips refused", []float64{-1, 50, 40}, 2},
		{"refused first, tie to the next", []float64{-1, 40.5, 40}, 1},
		{"NaN ignored", []float64{nan, 50, 60}, 1},
		{"exact tie", []float64{40, 40}, 0},
	} {
		if got := ltPickFastest(c.us); got != c.want {
			t.Errorf("%s: ltPickFastest(%v) = %d, want %d", c.name, c.us, got, c.want)
		}
	}
}

// TestLtTuneMemo: a remembered decision is recalled for the same device, workspace and
// key only, and the map starts over when full.
func TestLtTuneMemo(t *testing.T) {
	memo := NewGEMMTuneMemo()
	k := ltTuneKey{dev: 0, ws: ltWorkspaceBytes, key: ltKey{m: 512, n: 512, k: 8184, epilogue: ltEpiBGradB}}
	if _, ok := memo.recall(k); ok {
		t.Fatal("recalled from an empty memo")
	}
	memo.remember(k, [8]uint64{7})
	if a, ok := memo.recall(k); !ok || a[0] != 7 {
		t.Fatalf("recall: %v %v", a, ok)
	}
	for _, other := range []ltTuneKey{{dev: 1, ws: k.ws, key: k.key}, {dev: 0, ws: 0, key: k.key}} {
		if _, ok := memo.recall(other); ok {
			t.Errorf("recalled %+v for another device or workspace", other)
		}
	}
	k2 := k
	k2.key.k = 8064
	if _, ok := memo.recall(k2); ok {
		t.Error("recalled another shape")
	}
	if _, ok := NewGEMMTuneMemo().recall(k); ok {
		t.Error("a new memo recalled another memo's decision")
	}
	for i := range ltTuneMemoMax {
		x := k
		x.key.m = 1000 + i
		memo.remember(x, [8]uint64{1})
	}
	if n := memo.size(); n > ltTuneMemoMax {
		t.Errorf("memo holds %d decisions, bound %d", n, ltTuneMemoMax)
	}
}
