package cuda

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/xform-dev/xform/kernels"
)

// Tests of kernels.RoundingOptimizer (adam_list_bf16 / adam_list_f16: the Adam update
// that also writes the weights' 16-bit copies). References, all exact (no tolerance: the
// update is the same float arithmetic in the same kernel body, and a copy is the same
// rounding function of the same float):
//   - p, m, v and the norm: the bits of AdamStepClipped / AdamStepAll on a copy of the
//     same state (adam_list, which TestAdamStepClippedMatchesCPU ties to the CPU);
//   - the copies: the bits RoundAll (round_list, which TestRoundAll ties to the rounding
//     in Go) writes from the reference's updated weights, compared as raw 16-bit
//     patterns; elements of a shared copy outside every target range keep their bits.

// halfBits reads a 16-bit buffer's raw patterns.
func halfBits(g *Backend, b kernels.Buffer) []uint16 {
	h := halfOf(b)
	words := make([]float32, (h.n+1)/2)
	if len(words) > 0 {
		g.Download(words, &buffer{a: h.a, n: len(words)})
	}
	out := make([]uint16, h.n)
	for i := range out {
		w := math.Float32bits(words[i/2])
		if i%2 == 1 {
			w >>= 16
		}
		out[i] = uint16(w)
	}
	return out
}

func checkBits16(t *testing.T, what string, got, want []uint16) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d elements, want %d", what, len(got), len(want))
	}
	bad := 0
	for i := range want {
		if got[i] != want[i] {
			if bad < 5 {
				t.Errorf("%s[%d] = %#04x, want %#04x", what, i, got[i], want[i])
			}
			bad++
		}
	}
	if bad > 0 {
		t.Errorf("%s: %d of %d elements differ", what, bad, len(want))
	}
}

// adamCopyCase is a parameter list with two copies of its optimizer state (a for the
// rounded update, b for the reference) and 16-bit targets: one shared copy holding
// ranges of it (an odd offset: the scalar path; multiples of 4: the float4 path), separate
// copies, and parameters without one.
type adamCopyCase struct {
	a, b   [4][]kernels.Buffer // p, g, m, v
	half   []kernels.HalfTarget
	shared kernels.Buffer
	inside []bool // per element of shared: inside a target range
}

func newAdamCopyCase(g *Backend, r *rand.Rand, lens, offs []int) *adamCopyCase {
	rc := &adamCopyCase{}
	total := 0
	for _, n := range lens {
		total += n + 5
	}
	rc.shared = g.AllocHalf(total)
	rc.inside = make([]bool, total)
	at := 0
	for i, n := range lens {
		var vals [4][]float32
		for k := range vals {
			vals[k] = randVec(r, n)
		}
		for j := range vals[3] {
			vals[3][j] *= vals[3][j] * 1e-3 // v ≥ 0
			vals[1][j] *= 50
		}
		// Weights the 16-bit formats round in every way: fp16 overflow, subnormals,
		// halfway cases.
		special := []float32{65504, 65519.99, 65520, -7e4, 1e-7, -3e-8, 6e-5, 1 + 1.0/256, 1 + 3.0/2048, 2e38}
		for j := 0; j < n && j < len(special); j++ {
			vals[0][j] = special[j]
		}
		for k := range vals {
			for _, st := range []*[4][]kernels.Buffer{&rc.a, &rc.b} {
				x := g.Upload(append(make([]float32, offs[i]), vals[k]...))
				st[k] = append(st[k], g.Slice(x, offs[i], n))
			}
		}
		var t kernels.HalfTarget
		switch i % 3 {
		case 0: // a range of the shared copy
			gap := 4
			if i%2 == 1 {
				gap = 1
			}
			at += gap
			t = kernels.HalfTarget{Buf: rc.shared, Off: at}
			for j := at; j < at+n; j++ {
				rc.inside[j] = true
			}
			at += n
		case 1: // its own copy
			t = kernels.HalfTarget{Buf: g.AllocHalf(n)}
		}
		rc.half = append(rc.half, t)
	}
	// Known bits everywhere in the shared copy before the update: the guard elements
	// must keep them.
	g.RoundAll([]kernels.Buffer{rc.shared}, []kernels.Buffer{g.Upload(randVec(r, total))})
	return rc
}

// check compares the rounded update's state with the reference's and the copies with
// RoundAll of the reference's weights; before is the shared copy's bits before the
// update.
func (rc *adamCopyCase) check(t *testing.T, g *Backend, what string, before []uint16) {
	t.Helper()
	names := [4]string{"p", "g", "m", "v"}
	for k := range rc.a {
		for i := range rc.a[k] {
			checkExact(t, fmt.Sprintf("%s: %s[%d]", what, names[k], i), down(g, rc.a[k][i]), down(g, rc.b[k][i]))
		}
	}
	shared := halfBits(g, rc.shared)
	for i, tg := range rc.half {
		if tg.Buf == nil || rc.b[0][i].Len() == 0 {
			continue
		}
		ref := g.AllocHalf(rc.b[0][i].Len())
		g.RoundAll([]kernels.Buffer{ref}, []kernels.Buffer{rc.b[0][i]})
		got := halfBits(g, tg.Buf)
		checkBits16(t, fmt.Sprintf("%s: copy of p[%d]", what, i), got[tg.Off:tg.Off+ref.Len()], halfBits(g, ref))
	}
	for j, in := range rc.inside {
		if !in && shared[j] != before[j] {
			t.Errorf("%s: shared copy element %d outside every target changed from %#04x to %#04x", what, j, before[j], shared[j])
			break
		}
	}
}

// TestAdamStepRoundedSameBits: AdamStepClippedRounded (with and without clipping, with a
// loss-scale-like pre, Adam, AdamW decay and RAdam before rectification) and
// AdamStepAllRounded against AdamStepClipped / AdamStepAll followed by RoundAll, bf16 and
// fp16, on chunk-boundary lengths and unaligned buffers, three updates in a row.
func TestAdamStepRoundedSameBits(t *testing.T) {
	for _, ft := range formats {
		t.Run(ft.prec.String(), func(t *testing.T) {
			g := withPrecision(t, ft.prec)
			if !g.RoundsUpdates() {
				t.Fatal("RoundsUpdates false in a 16-bit precision")
			}
			r := rand.New(rand.NewPCG(101, uint64(ft.prec)))
			lens := []int{1, 3, 4, 5, 0, 8191, 8192, 8193, 3*8192 + 3, 65536 + 7, 512, 1536, 262144}
			offs := []int{0, 1, 0, 2, 0, 0, 1, 0, 3, 0, 4, 1, 0}
			rc := newAdamCopyCase(g, r, lens, offs)
			steps := []kernels.OptimStep{
				{Beta1: 0.9, Beta2: 0.98, OneMinusBeta1: 0.1, OneMinusBeta2: 0.02, Eps: 1e-8, StepSize: 1e-3, Update: true},
				{Beta1: 0.9, Beta2: 0.999, OneMinusBeta1: 0.1, OneMinusBeta2: 0.001, Eps: 1e-8, Decay: -1e-5, StepSize: 5e-4, Update: true},
				{Beta1: 0.9, Beta2: 0.98, OneMinusBeta1: 0.1, OneMinusBeta2: 0.02, Eps: 1e-8}, // RAdam before ρ_t ≥ 5
			}
			pre := float32(1.0 / 3870 / 128)
			for k, maxNorm := range []float64{0, 1e-30, 1e9, -1} {
				s := steps[k%len(steps)]
				before := halfBits(g, rc.shared)
				what := fmt.Sprintf("update %d, max %g", k+1, maxNorm)
				if maxNorm < 0 {
					what = fmt.Sprintf("update %d, AdamStepAll", k+1)
					g.AdamStepAllRounded(rc.a[0], rc.a[1], rc.a[2], rc.a[3], rc.half, s)
					g.AdamStepAll(rc.b[0], rc.b[1], rc.b[2], rc.b[3], s)
				} else {
					na := g.AdamStepClippedRounded(rc.a[0], rc.a[1], rc.a[2], rc.a[3], rc.half, pre, maxNorm, s)()
					nb := g.AdamStepClipped(rc.b[0], rc.b[1], rc.b[2], rc.b[3], pre, maxNorm, s)()
					if math.Float64bits(na) != math.Float64bits(nb) {
						t.Errorf("%s: norm %.17g, reference %.17g", what, na, nb)
					}
					t.Logf("%s: norm %.6g, clipped %v", what, na, maxNorm > 0 && na > maxNorm)
				}
				rc.check(t, g, what, before)
			}
		})
	}
}

// TestAdamStepRoundedSkipsNonFinite: a NaN or ±Inf gradient (an fp16 overflow) leaves p,
// m and v unchanged, as AdamStepClipped does, and the copies, which held other values
// before (RoundAll of random data), become RN16 of the unchanged weights: after the call
// they are valid whatever they held.
func TestAdamStepRoundedSkipsNonFinite(t *testing.T) {
	for _, ft := range formats {
		for _, bad := range []float32{float32(math.NaN()), float32(math.Inf(1)), float32(math.Inf(-1))} {
			t.Run(fmt.Sprintf("%v/%v", ft.prec, bad), func(t *testing.T) {
				g := withPrecision(t, ft.prec)
				r := rand.New(rand.NewPCG(103, uint64(ft.prec)))
				lens := []int{5, 8192 + 3, 70000, 4096}
				rc := newAdamCopyCase(g, r, lens, []int{0, 1, 0, 0})
				for i, tg := range rc.half {
					if tg.Buf != nil && tg.Buf != rc.shared {
						g.RoundAll([]kernels.Buffer{tg.Buf}, []kernels.Buffer{g.Upload(randVec(r, lens[i]))})
					}
				}
				for _, st := range []*[4][]kernels.Buffer{&rc.a, &rc.b} {
					gv := down(g, st[1][2])
					gv[len(gv)-1] = bad
					st[1][2] = g.Upload(gv)
				}
				s := kernels.OptimStep{Beta1: 0.9, Beta2: 0.98, OneMinusBeta1: 0.1, OneMinusBeta2: 0.02, Eps: 1e-8, StepSize: 1e-3, Update: true}
				pBefore := make([][]float32, len(lens))
				for i := range lens {
					pBefore[i] = down(g, rc.b[0][i])
				}
				before := halfBits(g, rc.shared)
				na := g.AdamStepClippedRounded(rc.a[0], rc.a[1], rc.a[2], rc.a[3], rc.half, 1.0/1000, 1, s)()
				nb := g.AdamStepClipped(rc.b[0], rc.b[1], rc.b[2], rc.b[3], 1.0/1000, 1, s)()
				if !math.IsNaN(na) && !math.IsInf(na, 0) || math.Float64bits(na) != math.Float64bits(nb) {
					t.Errorf("norm %v, reference %v", na, nb)
				}
				for i := range lens {
					checkExact(t, fmt.Sprintf("p[%d] unchanged", i), down(g, rc.a[0][i]), pBefore[i])
				}
				rc.check(t, g, "skipped", before)
			})
		}
	}
}

// TestAdamStepRoundedArgs: targets that do not fit are refused before anything runs;
// nil targets (or none) are the plain update.
func TestAdamStepRoundedArgs(t *testing.T) {
	g := withPrecision(t, BF16)
	p, gr, m, v := g.Upload(make([]float32, 8)), g.Upload(make([]float32, 8)), g.Alloc(8), g.Alloc(8)
	s := kernels.OptimStep{Beta1: 0.9, Beta2: 0.98, OneMinusBeta1: 0.1, OneMinusBeta2: 0.02, Eps: 1e-8, StepSize: 1e-3, Update: true}
	l := func(b kernels.Buffer) []kernels.Buffer { return []kernels.Buffer{b} }
	for _, c := range []struct {
		half []kernels.HalfTarget
		want string
	}{
		{[]kernels.HalfTarget{{Buf: g.AllocHalf(7)}}, "16-bit target 0"},
		{[]kernels.HalfTarget{{Buf: g.AllocHalf(8), Off: 1}}, "16-bit target 0"},
		{[]kernels.HalfTarget{{Buf: g.Alloc(8)}}, "16-bit target 0"},
		{[]kernels.HalfTarget{{}, {}}, "16-bit targets for 1 parameters"},
		{[]kernels.HalfTarget{{}}, ""},
		{nil, ""},
	} {
		msg := func() (msg string) {
			defer func() {
				if r := recover(); r != nil {
					msg = fmt.Sprint(r)
				}
			}()
			g.AdamStepAllRounded(l(p), l(gr), l(m), l(v), c.half, s)
			return ""
		}()
		if (msg == "") != (c.want == "") || !strings.Contains(msg, c.want) {
			t.Errorf("targets %+v: panic %q, want %q", c.half, msg, c.want)
		}
	}
	if withPrecision(t, FP32).RoundsUpdates() {
		t.Error("RoundsUpdates true in FP32")
	}
}

// TestAdamStepRoundedTiming logs the device time of one update of the 6L-6L parameter
// list (bf16, clipping on): AdamStepClipped followed by RoundAll over the Linear weights'
// copies (today's step: the update, then the copies refreshed at the next step's start)
// against AdamStepClippedRounded with the same copies as targets. Only measures; skipped
// with -short.
func TestAdamStepRoundedTiming(t *testing.T) {
	if testing.Short() {
		t.Skip("timing")
	}
	be := withPrecision(t, BF16)
	net := sixLayerNet(t, be)
	r := rand.New(rand.NewPCG(105, 106))
	var ps, gs, ms, vs, dst, src []kernels.Buffer
	var half []kernels.HalfTarget
	total, copied := 0, 0
	for _, np := range net.Params() {
		n := np.P.Len()
		total += n
		ps, gs = append(ps, np.P), append(gs, be.Upload(randVec(r, n)))
		ms, vs = append(ms, be.Upload(randVec(r, n))), append(vs, be.Alloc(n))
		// The copies the model keeps: every Linear weight and the shared embedding (the
		// tied output projection).
		var tg kernels.HalfTarget
		if strings.HasSuffix(np.Name, "_proj.weight") || strings.HasSuffix(np.Name, "fc1.weight") ||
			strings.HasSuffix(np.Name, "fc2.weight") || np.Name == "encoder.embed_tokens.weight" {
			tg.Buf = be.AllocHalf(n)
			dst, src = append(dst, tg.Buf), append(src, np.P)
			copied += n
		}
		half = append(half, tg)
	}
	// StepSize 0 keeps the state from drifting over the repetitions.
	s := kernels.OptimStep{Beta1: 0.9, Beta2: 0.98, OneMinusBeta1: 0.1, OneMinusBeta2: 0.02, Eps: 1e-8, Update: true}
	us := func(f func()) float64 { return timeDevice(t, be, 20, f).Seconds() * 1e6 }
	const maxNorm = 1e-30 // always clips
	adam := us(func() { be.AdamStepClipped(ps, gs, ms, vs, 1, maxNorm, s) })
	round := us(func() { be.RoundAll(dst, src) })
	sep := us(func() {
		be.AdamStepClipped(ps, gs, ms, vs, 1, maxNorm, s)
		be.RoundAll(dst, src)
	})
	fused := us(func() { be.AdamStepClippedRounded(ps, gs, ms, vs, half, 1, maxNorm, s) })
	t.Logf("%d tensors, %d floats, %d with copies (%d elements): AdamStepClipped %.1f µs + RoundAll %.1f µs; together %.1f µs; AdamStepClippedRounded %.1f µs (%.1f µs saved)",
		len(ps), total, len(dst), copied, adam, round, sep, fused, sep-fused)
}

// TestAdamNormAfterSameBits: AdamStepClipped and AdamStepClippedRounded with
// OptimStep.NormAfter and no clipping (adam_list's norm form: the update forms
// sumsq_partial's partials itself) give the norm, p, m, v and the copies bit for bit as
// without it (sumsq_partial, then the update), bf16 and fp16, on chunk-boundary lengths
// and unaligned buffers (the scalar path and the chunks' last len % 4), three updates in
// a row; the counter shows the norm form ran. With clipping NormAfter is ignored.
func TestAdamNormAfterSameBits(t *testing.T) {
	for _, ft := range formats {
		for _, rounded := range []bool{true, false} {
			t.Run(fmt.Sprintf("%v/rounded=%v", ft.prec, rounded), func(t *testing.T) {
				g := withPrecision(t, ft.prec)
				r := rand.New(rand.NewPCG(103, uint64(ft.prec)))
				lens := []int{1, 3, 4, 5, 0, 8191, 8192, 8193, 3*8192 + 3, 65536 + 7, 512, 1536, 262144}
				offs := []int{0, 1, 0, 2, 0, 0, 1, 0, 3, 0, 4, 1, 0}
				rc := newAdamCopyCase(g, r, lens, offs)
				s := kernels.OptimStep{Beta1: 0.9, Beta2: 0.98, OneMinusBeta1: 0.1, OneMinusBeta2: 0.02, Eps: 1e-8, Decay: -1e-5, StepSize: 1e-3, Update: true}
				pre := float32(1.0 / 3870)
				for k, maxNorm := range []float64{0, 0, 1e-30} {
					before := halfBits(g, rc.shared)
					after := s
					after.NormAfter = true
					n0 := g.normsAfter
					var na float64
					if rounded {
						na = g.AdamStepClippedRounded(rc.a[0], rc.a[1], rc.a[2], rc.a[3], rc.half, pre, maxNorm, after)()
					} else {
						na = g.AdamStepClipped(rc.a[0], rc.a[1], rc.a[2], rc.a[3], pre, maxNorm, after)()
					}
					if want := maxNorm <= 0; (g.normsAfter > n0) != want {
						t.Errorf("update %d, max %g: the norm form ran %v, want %v", k+1, maxNorm, g.normsAfter > n0, want)
					}
					nb := g.AdamStepClipped(rc.b[0], rc.b[1], rc.b[2], rc.b[3], pre, maxNorm, s)()
					what := fmt.Sprintf("update %d, max %g", k+1, maxNorm)
					if math.Float64bits(na) != math.Float64bits(nb) {
						t.Errorf("%s: norm %.17g, reference %.17g", what, na, nb)
					}
					if rounded {
						rc.check(t, g, what, before)
						continue
					}
					names := [4]string{"p", "g", "m", "v"}
					for q := range rc.a {
						for i := range rc.a[q] {
							checkExact(t, fmt.Sprintf("%s: %s[%d]", what, names[q], i), down(g, rc.a[q][i]), down(g, rc.b[q][i]))
						}
					}
				}
			})
		}
	}
}

// TestNormAfterTrainingSameBits trains the fixture model pipelined (train.Stepper.Queue,
// which asks for OptimStep.NormAfter without clipping) in bf16 and fp32 with the norm
// formed by the update and with XFORM_CUDA_NORM_AFTER's switch off: every update's loss,
// nll and gradient norm and the final weights must be the same bits, and the first run
// must have taken the norm form.
func TestNormAfterTrainingSameBits(t *testing.T) {
	gpu(t)
	m, batches := fixtureTraining(t, 4)
	for _, prec := range []Precision{BF16, FP32} {
		for _, rc := range sameBitsCases {
			rc.pipelined, rc.clip = true, 0
			t.Run(prec.String()+"/"+rc.name, func(t *testing.T) {
				checkSwitchSameRun(t, m, batches, prec, rc, "the norm in the update (OptimStep.NormAfter)",
					func(g *Backend) { g.normAfterOff = true }, func(g *Backend) bool { return g.normsAfter > 0 })
			})
		}
	}
}
