package cuda

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/xform-dev/xform/kernels"
	"github.com/xform-dev/xform/kernels/cpu"
)

// Tests of the label-smoothed loss over 16-bit logits and of the ls_pipe_* kernels
// (loss.cu).
//
// Reference: the CPU backend's fp32 LabelSmoothedLoss on the logits rounded to the
// format in Go (so both sides see the same values; the GPU widens them, which is exact).
// Bounds, as for float32 logits in the float kernels (gpu_lossoptim_test.go): loss and
// nll sums 1e-6 relative (fp32 sums of V terms over groups of four, double beyond:
// ~√V·2⁻²⁴ per row, ~1e-8 measured by the emulation below); a float32 dlogits 1e-6
// norm-wise and 1e-5·|scale| per element (expf's 2 ulp and the float roundings of
// x − m_t, m_t − c and of c itself, ≤ ~1e-6 relative in p at |lp| ≈ 16). A 16-bit
// dlogits is RN16 of that float: per element within u·(|ref| + 1e-5·|scale|) +
// 1e-5·|scale| of the CPU (u the format's unit roundoff), and bit for bit RN16 of the
// same call's float32 dlogits. Independently of the CPU, 16-bit logits must give the
// same bits as float32 logits holding the same values (the widening is exact and the
// arithmetic the same).

// TestLossPipeKernelNames: the kernels lossSetup looks up are defined in loss.cu.
func TestLossPipeKernelNames(t *testing.T) {
	b, err := sources.ReadFile("loss.cu")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"ls_pipe_f32", "ls_pipe_bf16", "ls_pipe_f16"} {
		if !strings.Contains(string(b), `extern "C" __global__ void `+name+"(") {
			t.Errorf("kernel %s is looked up but not defined in loss.cu", name)
		}
	}
}

// TestLossPipePlan checks lsPipeFor's choices on the host (an H200's numbers): which
// calls take the pipe kernels, the stages that fit, and that every row fits the
// threads' lspNV float4 groups.
func TestLossPipePlan(t *testing.T) {
	be := &Backend{precision: BF16}
	be.info.SMs = 132
	st := &lossState{pipe: [3]uintptr{1, 2, 3}, pipeDyn: 232448 - lsStaticShared, perSM: 233472}
	for _, c := range []struct {
		V, in                int
		logits, gp           uint64
		gformat              int
		ok                   bool
		stages, block        int
		grid                 int
		name                 string
		fp32, pipeOff, noSM8 bool
	}{
		{V: 27472, in: xfOutF32, logits: 256, gp: 512, gformat: xfOutBF16, ok: true, stages: 2, block: 1024, grid: 132, name: "bench fp32 logits"},
		{V: 27472, in: xfOutBF16, logits: 256, gp: 512, gformat: xfOutBF16, ok: true, stages: 2, block: 1024, grid: 132, name: "bench bf16 logits"},
		{V: 32000, in: xfOutF32, logits: 256, gp: 512, gformat: xfOutF32, ok: true, stages: 1, block: 1024, grid: 132, name: "32k fp32: one row fits"},
		{V: 32768, in: xfOutF16, logits: 256, gformat: xfOutF32, ok: true, stages: 2, block: 1024, grid: 132, name: "32768 half, no gradient"},
		{V: 1000, in: xfOutF32, logits: 256, gp: 512, gformat: xfOutF32, ok: true, stages: 2, block: 128, grid: 1056, name: "short rows"},
		{V: 32772, in: xfOutF32, logits: 256, gformat: xfOutF32, name: "beyond 32·1024"},
		{V: 27476, in: xfOutBF16, logits: 256, gformat: xfOutF32, name: "16-bit row not a multiple of 16 bytes"},
		{V: 27473, in: xfOutF32, logits: 256, gformat: xfOutF32, name: "V % 4"},
		{V: 27472, in: xfOutF32, logits: 260, gformat: xfOutF32, name: "logits off 16 bytes"},
		{V: 27472, in: xfOutF32, logits: 256, gp: 520, gformat: xfOutF32, name: "float gradient off 16 bytes"},
		{V: 27472, in: xfOutF32, logits: 256, gp: 520, gformat: xfOutBF16, ok: true, stages: 2, block: 1024, grid: 132, name: "16-bit gradient on 8 bytes"},
		{V: 27472, in: xfOutF32, logits: 256, gformat: xfOutF32, fp32: true, name: "FP32 keeps the exact kernel"},
		{V: 27472, in: xfOutF32, logits: 256, gformat: xfOutF32, pipeOff: true, name: "pipeOff"},
		{V: 27472, in: xfOutF32, logits: 256, gformat: xfOutF32, noSM8: true, name: "before sm_80"},
	} {
		be.precision = BF16
		if c.fp32 {
			be.precision = FP32
		}
		s := *st
		s.pipeOff = c.pipeOff
		if c.noSM8 {
			s.pipe = [3]uintptr{}
		}
		p, ok := be.lsPipeFor(&s, 8000, c.V, c.in, c.logits, c.gp, c.gformat)
		if ok != c.ok || ok && (p.stages != c.stages || int(p.block) != c.block || int(p.grid) != c.grid) {
			t.Errorf("%s: ok %v stages %d block %d grid %d, want %v %d %d %d", c.name, ok, p.stages, p.block, p.grid, c.ok, c.stages, c.block, c.grid)
		}
	}
	be.precision = BF16
	for V := 4; V <= 4*lspNV*lspMaxBlock; V += 4 {
		p, ok := be.lsPipeFor(st, 100, V, xfOutF32, 0, 0, xfOutF32)
		if !ok || V/4 > lspNV*int(p.block) || p.block%32 != 0 || p.shared > uint32(st.pipeDyn) {
			t.Fatalf("V %d: ok %v block %d shared %d", V, ok, p.block, p.shared)
		}
	}
}

// lspEmulate is ls_pipe's arithmetic in Go for one call (block threads, a float32
// gradient), expf taken as the correctly rounded exp. It documents and checks the
// tolerances above without a GPU.
func lspEmulate(logits []float32, targets []int32, rows, V, block int, eps float32, ignore int32, scale float32, d []float32) (loss, nll float64) {
	epsI := float64(eps) / float64(V)
	es, ts := float32(epsI)*scale, (1-eps)*scale
	expf := func(x float32) float32 { return float32(math.Exp(float64(x))) }
	maxNaN := func(a, b float32) float32 {
		if a != a || b != b {
			return float32(math.NaN())
		}
		return max(a, b)
	}
	// warpSum is xf_warp_sum's xor butterfly, lane 0's result.
	warpSum := func(v []float64) float64 {
		for o := 16; o > 0; o >>= 1 {
			n := make([]float64, 32)
			for l := range 32 {
				n[l] = v[l] + v[l^o]
			}
			v = n
		}
		return v[0]
	}
	n4, nw := V/4, block/32
	e := make([]float32, V)
	for r := 0; r < rows; r++ {
		x, t := logits[r*V:(r+1)*V], targets[r]
		if t == ignore {
			if d != nil {
				clear(d[r*V : (r+1)*V])
			}
			continue
		}
		m := float32(math.Inf(-1))
		sxt := make([]float32, block)
		for tid := range block {
			for u := range lspNV {
				if q := tid + u*block; q < n4 {
					g := x[4*q : 4*q+4]
					m = maxNaN(m, maxNaN(maxNaN(g[0], g[1]), maxNaN(g[2], g[3])))
					sxt[tid] += (g[0] + g[1]) + (g[2] + g[3])
				}
			}
		}
		ws, wsx := make([]float64, 32), make([]float64, 32)
		for w := range nw {
			s, sx := make([]float64, 32), make([]float64, 32)
			for l := range 32 {
				tid := 32*w + l
				var st float32
				for u := range lspNV {
					if q := tid + u*block; q < n4 {
						for i := 4 * q; i < 4*q+4; i++ {
							e[i] = expf(x[i] - m)
						}
						st += (e[4*q] + e[4*q+1]) + (e[4*q+2] + e[4*q+3])
					}
				}
				s[l], sx[l] = float64(st), float64(sxt[tid])
			}
			ws[w], wsx[w] = warpSum(s), warpSum(sx)
		}
		s, sx := warpSum(ws), warpSum(wsx)
		c := m + float32(math.Log(s))
		lpt := x[t] - c
		loss += (1-float64(eps))*float64(-lpt) + epsI*(float64(V)*float64(c)-sx)
		nll += float64(-lpt)
		if d == nil {
			continue
		}
		ks := expf(m-c) * scale
		for i := range V {
			o := e[i]*ks - es
			if int32(i) == t {
				o = o - ts
			}
			d[r*V+i] = o
		}
	}
	return loss, nll
}

// lossCase is one call: random logits ×4 (bf16- or fp16-rounded), every seventh row
// ignored, peaked rows with the target raised by 12.
type lossCase struct {
	rows, V int
	peaked  bool
	eps     float32
	scale   float32
}

func (c lossCase) data(r *rand.Rand, round func(float32) float32) ([]float32, []int32) {
	logits := randVec(r, c.rows*c.V)
	targets := make([]int32, c.rows)
	for i := range targets {
		targets[i] = int32(r.IntN(c.V))
		if i%7 == 3 {
			targets[i] = 1
		}
	}
	for i := range logits {
		logits[i] *= 4
	}
	for i, t := range targets {
		if c.peaked && t != 1 {
			logits[i*c.V+int(t)] += 12
		}
	}
	for i := range logits {
		logits[i] = round(logits[i])
	}
	return logits, targets
}

// checkDlogits compares a float32 (u = 0) or 16-bit (u its unit roundoff) gradient
// with the CPU's float32 one.
func checkDlogits(t *testing.T, what string, got, want []float32, u float64, scale float32) {
	t.Helper()
	checkClose(t, what, got, want, 1e-6+u)
	a := 1e-5 * math.Abs(float64(scale))
	var worst float64
	for i := range got {
		d := math.Abs(float64(got[i]) - float64(want[i]))
		if !(d <= u*(math.Abs(float64(want[i]))+a)+a) {
			t.Fatalf("%s[%d] = %v, CPU %v: |Δ| %.3g beyond u·(|ref| + 1e-5·|scale|) + 1e-5·|scale|", what, i, got[i], want[i], d)
		}
		worst = max(worst, d)
	}
	t.Logf("%s: max |Δ| %.3g", what, worst)
}

// TestLossPipeEmulation runs lspEmulate against the CPU backend at the cases of
// TestLabelSmoothedLoss16: the algorithm (one expf per element, the online (m, Σ e)
// combination, p = e·exp(m_t − c)) meets the bounds, independently of the GPU.
func TestLossPipeEmulation(t *testing.T) {
	c := cpu.New(0)
	r := rand.New(rand.NewPCG(5, 6))
	for _, lc := range []lossCase{{37, 27472, false, 0.1, 1}, {30, 27472, true, 0.1, 0.5}, {20, 32000, false, 0.1, 1}, {40, 1000, true, 0, 1}} {
		logits, targets := lc.data(r, bf16Round)
		block := 1024
		if lc.V == 1000 {
			block = 128
		}
		got := make([]float32, lc.rows*lc.V)
		gl, gn := lspEmulate(logits, targets, lc.rows, lc.V, block, lc.eps, 1, lc.scale, got)
		want := make([]float32, lc.rows*lc.V)
		cl, cn := c.LabelSmoothedLoss(cpu.Wrap(want), cpu.Wrap(logits), targets, lc.rows, lc.V, lc.eps, 1, lc.scale)
		t.Run(fmt.Sprintf("%dx%d_peaked=%v", lc.rows, lc.V, lc.peaked), func(t *testing.T) {
			checkLoss(t, BF16, gl, gn, cl, cn)
			checkDlogits(t, "dlogits", got, want, 0, lc.scale)
		})
	}
}

// upload16 writes v (already representable in the Backend's 16-bit format) to a fresh
// 16-bit buffer: ApplyDropout with p = 0 stores RN16(v·1) = v.
func upload16(g *Backend, v []float32) kernels.Buffer {
	h := g.AllocHalf(len(v))
	g.ApplyDropout(h, g.Upload(v), 0, 1)
	return h
}

// TestLabelSmoothedLoss16: 16-bit logits against the CPU on the same values (the pipe
// kernels with expf and with ex2.approx), with a
// float32, a 16-bit or no gradient, in place (a 16-bit gradient over the 16-bit logits),
// on the pipe kernels (27,472, 32,000, 32,768 and 1,000 columns) and on the shapes they
// decline (a 16-bit row not a multiple of 16 bytes, 40,000 columns: ls_loss on a
// widened copy); and the same bits as float32 logits holding the same values.
func TestLabelSmoothedLoss16(t *testing.T) {
	for _, fc := range []struct {
		ft  format16
		ex2 bool
	}{{fmtBF16, false}, {fmtF16, false}, {fmtBF16, true}, {fmtF16, true}} {
		ft := fc.ft
		for _, lc := range []lossCase{
			{300, 27472, false, 0.1, 1},
			{120, 27472, true, 0.1, 0.25},
			{200, 32000, false, 0.1, 1},
			{64, 32768, true, 0.2, 1},
			{50, 1000, false, 0, 1},
			{40, 27476, false, 0.1, 1},
			{24, 40000, true, 0.1, 1},
		} {
			t.Run(fmt.Sprintf("%v/ex2=%v/%dx%d_peaked=%v", ft.prec, fc.ex2, lc.rows, lc.V, lc.peaked), func(t *testing.T) {
				g := withPrecision(t, ft.prec)
				r := rand.New(rand.NewPCG(uint64(lc.V), uint64(lc.rows)))
				logits, targets := lc.data(r, ft.round16)
				n := lc.rows * lc.V
				lh, lf := upload16(g, logits), g.Upload(logits)
				var st *lossState
				func() { defer g.enter()(); st = g.lossSetup() }()
				st.ex2 = fc.ex2
				defer func() { st.ex2 = lsPipeEx2 }()
				p, pipe := func() (lsPipe, bool) {
					defer g.enter()()
					return g.lsPipeFor(st, lc.rows, lc.V, g.outFormat(), halfOf(lh).dptr(), 0, xfOutF32)
				}()
				wantPipe := g.info.Major >= 8 && lc.V != 27476 && lc.V != 40000
				if pipe != wantPipe {
					t.Fatalf("pipe kernel taken %v, want %v", pipe, wantPipe)
				}
				t.Logf("pipe %v: grid %d block %d stages %d", pipe, p.grid, p.block, p.stages)

				want := make([]float32, n)
				cl, cn := cpu.New(0).LabelSmoothedLoss(cpu.Wrap(want), cpu.Wrap(logits), targets, lc.rows, lc.V, lc.eps, 1, lc.scale)

				// Garbage in the gradients: ignored rows must be zeroed.
				df, dh := g.Upload(randVec(r, n)), g.AllocHalf(n)
				g.ApplyDropout(dh, g.Upload(randVec(r, n)), 0, 1)
				gl, gn := g.LabelSmoothedLossDeferred(df, lh, targets, lc.rows, lc.V, lc.eps, 1, lc.scale)()
				checkLoss(t, ft.prec, gl, gn, cl, cn)
				gotF := down(g, df)
				checkDlogits(t, "float32 dlogits", gotF, want, 0, lc.scale)

				gl2, gn2 := g.LabelSmoothedLossDeferred(dh, lh, targets, lc.rows, lc.V, lc.eps, 1, lc.scale)()
				if gl2 != gl || gn2 != gn {
					t.Errorf("16-bit dlogits: loss %.17g nll %.17g, float32 dlogits %.17g %.17g", gl2, gn2, gl, gn)
				}
				got16 := downHalf(t, g, dh)
				checkRounded(t, ft, "16-bit dlogits", got16, gotF)
				checkDlogits(t, "16-bit dlogits", got16, want, ft.u, lc.scale)

				gl3, gn3 := g.LabelSmoothedLossDeferred(nil, lh, targets, lc.rows, lc.V, lc.eps, 1, lc.scale)()
				if gl3 != gl || gn3 != gn {
					t.Errorf("no dlogits: loss %.17g nll %.17g, with %.17g %.17g", gl3, gn3, gl, gn)
				}

				// float32 logits with the same values: the same bits where the same
				// kernel runs (a float32 row of 27,476 is 16-byte aligned, a 16-bit one
				// is not), else both within the bounds of the CPU.
				df2 := g.AllocUninit(n)
				gl4, gn4 := g.LabelSmoothedLossDeferred(df2, lf, targets, lc.rows, lc.V, lc.eps, 1, lc.scale)()
				_, pipeF := func() (lsPipe, bool) {
					defer g.enter()()
					return g.lsPipeFor(st, lc.rows, lc.V, xfOutF32, addr(lf), addr(df2), xfOutF32)
				}()
				if pipeF == pipe {
					if gl4 != gl || gn4 != gn {
						t.Errorf("float32 logits: loss %.17g nll %.17g, 16-bit logits %.17g %.17g", gl4, gn4, gl, gn)
					}
					checkExact(t, "dlogits from float32 logits", down(g, df2), gotF)
				} else {
					checkLoss(t, ft.prec, gl4, gn4, cl, cn)
					checkDlogits(t, "dlogits from float32 logits", down(g, df2), want, 0, lc.scale)
				}

				// In place: the 16-bit gradient over the 16-bit logits.
				gl5, gn5 := g.LabelSmoothedLossDeferred(lh, lh, targets, lc.rows, lc.V, lc.eps, 1, lc.scale)()
				if gl5 != gl || gn5 != gn {
					t.Errorf("in place: loss %.17g nll %.17g, %.17g %.17g", gl5, gn5, gl, gn)
				}
				checkExact(t, "in place 16-bit dlogits", downHalf(t, g, lh), got16)
			})
		}
	}
}

// TestLabelSmoothedLoss16Timing logs the device time of one loss call (kernel and row
// sum) at the bench's shape, 7,900 rows × 27,472 (and × 32,000), 16-bit dlogits as the
// model writes them: ls_loss on float32 logits (before), ls_pipe_f32 on float32 logits,
// ls_loss on 16-bit logits widened first (what 16-bit logits would cost without the
// pipe kernels) and ls_pipe_bf16, with the bandwidth of one read of the logits and one
// write of the gradient. It only measures; skipped with -short.
func TestLabelSmoothedLoss16Timing(t *testing.T) {
	if testing.Short() {
		t.Skip("timing")
	}
	g := withPrecision(t, BF16)
	var st *lossState
	func() { defer g.enter()(); st = g.lossSetup() }()
	defer func() { st.pipeOff = false }()
	for _, V := range []int{27472, 32000} {
		const rows = 7900
		r := rand.New(rand.NewPCG(3, uint64(V)))
		host, targets := timingLogits(r, rows, V, bf16Round) // the pipe kernels do not read the padding rows
		lf, lh, dh := g.Upload(host), upload16(g, host), g.AllocHalf(rows*V)
		call := func(logits kernels.Buffer, off bool) func() {
			return func() {
				st.pipeOff = off
				g.LabelSmoothedLossDeferred(dh, logits, targets, rows, V, 0.1, 1, 1)
			}
		}
		us := func(f func()) float64 { return timeDevice(t, g, 10, f).Seconds() * 1e6 }
		gbs := func(in int, x float64) float64 { return float64((in+2)*rows*V) / x / 1e3 }
		a, c := us(call(lf, true)), us(call(lh, true))
		for _, ex2 := range []bool{false, true} {
			st.ex2 = ex2
			b, d := us(call(lf, false)), us(call(lh, false))
			t.Logf("loss %d×%d, bf16 dlogits: float32 logits: ls_loss %.1f µs (%.0f GB/s), ls_pipe_f32 %.1f µs (%.0f GB/s); "+
				"bf16 logits: widened + ls_loss %.1f µs, ls_pipe_bf16 %.1f µs (%.0f GB/s); pipe exp: ex2 %v",
				rows, V, a, gbs(4, a), b, gbs(4, b), c, d, gbs(2, d), ex2)
		}
		st.ex2 = lsPipeEx2
	}
}
