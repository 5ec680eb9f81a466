package cuda

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"unsafe"

	"github.com/xform-dev/xform/kernels"
	"github.com/xform-dev/xform/kernels/cpu"
)

// The tensor-core attention kernels (attention_mma.cu) against two references:
//
//   - tight: refMMAForward / refMMABackward below, which round exactly the operands the
//     kernels round (q·scale, k, v, dout, P⊙M and dS, with round16 of
//     gpu_precision_test.go, written from the IEEE definition) and do everything else in
//     float64. The products of two 16-bit values are exact in fp32, so what is left is
//     the fp32 accumulation in the tensor cores and the fp32 softmax. Checked element by
//     element against a bound: (n+2)·2⁻²³ of Σ|terms| for a sum of n products (the
//     truncating unit, as in gpu_precision_test.go) plus the rounding of the final
//     scale and +=. dS is the one operand the kernel rounds from its own fp32 value,
//     which differs from the float64 one by up to η (the error bound of dP, the row's
//     dot and ds, derived in refMMABackward); where ds ± η straddles a 16-bit rounding
//     boundary the kernel may round the other way, and that element's bound grows by
//     the ulp it may flip times its partner (|k| for dq, |q·scale| for dk). A missing
//     or misplaced rounding moves an element by about u·|term| (bf16 u = 2⁻⁸, fp16
//     2⁻¹¹), orders of magnitude beyond these bounds. The probabilities (fp32 softmax of
//     fp32-accumulated scores) must be within tolTight = 1e-5 of ‖ref‖.
//   - loose: the CPU backend (fp32 operands, double sums): relative error ‖Δ‖/‖ref‖ ≤
//     mmaLoose(u) = 8u (3.1e-2 bf16, 3.9e-3 fp16). Each output goes through at most
//     three rounded operands on a path (forward: q, k → scores → p; p⊙m and v; backward:
//     dout, v → dp → ds; ds and k or q), each moving it by at most u relative, and the
//     softmax and ds = p⊙(dp − dot) pass score errors on with a factor ≈ 1 (N(0, 1)
//     scores) but cancel against the row's dot, which can double a relative error.
//     TestAttentionMMAReferenceVsCPU measures the reference against the CPU on the test
//     shapes without a GPU: at most 3.3e-3 (bf16) and 4.5e-4 (fp16), ≤ 0.92u, so 8u
//     leaves a margin of 8; a GPU within the tight bound of the reference lands there
//     too. A Go emulation of the kernels lane by lane (ldmatrix and mma fragments as
//     the PTX ISA defines them; not committed) met the tight bounds on every case below
//     with its worst element at ≤ 0.5 of its bound, and the loose ones at ≤ 3.3e-3.

// mmaLoose is the bound against the fp32 CPU (see above).
func mmaLoose(ft format16) float64 { return 8 * ft.u }

// hostView is a kernels.View over host data.
type hostView struct {
	d           []float32
	off, bs, rs int
}

func hostOf(d []float32, v kernels.View) hostView {
	return hostView{d: d, off: v.Off, bs: v.BatchStride, rs: v.RowStride}
}

func (h hostView) at(b, i, c int) int { return h.off + b*h.bs + i*h.rs + c }

// mmaKeyVisible says whether query i of batch b sees key j (padding, causal).
func mmaKeyVisible(a kernels.AttentionArgs, b, i, j int) bool {
	if a.KeyPadding != nil && a.KeyPadding[b*a.KeyPadStride+j] {
		return false
	}
	return !a.Causal || j <= i+a.QueryOffset
}

const two23 = 1.0 / (1 << 23)

// refMMAForward is the tight forward reference. probs are the float64 softmax of the
// scores of the rounded operands; out is [B][TQ][H·D] computed from pGiven (the
// kernel's own fp32 probabilities, so that P⊙M is rounded from the same values; nil:
// from probs), with an element-wise bound.
func refMMAForward(round func(float32) float32, a kernels.AttentionArgs, q, k, v hostView, mask, pGiven []float32) (probs, out, outBound []float64) {
	D, H, TQ, TK := a.HeadDim, a.Heads, a.TQ, a.TK
	probs = make([]float64, a.Batch*H*TQ*TK)
	out = make([]float64, a.Batch*TQ*H*D)
	outBound = make([]float64, len(out))
	s := make([]float64, TK)
	qs := make([]float64, D)
	pm := make([]float64, TK)
	for b := 0; b < a.Batch; b++ {
		for h := 0; h < H; h++ {
			for i := 0; i < TQ; i++ {
				for d := 0; d < D; d++ {
					qs[d] = float64(round(q.d[q.at(b, i, h*D+d)] * a.Scale))
				}
				m, any := math.Inf(-1), false
				for j := 0; j < TK; j++ {
					s[j] = math.Inf(-1)
					if !mmaKeyVisible(a, b, i, j) {
						continue
					}
					var acc float64
					for d := 0; d < D; d++ {
						acc += qs[d] * float64(round(k.d[k.at(b, j, h*D+d)]))
					}
					s[j], any = acc, true
					m = max(m, acc)
				}
				row := ((b*H+h)*TQ + i) * TK
				var sum float64
				for j := 0; j < TK; j++ {
					if any {
						sum += math.Exp(s[j] - m)
					}
				}
				for j := 0; j < TK; j++ {
					p := math.NaN()
					if any {
						p = math.Exp(s[j]-m) / sum
					}
					probs[row+j] = p
					pf := float32(p)
					if pGiven != nil {
						pf = pGiven[row+j]
					}
					if mask != nil {
						pf *= mask[row+j]
					}
					pm[j] = float64(round(pf))
				}
				for d := 0; d < D; d++ {
					var acc, abs float64
					for j := 0; j < TK; j++ {
						t := pm[j] * float64(round(v.d[v.at(b, j, h*D+d)]))
						acc += t
						abs += math.Abs(t)
					}
					o := (b*TQ+i)*H*D + h*D + d
					out[o] = acc
					outBound[o] = float64(TK+2)*two23*abs + two23*math.Abs(acc)
				}
			}
		}
	}
	return probs, out, outBound
}

// refMMABackward is the tight backward reference: it adds the gradients into gq (the
// dq buffer's contents, as float64) and gkv (the dk/dv buffer's; the same slice for
// self-attention) through the views dq, dk, dv, and the element-wise bounds into
// bq and bkv (zero elsewhere: those elements must not change).
//
// η, the bound on |ds_kernel − ds| from which a rounding of ds may flip: dP is an fp32
// sum of D exact products, off by e1 ≤ (D+2)·2⁻²³·Σ_d|dout·v|; dp = dP·m adds a
// rounding, e2 = |m|·(e1 + 2⁻²⁴·(|dP| + e1)); the row's dot Σ_j dp·p, an fp32 sum of TK
// terms, is off by e3 ≤ Σ_j |p|·e2_j + (TK+2)·2⁻²³·Σ_j |dp·p|; ds = p·(dp − dot) adds two
// roundings. η is twice the sum, for the truncating accumulators' slack.
func refMMABackward(round func(float32) float32, a kernels.AttentionArgs, q, k, v, dout hostView, probs, mask []float32,
	dq, dk, dv kernels.View, gq, gkv, bq, bkv []float64) {
	D, H, TQ, TK := a.HeadDim, a.Heads, a.TQ, a.TK
	r16 := func(x float64) float64 { return float64(round(float32(x))) }
	grid := func() [][]float64 {
		g := make([][]float64, max(TQ, TK))
		for i := range g {
			g[i] = make([]float64, max(D, TK))
		}
		return g
	}
	qs, k16, v16, do16 := grid(), grid(), grid(), grid()
	ds, amb, pm := grid(), grid(), grid()
	for b := 0; b < a.Batch; b++ {
		for h := 0; h < H; h++ {
			for i := 0; i < TQ; i++ {
				for d := 0; d < D; d++ {
					qs[i][d] = float64(round(q.d[q.at(b, i, h*D+d)] * a.Scale))
					do16[i][d] = float64(round(dout.d[dout.at(b, i, h*D+d)]))
				}
			}
			for j := 0; j < TK; j++ {
				for d := 0; d < D; d++ {
					k16[j][d] = float64(round(k.d[k.at(b, j, h*D+d)]))
					v16[j][d] = float64(round(v.d[v.at(b, j, h*D+d)]))
				}
			}
			dp, e2 := make([]float64, TK), make([]float64, TK)
			for i := 0; i < TQ; i++ {
				row := ((b*H+h)*TQ + i) * TK
				var dot, e3a, e3b float64
				for j := 0; j < TK; j++ {
					var acc, abs float64
					for d := 0; d < D; d++ {
						t := do16[i][d] * v16[j][d]
						acc += t
						abs += math.Abs(t)
					}
					e1 := float64(D+2) * two23 * abs
					m := 1.0
					if mask != nil {
						m = float64(mask[row+j])
					}
					dp[j] = acc * m
					e2[j] = math.Abs(m) * (e1 + two23/2*(math.Abs(acc)+e1))
					if p := float64(probs[row+j]); p != 0 {
						dot += dp[j] * p
						e3a += math.Abs(p) * e2[j]
						e3b += math.Abs(dp[j] * p)
					}
				}
				e3 := e3a + float64(TK+2)*two23*e3b
				for j := 0; j < TK; j++ {
					p := float64(probs[row+j])
					ds[i][j], amb[i][j] = 0, 0
					if p != 0 {
						x := p * (dp[j] - dot)
						eta := 2 * (math.Abs(p)*(e2[j]+e3) + 2*two23*math.Abs(p)*(math.Abs(dp[j])+math.Abs(dot)))
						r := r16(x)
						ds[i][j] = r
						amb[i][j] = max(math.Abs(r16(x+eta)-r), math.Abs(r16(x-eta)-r))
					}
					pf := probs[row+j]
					if mask != nil {
						pf *= mask[row+j]
					}
					pm[i][j] = float64(round(pf))
				}
			}
			// dq_i += scale·Σ_j ds_ij·k_j
			for i := 0; i < TQ; i++ {
				for d := 0; d < D; d++ {
					var acc, abs, flip float64
					for j := 0; j < TK; j++ {
						acc += ds[i][j] * k16[j][d]
						abs += math.Abs(ds[i][j] * k16[j][d])
						flip += amb[i][j] * math.Abs(k16[j][d])
					}
					o := dq.Off + b*dq.BatchStride + i*dq.RowStride + h*D + d
					s := float64(a.Scale)
					old := gq[o]
					gq[o] = old + s*acc
					bq[o] = s*(flip+float64(TK+2)*two23*abs) + two23*(math.Abs(old)+math.Abs(s*acc))
				}
			}
			// dk_j += Σ_i ds_ij·qs_i, dv_j += Σ_i pm_ij·dout_i
			for j := 0; j < TK; j++ {
				for d := 0; d < D; d++ {
					var ka, kabs, kflip, va, vabs float64
					for i := 0; i < TQ; i++ {
						ka += ds[i][j] * qs[i][d]
						kabs += math.Abs(ds[i][j] * qs[i][d])
						kflip += amb[i][j] * math.Abs(qs[i][d])
						va += pm[i][j] * do16[i][d]
						vabs += math.Abs(pm[i][j] * do16[i][d])
					}
					o := dk.Off + b*dk.BatchStride + j*dk.RowStride + h*D + d
					old := gkv[o]
					gkv[o] = old + ka
					bkv[o] = kflip + float64(TQ+2)*two23*kabs + two23*(math.Abs(old)+math.Abs(ka))
					o = dv.Off + b*dv.BatchStride + j*dv.RowStride + h*D + d
					old = gkv[o]
					gkv[o] = old + va
					bkv[o] = float64(TQ+2)*two23*vabs + two23*(math.Abs(old)+math.Abs(va))
				}
			}
		}
	}
}

// checkElems requires |got − ref| ≤ bound element by element (NaN exactly where the
// reference has NaN) and logs the worst ratio and the relative error.
func checkElems(t *testing.T, what string, got []float32, ref, bound []float64) {
	t.Helper()
	worst, at := 0.0, -1
	var num, den float64
	for i, g := range got {
		r := ref[i]
		if math.IsNaN(r) || math.IsNaN(float64(g)) {
			if math.IsNaN(r) != math.IsNaN(float64(g)) {
				t.Errorf("%s: element %d = %v, reference %v", what, i, g, r)
				return
			}
			continue
		}
		d := math.Abs(float64(g) - r)
		num += d * d
		den += r * r
		if d == 0 {
			continue
		}
		if x := d / bound[i]; !(x <= worst) {
			worst, at = x, i
		}
	}
	if !(worst <= 1) {
		t.Errorf("%s: element %d = %.9g, reference %.9g, off by %.3g > bound %.3g", what, at, got[at], ref[at],
			math.Abs(float64(got[at])-ref[at]), bound[at])
		return
	}
	t.Logf("%s vs rounded operands: relative error %.3g, worst element at %.2f of its bound", what, math.Sqrt(num/max(den, 1e-300)), worst)
}

func f64(x []float32) []float64 {
	y := make([]float64, len(x))
	for i, v := range x {
		y[i] = float64(v)
	}
	return y
}

func f32(x []float64) []float32 {
	y := make([]float32, len(x))
	for i, v := range x {
		y[i] = float32(v)
	}
	return y
}

// mmaCases are the training shapes: the bench shape's self (left pad), decoder self
// (causal, right pad) and cross attention, T in {7, 41, 64, 100, 128}, TQ ≠ TK, with
// and without a dropout mask, both kernel variants (TK ≤ 64, > 64).
var mmaCases = []attnCase{
	{name: "encoder self B64 T41 left pad dropout", B: 64, H: 8, D: 64, TQ: 41, TK: 41, pad: true, left: true, drop: true, minLen: 20},
	{name: "decoder self B48 T41 causal right pad dropout", B: 48, H: 8, D: 64, TQ: 41, TK: 41, causal: true, pad: true, drop: true, minLen: 20},
	{name: "cross B40 TQ37 TK29 left pad dropout", B: 40, H: 8, D: 64, TQ: 37, TK: 29, pad: true, left: true, drop: true, cross: true, minLen: 20},
	{name: "self B30 T7 no masks", B: 30, H: 4, D: 64, TQ: 7, TK: 7},
	{name: "self B8 T64 causal pad", B: 8, H: 4, D: 64, TQ: 64, TK: 64, causal: true, pad: true, minLen: 30},
	{name: "cross B6 TQ100 TK128 left pad dropout", B: 6, H: 4, D: 64, TQ: 100, TK: 128, cross: true, pad: true, left: true, drop: true, minLen: 10},
	{name: "self B4 T128 causal right pad dropout", B: 4, H: 4, D: 64, TQ: 128, TK: 128, causal: true, pad: true, drop: true, minLen: 60},
	{name: "self B5 T100 left pad", B: 5, H: 2, D: 64, TQ: 100, TK: 100, pad: true, left: true, minLen: 50},
	{name: "cross B9 TQ1 TK65", B: 9, H: 3, D: 64, TQ: 1, TK: 65, cross: true, pad: true, left: true, drop: true, minLen: 20},
	{name: "cross B7 TQ70 TK1", B: 7, H: 2, D: 64, TQ: 70, TK: 1, cross: true},
}

// mmaData is one case's inputs on the host (and, with a pair, on both backends).
type mmaData struct {
	tc                attnCase
	a                 kernels.AttentionArgs
	vw                attnViews
	q, kv, dout, mask []float32 // mask nil without dropout
	dq, dkv           []float32 // the gradients' initial contents (accumulated into)
}

func newMMAData(r *rand.Rand, a kernels.AttentionArgs, tc attnCase) *mmaData {
	m := &mmaData{tc: tc, a: a, vw: tc.views()}
	m.q = randVec(r, m.vw.qn)
	m.kv = m.q
	if tc.cross {
		m.kv = randVec(r, m.vw.kvn)
	}
	if tc.drop {
		m.mask = make([]float32, tc.B*tc.H*tc.TQ*tc.TK)
		for i := range m.mask {
			if r.Float64() >= 0.1 {
				m.mask[i] = float32(1 / 0.9)
			}
		}
	}
	m.dout = randVec(r, tc.B*tc.TQ*tc.H*tc.D)
	m.dq = randVec(r, m.vw.qn)
	m.dkv = m.dq
	if tc.cross {
		m.dkv = randVec(r, m.vw.kvn)
	}
	return m
}

func (m *mmaData) outView(b kernels.Buffer) kernels.View {
	d := m.tc.H * m.tc.D
	return kernels.View{Buf: b, BatchStride: m.tc.TQ * d, RowStride: d}
}

// reference runs the tight references: probs and out (from pGiven, see refMMAForward),
// and the gradient buffers after the backward from the probabilities pb.
func (m *mmaData) reference(round func(float32) float32, pGiven, pb []float32) (probs, out, outBound, gq, gkv, bq, bkv []float64) {
	vw := m.vw
	qv, kv, vv := hostOf(m.q, vw.q(nil)), hostOf(m.kv, vw.k(nil)), hostOf(m.kv, vw.v(nil))
	probs, out, outBound = refMMAForward(round, m.a, qv, kv, vv, m.mask, pGiven)
	gq, bq = f64(m.dq), make([]float64, len(m.dq))
	gkv, bkv = gq, bq
	if m.tc.cross {
		gkv, bkv = f64(m.dkv), make([]float64, len(m.dkv))
	}
	refMMABackward(round, m.a, qv, kv, vv, hostOf(m.dout, m.outView(nil)), pb, m.mask,
		vw.q(nil), vw.k(nil), vw.v(nil), gq, gkv, bq, bkv)
	return probs, out, outBound, gq, gkv, bq, bkv
}

// cpuReference runs the CPU backend (fp32 operands, the loose reference): probs, out
// and the gradient buffers.
func (m *mmaData) cpuReference() (probs, out, gq, gkv []float32) {
	c := cpu.New(0)
	vw, tc := m.vw, m.tc
	qb := c.Upload(m.q)
	kvb := qb
	if tc.cross {
		kvb = c.Upload(m.kv)
	}
	var mb kernels.Buffer
	if m.mask != nil {
		mb = c.Upload(m.mask)
	}
	pb := c.Alloc(tc.B * tc.H * tc.TQ * tc.TK)
	ob := c.Alloc(tc.B * tc.TQ * tc.H * tc.D)
	c.AttentionForward(m.outView(ob), vw.q(qb), vw.k(kvb), vw.v(kvb), m.a, pb, mb)
	dqb := c.Upload(m.dq)
	dkvb := dqb
	if tc.cross {
		dkvb = c.Upload(m.dkv)
	}
	c.AttentionBackward(vw.q(dqb), vw.k(dkvb), vw.v(dkvb), m.outView(c.Upload(m.dout)),
		vw.q(qb), vw.k(kvb), vw.v(kvb), m.a, pb, mb)
	gkv = cpu.Data(dkvb)
	return cpu.Data(pb), cpu.Data(ob), cpu.Data(dqb), gkv
}

// TestAttentionMMAReferenceVsCPU checks the references without a GPU: with rounding
// switched off they are the CPU backend's attention (so their masking, layout and NaN
// rows are right), and with bf16/fp16 rounding they stay within mmaLoose of it on every
// test shape (the margin the loose bound claims).
func TestAttentionMMAReferenceVsCPU(t *testing.T) {
	identity := func(x float32) float32 { return x }
	for ci, tc := range append(append([]attnCase{}, mmaCases...), mmaAllMaskedCase) {
		tc.B = min(tc.B, 8) // float64 references are slow; the shapes matter, not the batch
		r := rand.New(rand.NewPCG(uint64(61+ci), 7))
		p := &pair{r: r}
		a := tc.args(p)
		if tc.name == mmaAllMaskedCase.name {
			maskSentence(a, tc, mmaEmpty)
		}
		m := newMMAData(r, a, tc)
		cp, co, cq, ckv := m.cpuReference()
		worst := map[string]float64{}
		for _, rc := range []struct {
			name  string
			round func(float32) float32
			limit float64
		}{{"fp32", identity, tolTight}, {"bf16", fmtBF16.round16, mmaLoose(fmtBF16)}, {"fp16", fmtF16.round16, mmaLoose(fmtF16)}} {
			probs, out, _, gq, gkv, _, _ := m.reference(rc.round, nil, cp)
			for _, c := range []struct {
				what      string
				got, want []float32
			}{{"probs", f32(probs), cp}, {"out", f32(out), co}, {"dq", f32(gq), cq}, {"dk, dv", f32(gkv), ckv}} {
				e := relErr(c.got, c.want)
				if !(e <= rc.limit) {
					t.Errorf("%s %s: %s reference vs CPU %.3g > %.3g", tc.name, rc.name, c.what, e, rc.limit)
				}
				worst[rc.name] = max(worst[rc.name], e)
			}
		}
		t.Logf("%s: reference vs CPU, worst relative error: fp32 %.2g, bf16 %.2g, fp16 %.2g", tc.name, worst["fp32"], worst["bf16"], worst["fp16"])
	}
}

// mmaAllMaskedCase has a sentence whose keys are all padding (mmaEmpty).
var mmaAllMaskedCase = attnCase{name: "empty sentence", B: 6, H: 4, D: 64, TQ: 19, TK: 23, cross: true, pad: true, left: true, drop: true, minLen: 5}

const mmaEmpty = 2

func maskSentence(a kernels.AttentionArgs, tc attnCase, b int) {
	for j := 0; j < tc.TK; j++ {
		a.KeyPadding[b*tc.TK+j] = true
	}
}

// TestAttentionMMAKernelNames checks that every kernel the launch code looks up is
// defined in attention_mma.cu (the forward and backward names come from macros).
func TestAttentionMMAKernelNames(t *testing.T) {
	b, err := sources.ReadFile("attention_mma.cu")
	if err != nil {
		t.Fatal(err)
	}
	src := string(b)
	defined := map[string]bool{"attention_mma_round": strings.Contains(src, "void attention_mma_round("),
		"attention_mma2_fwd": strings.Contains(src, ") attention_mma2_fwd("),
		"attention_mma2_bwd": strings.Contains(src, ") attention_mma2_bwd("),
		"attention_mma3_fwd": strings.Contains(src, ") attention_mma3_fwd("),
		"attention_mma3_bwd": strings.Contains(src, ") attention_mma3_bwd("),
		// The 16-bit input kernels (attention_mma16.go).
		"attention_mma2_fwd_h": strings.Contains(src, ") attention_mma2_fwd_h("),
		"attention_mma2_bwd_h": strings.Contains(src, ") attention_mma2_bwd_h("),
		"attention_mma3_fwd_h": strings.Contains(src, ") attention_mma3_fwd_h("),
		"attention_mma3_bwd_h": strings.Contains(src, ") attention_mma3_bwd_h("),
		// The third kernels' bits variants (attention_mma3.go).
		"attention_mma3_fwd_b": strings.Contains(src, ") attention_mma3_fwd_b("),
		"attention_mma3_bwd_b": strings.Contains(src, ") attention_mma3_bwd_b(")}
	for _, m := range []string{"4", "8"} {
		defined["attention_mma_fwd"+m] = strings.Contains(src, ") attention_mma_fwd##MAXNT(") && strings.Contains(src, "\nAM_FWD("+m+")\n")
	}
	// The 16-bit-input bits variants (AM3_HB).
	for _, m := range []string{"", "2", "3"} {
		ok := strings.Contains(src, "\nAM3_HB("+m+", ")
		defined["attention_mma3_fwd_hb"+m] = ok && strings.Contains(src, ") attention_mma3_fwd_hb##SUF(")
		defined["attention_mma3_bwd_hb"+m] = ok && strings.Contains(src, ") attention_mma3_bwd_hb##SUF(")
	}
	// Their forms on packed rows (AM3_HR).
	for _, m := range []string{"", "2", "3"} {
		ok := strings.Contains(src, "\nAM3_HR("+m+", ")
		defined["attention_mma3_fwd_hr"+m] = ok && strings.Contains(src, ") attention_mma3_fwd_hr##SUF(")
		defined["attention_mma3_bwd_hr"+m] = ok && strings.Contains(src, ") attention_mma3_bwd_hr##SUF(")
	}
	// The bits variants' short-key forms (AM3_B_NT).
	for _, m := range []string{"2", "3"} {
		ok := strings.Contains(src, "\nAM3_B_NT("+m+")\n")
		defined["attention_mma3_fwd_b"+m] = ok && strings.Contains(src, ") attention_mma3_fwd_b##NT(")
		defined["attention_mma3_bwd_b"+m] = ok && strings.Contains(src, ") attention_mma3_bwd_b##NT(")
	}
	for _, name := range amKernels {
		if !defined[name] {
			t.Errorf("kernel %s is looked up but not defined in attention_mma.cu", name)
		}
	}
}

// TestAttentionMMALayout checks the launch geometry on the host: the forward's tiles
// cover every query row without an empty tile and stay within 48 KiB; the 16-bit tile
// strides put the 8 rows of an ldmatrix matrix on 8 distinct 16-byte bank groups; the
// bench shape's second backward needs no opt-in; the shapes beyond the kernels are
// declined.
func TestAttentionMMALayout(t *testing.T) {
	groups := func(strideBytes int) int {
		seen := map[int]bool{}
		for r := 0; r < 8; r++ {
			seen[(r*strideBytes)%128/16] = true
		}
		return len(seen)
	}
	if g := groups(2 * amLD); g != 8 {
		t.Errorf("AM_LD %d: an ldmatrix matrix hits %d bank groups", amLD, g)
	}
	for tk := 1; tk <= amMaxKeys; tk++ {
		if g := groups(2 * (16*amBlocks16(tk) + 8)); g != 8 {
			t.Errorf("TK %d: dS/PM stride hits %d bank groups", tk, g)
		}
		if v := amVariant(tk); (v == 0) != (tk <= 64) {
			t.Errorf("TK %d: variant %d", tk, v)
		}
		for _, tq := range []int{1, 7, 16, 17, 41, 64, 65, 100, 128, 1000} {
			a := kernels.AttentionArgs{Batch: 1, Heads: 1, HeadDim: 64, TQ: tq, TK: tk}
			p := planMMAForward(a)
			rows := 16 * p.warps
			if p.warps < 1 || p.warps > amFwdWarps || p.tiles*rows < tq || (p.tiles-1)*rows >= tq || p.shared > afShared || p.shared%16 != 0 {
				t.Fatalf("TQ %d TK %d: forward %+v", tq, tk, p)
			}
		}
	}
	for tk := 1; tk <= am2MaxT; tk++ {
		for _, tq := range []int{1, 7, 16, 17, 41, 64, 65, 1000} {
			a := kernels.AttentionArgs{Batch: 1, Heads: 1, HeadDim: 64, TQ: tq, TK: tk}
			for _, mask := range []bool{false, true} {
				if p := planMMA2Forward(a, mask); p.shared > afShared || p.shared%16 != 0 {
					t.Fatalf("TQ %d TK %d mask %v: second forward %+v", tq, tk, mask, p)
				}
			}
			if tq <= am2MaxT {
				if w := amBackwardWarps2(a); w < amBlocks16(tq) || w < amBlocks16(tk) || w > 4 {
					t.Fatalf("TQ %d TK %d: second backward %d warps", tq, tk, w)
				}
				// Without a stored mask (none, or drawn from the seed) the M region holds
				// only P⊙M, 16-bit [TQp][TKp+8]: the same offsets, less at the end.
				tqp, tkp := 16*amBlocks16(tq), 16*amBlocks16(tk)
				stored, drawn := amBackwardShared2(a, true), amBackwardShared2(a, false)
				if drawn%16 != 0 || stored-drawn != (max(4*tq*tk, 2*tqp*(tkp+8))+15)&^15-2*tqp*(tkp+8) {
					t.Fatalf("TQ %d TK %d: second backward %d bytes with a stored mask, %d without", tq, tk, stored, drawn)
				}
			}
		}
	}
	bench := kernels.AttentionArgs{Batch: 200, Heads: 8, HeadDim: 64, TQ: 41, TK: 41}
	if s := amBackwardShared2(bench, true); s > afShared {
		t.Errorf("bench shape second backward needs %d bytes of shared memory, over %d", s, afShared)
	}
	t.Logf("bench shape: forward %+v, second backward %d warps, %d bytes", planMMAForward(bench),
		amBackwardWarps2(bench), amBackwardShared2(bench, true))
	for _, c := range []struct {
		a        kernels.AttentionArgs
		backward bool
	}{
		{kernels.AttentionArgs{Batch: 1, Heads: 1, HeadDim: 32, TQ: 4, TK: 4}, false},
		{kernels.AttentionArgs{Batch: 1, Heads: 1, HeadDim: 64, TQ: 4, TK: 129}, false},
		{kernels.AttentionArgs{Batch: 1, Heads: 1, HeadDim: 64, TQ: 129, TK: 4}, true},
		{kernels.AttentionArgs{Batch: 1, Heads: 1, HeadDim: 64, TQ: 4, TK: 0}, false},
	} {
		if mmaShape(c.a, c.backward) {
			t.Errorf("%+v (backward %v) taken by the tensor-core kernels", c.a, c.backward)
		}
	}
	if !mmaShape(kernels.AttentionArgs{Batch: 1, Heads: 1, HeadDim: 64, TQ: 1000, TK: 128}, false) {
		t.Error("a forward with 1000 query rows is declined")
	}
}

// withMMAOff runs the rest of the test on the float kernels (attention_fast.cu).
func withMMAOff(t *testing.T, be *Backend) {
	t.Helper()
	old := be.setMMAOff(true)
	t.Cleanup(func() { be.setMMAOff(old) })
}

// mmaUsed says whether be takes a call of this shape on the tensor cores.
func mmaUsed(be *Backend, a kernels.AttentionArgs, backward bool) bool {
	defer be.enter()()
	return be.mmaUsable(a, backward)
}

// checkMMATrain runs AttentionForward and AttentionBackward on the GPU and compares
// them with the tight references and the CPU. The backward reads the CPU's
// probabilities (uploaded), so the forward's error stays out of it. Where the backward
// is not on the tensor cores (beyond the second kernels, or under withMMAFirst) the
// float kernels take it, as in training, and only the CPU comparison and the NaN
// pattern apply to the gradients: the tight reference rounds operands they keep in fp32.
func checkMMATrain(t *testing.T, be *Backend, ft format16, m *mmaData, empty int) {
	t.Helper()
	tc, vw := m.tc, m.vw
	if be.info.Major < 8 {
		t.Skip("the tensor-core kernels need sm_80")
	}
	if !mmaUsed(be, m.a, false) {
		t.Fatalf("%s: the tensor-core kernels decline the shape", tc.name)
	}
	tensorBwd := mmaUsed(be, m.a, true)
	qb := be.Upload(m.q)
	kvb := qb
	if tc.cross {
		kvb = be.Upload(m.kv)
	}
	var mb kernels.Buffer
	if m.mask != nil {
		mb = be.Upload(m.mask)
	}
	np := tc.B * tc.H * tc.TQ * tc.TK
	pb, ob := be.Alloc(np), be.Alloc(tc.B*tc.TQ*tc.H*tc.D)
	be.AttentionForward(m.outView(ob), vw.q(qb), vw.k(kvb), vw.v(kvb), m.a, pb, mb)
	gp, gout := down(be, pb), down(be, ob)

	cp, co, cq, ckv := m.cpuReference()
	dqb := be.Upload(m.dq)
	dkvb := dqb
	if tc.cross {
		dkvb = be.Upload(m.dkv)
	}
	be.AttentionBackward(vw.q(dqb), vw.k(dkvb), vw.v(dkvb), m.outView(be.Upload(m.dout)),
		vw.q(qb), vw.k(kvb), vw.v(kvb), m.a, be.Upload(cp), mb)
	gq := down(be, dqb)
	gkv := gq
	if tc.cross {
		gkv = down(be, dkvb)
	}

	probs, out, outBound, rq, rkv, bq, bkv := m.reference(ft.round16, gp, cp)
	checkClose(t, "probs vs rounded operands", gp, f32(probs), tolTight)
	checkElems(t, "out", gout, out, outBound)
	switch {
	case !tensorBwd:
		t.Log("backward on the float kernels: gradients checked against the CPU only")
	case tc.cross:
		checkElems(t, "dq", gq, rq, bq)
		checkElems(t, "dk, dv", gkv, rkv, bkv)
	default:
		checkElems(t, "dq, dk, dv", gq, rq, bq)
	}
	loose := mmaLoose(ft)
	checkClose(t, "probs vs fp32 CPU", gp, cp, loose)
	checkClose(t, "out vs fp32 CPU", gout, co, loose)
	checkClose(t, "dq vs fp32 CPU", gq, cq, loose)
	if tc.cross {
		checkClose(t, "dk, dv vs fp32 CPU", gkv, ckv, loose)
	}
	if empty < 0 {
		return
	}
	// The NaNs must be exactly the empty sentence's: its output rows, probabilities and
	// gradient rows (all heads' columns), nothing else.
	nanOnly := func(what string, got []float32, batchLen, rowLen, rows int) {
		t.Helper()
		for b := 0; b < tc.B; b++ {
			for i := 0; i < rows; i++ {
				for c := 0; c < rowLen; c++ {
					x := got[b*batchLen+i*rowLen+c]
					if isNaN := x != x; isNaN != (b == empty) {
						t.Errorf("%s: batch %d row %d column %d = %v (empty sentence %d)", what, b, i, c, x, empty)
						return
					}
				}
			}
		}
	}
	d := tc.H * tc.D
	nanOnly("out", gout, tc.TQ*d, d, tc.TQ)
	nanOnly("probs", gp, tc.H*tc.TQ*tc.TK, tc.TK, tc.H*tc.TQ)
	nanOnly("dq", gq, tc.TQ*d, d, tc.TQ)
	nanOnly("dk, dv", gkv, tc.TK*2*d, 2*d, tc.TK)
}

// mmaVersions are the kernel generations the correctness tests run: the second kernels
// (attention_mma2_*, the default where TQ, TK ≤ 64; beyond, the first forward and the
// float backward) and the first forward everywhere (withMMAFirst; the float backward).
var mmaVersions = []struct {
	name  string
	first bool
}{{"mma2", false}, {"mma1", true}}

// withMMAFirst has the first tensor-core kernels taken where the second ones fit.
func withMMAFirst(t *testing.T, be *Backend, on bool) *Backend {
	t.Helper()
	old := be.setMMAFirst(on)
	t.Cleanup(func() { be.setMMAFirst(old) })
	return be
}

func TestAttentionMMATrainShapes(t *testing.T) {
	for ci, tc := range mmaCases {
		for _, ft := range formats {
			for _, ver := range mmaVersions {
				t.Run(fmt.Sprintf("%s/%v/%s", tc.name, ft.prec, ver.name), func(t *testing.T) {
					be := withMMAFirst(t, withPrecision(t, ft.prec), ver.first)
					p := newPair(t, uint64(71+ci))
					a := tc.args(p)
					checkMMATrain(t, be, ft, newMMAData(p.r, a, tc), -1)
				})
			}
		}
	}
}

// TestAttentionMMA2Taken guards the dispatch on the device: at the training shapes up
// to T 64 both directions run on the second kernels by default, and longer ones do not
// (TestAttentionMMADispatch checks every shape without a GPU).
func TestAttentionMMA2Taken(t *testing.T) {
	be := withPrecision(t, BF16)
	if be.info.Major < 8 {
		t.Skip("the tensor-core kernels need sm_80")
	}
	for _, c := range []struct {
		tq, tk int
		want   bool
	}{{41, 41, true}, {20, 20, true}, {64, 64, true}, {1, 64, true}, {64, 1, true}, {100, 100, false}, {41, 65, false}} {
		a := kernels.AttentionArgs{Batch: 200, Heads: 8, HeadDim: 64, TQ: c.tq, TK: c.tk}
		func() {
			defer be.enter()()
			for _, backward := range []bool{false, true} {
				got := be.mmaUsable(a, backward) && be.mma2(a, backward)
				if got != c.want {
					t.Errorf("TQ %d TK %d backward %v: second kernels taken %v, want %v", c.tq, c.tk, backward, got, c.want)
				}
			}
		}()
	}
}

// TestAttentionMMAAllMasked: a sentence whose every key is padding gives NaN
// probabilities, a NaN output and NaN gradients for its rows and keys, as the CPU (and
// torch) do, while the other sentences stay finite and within the bounds.
func TestAttentionMMAAllMasked(t *testing.T) {
	for _, ft := range formats {
		for _, ver := range mmaVersions {
			t.Run(ft.prec.String()+"/"+ver.name, func(t *testing.T) {
				be := withMMAFirst(t, withPrecision(t, ft.prec), ver.first)
				p := newPair(t, 73)
				tc := mmaAllMaskedCase
				a := tc.args(p)
				maskSentence(a, tc, mmaEmpty)
				checkMMATrain(t, be, ft, newMMAData(p.r, a, tc), mmaEmpty)
			})
		}
	}
}

// TestAttentionMMAUnalignedViews: views whose rows do not start on 16 bytes (the
// kernels' four-scalar staging path) and odd row strides (no float2 stores).
func TestAttentionMMAUnalignedViews(t *testing.T) {
	for _, ver := range mmaVersions {
		t.Run(ver.name, func(t *testing.T) {
			testMMAUnalignedViews(t, withMMAFirst(t, withPrecision(t, BF16), ver.first))
		})
	}
}

func testMMAUnalignedViews(t *testing.T, be *Backend) {
	p := newPair(t, 79)
	tc := attnCase{name: "unaligned", B: 5, H: 2, D: 64, TQ: 23, TK: 19, cross: true, pad: true, left: true, drop: true, minLen: 5}
	a := tc.args(p)
	m := newMMAData(p.r, a, tc)
	// q rows of width 2·64 + 1 from offset 1: every row start and stride is odd.
	d := tc.H * tc.D
	w := d + 1
	m.vw.q = func(b kernels.Buffer) kernels.View {
		return kernels.View{Buf: b, Off: 1, BatchStride: tc.TQ * w, RowStride: w}
	}
	m.vw.qn = tc.B*tc.TQ*w + 1
	m.q, m.dq = randVec(p.r, m.vw.qn), randVec(p.r, m.vw.qn)
	checkMMATrain(t, be, fmtBF16, m, -1)
}

// TestAttentionMMARounding: the kernels' hardware conversion (cvt.rn, attention_mma_round)
// gives cast.cu's bits for every non-NaN input, NaN for NaN: the edges of both formats
// (subnormals, ties, the fp16 overflow threshold 65520, ±Inf) and 2²⁰ random bit
// patterns.
func TestAttentionMMARounding(t *testing.T) {
	be := gpu(t)
	if be.info.Major < 8 {
		t.Skip("the tensor-core kernels need sm_80")
	}
	r := rand.New(rand.NewPCG(83, 7))
	var x []float32
	for _, v := range []float32{0, 1, 1.00390625, 1.01171875, 65504, 65519.99, 65520, 65536, 1e10, 6.1e-5, 6.0e-5,
		5.96e-8, 2.98e-8, 2.99e-8, 1e-9, 1e-40, float32(math.Inf(1)), float32(math.NaN()), math.MaxFloat32, math.SmallestNonzeroFloat32} {
		x = append(x, v, -v)
	}
	for len(x) < 1<<20 {
		x = append(x, math.Float32frombits(r.Uint32()))
	}
	xb := be.Upload(x)
	pairs := len(x) / 2
	for _, ft := range formats {
		half := boolInt(ft.prec == FP16)
		yb := be.Alloc(pairs) // 2 × 16 bits per float32 slot
		func() {
			defer be.enter()()
			be.prm.reset().ptr(addr(yb)).ptr(addr(xb)).i64(pairs).i32(half)
			be.elem(be.mmaFns().round, int64(pairs))
		}()
		ref := be.Alloc(pairs)
		func() {
			defer be.enter()()
			fn := be.fn.f32ToBF16
			if half != 0 {
				fn = be.fn.f32ToF16
			}
			be.prm.reset().ptr(addr(ref)).ptr(addr(xb)).i64(len(x))
			be.elem(fn, int64(len(x)))
		}()
		got, want := down(be, yb), down(be, ref)
		bad := 0
		for i := range got {
			g, w := math.Float32bits(got[i]), math.Float32bits(want[i])
			for s := 0; s < 32; s += 16 {
				gh, wh := uint16(g>>s), uint16(w>>s)
				if gh == wh || (isNaN16(ft, gh) && isNaN16(ft, wh)) {
					continue
				}
				if bad++; bad <= 5 {
					t.Errorf("%v: x = %g (%#08x): cvt.rn %#04x, cast.cu %#04x", ft.prec, x[2*i+s/16], math.Float32bits(x[2*i+s/16]), gh, wh)
				}
			}
		}
		if bad > 0 {
			t.Errorf("%v: %d of %d conversions differ", ft.prec, bad, len(x))
		}
	}
}

func isNaN16(ft format16, h uint16) bool {
	if ft.prec == FP16 {
		return h&0x7c00 == 0x7c00 && h&0x3ff != 0
	}
	return h&0x7f80 == 0x7f80 && h&0x7f != 0
}

// TestAttentionMMADiffersFromFloat guards against the dispatch silently keeping the
// float kernels (and checks the switch the timing test uses): at the bench shape the
// tensor-core output differs from the float kernels' by the 16-bit rounding (≈ u), far
// above the float kernels' own error (≈ 1e-7).
func TestAttentionMMADiffersFromFloat(t *testing.T) {
	be := withPrecision(t, BF16)
	if be.info.Major < 8 {
		t.Skip("the tensor-core kernels need sm_80")
	}
	p := newPair(t, 89)
	tc := attnCase{B: 32, H: 8, D: 64, TQ: 41, TK: 41, pad: true, left: true, minLen: 20}
	a := tc.args(p)
	m := newMMAData(p.r, a, tc)
	run := func() []float32 {
		qb := be.Upload(m.q)
		ob := be.Alloc(tc.B * tc.TQ * tc.H * tc.D)
		be.AttentionForward(m.outView(ob), m.vw.q(qb), m.vw.k(qb), m.vw.v(qb), a, be.Alloc(tc.B*tc.H*tc.TQ*tc.TK), nil)
		return down(be, ob)
	}
	mma := run()
	old := be.setMMAOff(true)
	if mmaUsed(be, a, false) {
		t.Error("the switch did not turn the tensor-core kernels off")
	}
	float := run()
	be.setMMAOff(old)
	if e := relErr(mma, float); !(e > 1e-4 && e <= mmaLoose(fmtBF16)) {
		t.Errorf("tensor-core vs float kernels: relative difference %.3g, want (1e-4, %.3g]", e, mmaLoose(fmtBF16))
	} else {
		t.Logf("tensor-core vs float kernels: relative difference %.3g", e)
	}
}

// TestAttentionMMATiming logs the device time per call of AttentionForward and
// AttentionBackward (bf16, dropout) at the xform bench shape (B 200, H 8, T 41, D 64)
// and at T 20, 64 and 100 (B·T ≈ 8000) for the second tensor-core kernels (the
// default), the first forward (with the float backward) and the float kernels
// (attention_fast.cu), and each kernel's registers and resident blocks per SM.
// It checks nothing; -short skips it. Aim at the bench shape: forward + backward
// ≤ 110 µs.
func TestAttentionMMATiming(t *testing.T) {
	if testing.Short() {
		t.Skip("timing only")
	}
	be := gpu(t)
	logMMAOccupancy(t, be)
	for _, tc := range []attnCase{
		{name: "encoder self", B: 200, H: 8, D: 64, TQ: 41, TK: 41, pad: true, left: true, drop: true, minLen: 20},
		{name: "decoder self causal", B: 200, H: 8, D: 64, TQ: 41, TK: 41, causal: true, pad: true, drop: true, minLen: 20},
		{name: "cross", B: 200, H: 8, D: 64, TQ: 41, TK: 41, cross: true, pad: true, left: true, drop: true, minLen: 20},
		{name: "self T20", B: 400, H: 8, D: 64, TQ: 20, TK: 20, pad: true, left: true, drop: true, minLen: 10},
		{name: "self T64", B: 125, H: 8, D: 64, TQ: 64, TK: 64, pad: true, left: true, drop: true, minLen: 30},
		{name: "self T100", B: 80, H: 8, D: 64, TQ: 100, TK: 100, pad: true, left: true, drop: true, minLen: 50},
	} {
		fwd, bwd := attnTimingCalls(t, be, tc)
		for _, ver := range []string{"mma2", "mma1", "float"} {
			t.Run(fmt.Sprintf("%s/%s", tc.name, ver), func(t *testing.T) {
				withPrecision(t, BF16)
				if ver == "mma1" {
					withMMAFirst(t, be, true)
				}
				if ver == "float" {
					withMMAOff(t, be)
				}
				fwd()
				f := timeDevice(t, be, 50, fwd)
				b := timeDevice(t, be, 50, bwd)
				t.Logf("%s B %d T %d: %s forward %.1f µs, backward %.1f µs per call",
					tc.name, tc.B, tc.TQ, ver, f.Seconds()*1e6, b.Seconds()*1e6)
			})
		}
	}
}

// logMMAOccupancy logs registers, local memory and resident blocks per SM of the
// attention kernels at the bench shape's launch (cuFuncGetAttribute and
// cuOccupancyMaxActiveBlocksPerMultiprocessor, bound here: the backend needs neither).
func logMMAOccupancy(t *testing.T, be *Backend) {
	var getAttr, occ uintptr
	if err := bind(be.drv.handle, "libcuda", []symbol{{"cuFuncGetAttribute", &getAttr},
		{"cuOccupancyMaxActiveBlocksPerMultiprocessor", &occ}}); err != nil {
		t.Logf("occupancy not logged: %v", err)
		return
	}
	defer be.enter()()
	f, fa := be.mmaFns(), be.fastFns()
	bench := kernels.AttentionArgs{Batch: 200, Heads: 8, HeadDim: 64, TQ: 41, TK: 41}
	p1, p2 := planMMAForward(bench), planMMA2Forward(bench, true)
	_, fbs := afBackwardShared(bench)
	for _, k := range []struct {
		name          string
		fn            uintptr
		threads, smem int
	}{
		{"attention_mma_fwd4", f.fwd[0], 32 * p1.warps, p1.shared},
		{"attention_mma2_fwd", f.fwd2, 32 * p2.warps, p2.shared},
		{"attention_mma2_bwd", f.bwd2, 32 * amBackwardWarps2(bench), amBackwardShared2(bench, true)},
		{"attention_fast_bwd2", fa.bwd[1], afThreads, fbs},
	} {
		var regs, local, blocks int32
		call(getAttr, uintptr(unsafe.Pointer(&regs)), 4, k.fn)  // CU_FUNC_ATTRIBUTE_NUM_REGS
		call(getAttr, uintptr(unsafe.Pointer(&local)), 3, k.fn) // CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES
		call(occ, uintptr(unsafe.Pointer(&blocks)), k.fn, uintptr(k.threads), uintptr(k.smem))
		t.Logf("%s at B 200 T 41: %d registers, %d bytes local, %d threads, %d bytes shared: %d blocks per SM",
			k.name, regs, local, k.threads, k.smem, blocks)
	}
}
