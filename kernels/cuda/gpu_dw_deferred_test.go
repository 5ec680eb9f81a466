package cuda

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"unsafe"

	"github.com/xform-dev/xform/kernels"
)

// deferCall is one LinearBackwardKept of TestDeferredWeightGrads: its shape, whether it
// has a bias gradient, and which of the test's dw (and db) buffers it adds to.
type deferCall struct {
	m, n, k int
	bias    bool
	dw      int
}

// TestDeferredWeightGrads: LinearBackwardKept between DeferWeightGrads and
// FlushWeightGrads, in bf16 and fp16, on calls that make every kind of group: a batch of
// five, two calls adding to dw buffers of that batch again (they must not join it: a
// second batch), a batch of three without bias, one with a bias alone in its shape
// class (a single), a lone shape, and an odd n (not deferred). Checks:
//   - the flush ran them (counts), and before it no dw had changed (deferral happened);
//   - dx is the same bits as without deferral (it is never deferred);
//   - dw and db against float64 sums of Go's round16 of the operands, which the GPU
//     multiplies exactly: norm-wise within tolFor(m) per call (fp32 accumulation, see
//     gpu_precision_test.go), db within 1e-5 (float32 sums of the 16-bit dy);
//   - the same dw and db bits on a second run (deterministic batching and sums).
func TestDeferredWeightGrads(t *testing.T) {
	calls := []deferCall{
		{640, 512, 256, true, 0}, {640, 512, 256, true, 1}, {640, 512, 256, true, 2}, {640, 512, 256, true, 3}, {640, 512, 256, true, 4},
		{640, 512, 256, true, 0}, {640, 512, 256, true, 1},
		{384, 256, 512, false, 5}, {384, 256, 512, false, 6}, {384, 256, 512, false, 7},
		{384, 256, 512, true, 8},
		{200, 6, 64, true, 9},
		{200, 5, 64, true, 10},
	}
	for _, ft := range formats {
		t.Run(ft.prec.String(), func(t *testing.T) {
			g := withPrecision(t, ft.prec)
			old := g.dwDefer.on
			t.Cleanup(func() { g.dwDefer.on = old })
			g.BeginScope()
			defer g.EndScope()
			r := rand.New(rand.NewPCG(71, uint64(ft.prec)))
			type operands struct {
				x, w, dy []float32
				gx, gw   kernels.Buffer
				gdy      kernels.Buffer
			}
			ops := make([]operands, len(calls))
			dwLen, dbLen := map[int]int{}, map[int]int{}
			for i, c := range calls {
				o := &ops[i]
				o.x, o.w, o.dy = randVec(r, c.m*c.k), randVec(r, c.n*c.k), randVec(r, c.m*c.n)
				o.gx, o.gw, o.gdy = g.Upload(o.x), g.Upload(o.w), upload16(g, o.dy)
				dwLen[c.dw], dbLen[c.dw] = c.n*c.k, c.n
			}
			dw0, db0 := map[int][]float32{}, map[int][]float32{}
			for id, l := range dwLen {
				dw0[id], db0[id] = randVec(r, l), randVec(r, dbLen[id])
			}
			type result struct{ dx, dw, db map[int][]float32 }
			run := func(deferOn bool) result {
				g.dwDefer.on = deferOn
				gdw, gdb := map[int]kernels.Buffer{}, map[int]kernels.Buffer{}
				for id := range dwLen {
					gdw[id], gdb[id] = g.Upload(dw0[id]), g.Upload(db0[id])
				}
				q0, b0, s0 := g.WeightGradCounts()
				if got := g.DeferWeightGrads(); got != deferOn {
					t.Fatalf("DeferWeightGrads = %v with the option %v", got, deferOn)
				}
				res := result{dx: map[int][]float32{}, dw: map[int][]float32{}, db: map[int][]float32{}}
				dxs := make([]kernels.Buffer, len(calls))
				for i, c := range calls {
					o := ops[i]
					kept := g.LinearKeep(g.Alloc(c.m*c.n), o.gx, o.gw, nil, c.m, c.n, c.k)
					dxs[i] = g.Alloc(c.m * c.k)
					var db kernels.Buffer
					if c.bias {
						db = gdb[c.dw]
					}
					g.LinearBackwardKept(dxs[i], gdw[c.dw], db, o.gdy, kept, c.m, c.n, c.k)
				}
				if deferOn {
					for id, b := range gdw {
						if relErr(down(g, b), dw0[id]) != 0 && calls[len(calls)-1].dw != id {
							t.Errorf("dw %d changed before the flush", id)
						}
					}
				}
				g.FlushWeightGrads()
				q, b, s := g.WeightGradCounts()
				t.Logf("defer %v: %d products queued, %d batches, %d single", deferOn, q-q0, b-b0, s-s0)
				if deferOn && (q-q0 != len(calls)-1 || b-b0 != 3 || s-s0 != 2) {
					t.Errorf("flush: %d queued, %d batches, %d single; want %d, 3, 2", q-q0, b-b0, s-s0, len(calls)-1)
				}
				for i := range calls {
					res.dx[i] = down(g, dxs[i])
				}
				for id := range dwLen {
					res.dw[id], res.db[id] = down(g, gdw[id]), down(g, gdb[id])
				}
				return res
			}
			plain, deferred, again := run(false), run(true), run(true)
			for i := range calls {
				checkExact(t, fmt.Sprintf("dx %d deferred vs not", i), deferred.dx[i], plain.dx[i])
			}
			for id := range dwLen {
				checkExact(t, fmt.Sprintf("dw %d second deferred run", id), again.dw[id], deferred.dw[id])
				checkExact(t, fmt.Sprintf("db %d second deferred run", id), again.db[id], deferred.db[id])
			}
			// The float64 references, call by call onto dw0 and db0.
			wantW, wantB := map[int][]float64{}, map[int][]float64{}
			terms := map[int]int{}
			for id := range dwLen {
				wantW[id], wantB[id] = f64(dw0[id]), f64(db0[id])
			}
			for i, c := range calls {
				o := ops[i]
				xr, dyr := round16All(ft, o.x), round16All(ft, o.dy)
				ww := wantW[c.dw]
				for a := 0; a < c.n; a++ {
					for b := 0; b < c.k; b++ {
						s := 0.0
						for row := 0; row < c.m; row++ {
							s += dyr[row*c.n+a] * xr[row*c.k+b]
						}
						ww[a*c.k+b] += s
					}
				}
				if c.bias {
					for a := 0; a < c.n; a++ {
						for row := 0; row < c.m; row++ {
							wantB[c.dw][a] += dyr[row*c.n+a]
						}
					}
				}
				terms[c.dw] = max(terms[c.dw], c.m)
			}
			for id := range dwLen {
				for _, res := range []struct {
					name string
					r    result
				}{{"deferred", deferred}, {"not deferred", plain}} {
					checkClose(t, fmt.Sprintf("%s dw %d vs float64", res.name, id), res.r.dw[id], f32(wantW[id]), 2*tolFor(terms[id]))
					checkClose(t, fmt.Sprintf("%s db %d vs float64", res.name, id), res.r.db[id], f32(wantB[id]), 1e-5)
				}
			}
		})
	}
}

func round16All(ft format16, v []float32) []float64 {
	out := make([]float64, len(v))
	for i, x := range v {
		out[i] = float64(ft.round16(x))
	}
	return out
}

// TestDeferredWeightGradTraining: 12 updates of the fixture model and of the head
// dimension 64 model (headDim64Training) in bf16 and fp16, deferred weight gradients
// against none, eagerly; and deferred with CUDA graphs against deferred eagerly. The
// deferred run sums dw and db in other orders (fp32 either way), so it is held to
// checkTrainClose's bounds against the plain run; graphed and eager run the same
// kernels on the same buffers, so they must be the same bits. Also checks that the
// batches ran.
func TestDeferredWeightGradTraining(t *testing.T) {
	gpu(t)
	eachTrainCase(t, func(t *testing.T, mc trainModel, prec Precision, rc trainCase) {
		batches := mc.batches
		plainBE := newGraphTestBackend(t, prec, false)
		plainBE.dwDefer.on = false
		eagerBE := newGraphTestBackend(t, prec, false)
		eagerBE.dwDefer.on = true
		graphBE := newGraphTestBackend(t, prec, true)
		graphBE.dwDefer.on = true
		plain, _ := runTrain(t, mc.m, plainBE, rc, batches)
		eager, _ := runTrain(t, mc.m, eagerBE, rc, batches)
		graphed, _ := runTrain(t, mc.m, graphBE, rc, batches)
		q, b, s := eagerBE.WeightGradCounts()
		t.Logf("deferred: %d products queued, %d batches, %d single", q, b, s)
		if q == 0 || b == 0 {
			t.Errorf("deferred run: %d products queued, %d batches", q, b)
		}
		if q, _, _ := plainBE.WeightGradCounts(); q != 0 {
			t.Errorf("plain run queued %d products", q)
		}
		if st := graphBE.GraphStats(); st.Replays == 0 || st.Divergences != 0 {
			t.Errorf("graph use %+v: want replays, no divergence", st)
		}
		checkTrainClose(t, "deferred", eager, "plain", plain)
		checkSameRun(t, "graphed deferred", graphed, "eager deferred", eager)
	})
}

// TestDWBatchPlans logs what cuBLASLt says to the deferred weight gradients'
// pointer-array plans (newDWBatchPlan) at both alignments the Backend states, and to a
// matmul of each with beta 0 and 1 (the flush accumulates: beta 1), and checks each
// accepted run against one product per member (tolFor(m)).
func TestDWBatchPlans(t *testing.T) {
	g := withPrecision(t, BF16)
	g.BeginScope()
	defer g.EndScope()
	const m, n, k, count = 1024, 512, 512, 4
	r := rand.New(rand.NewPCG(5, 6))
	xa, dya, dwa, sepa := make([]uint64, count), make([]uint64, count), make([]uint64, count), make([]uint64, count)
	var dws, seps []kernels.Buffer
	for i := range count {
		xa[i], dya[i] = halfOf(upload16(g, randVec(r, m*k))).dptr(), halfOf(upload16(g, randVec(r, m*n))).dptr()
		dws, seps = append(dws, g.Alloc(n*k)), append(seps, g.Alloc(n*k))
		dwa[i], sepa[i] = addr(dws[i]), addr(seps[i])
	}
	xArr, dyArr, dwArr := uploadAddrs(g, xa), uploadAddrs(g, dya), uploadAddrs(g, dwa)
	one := newBatchedDW(t, g, m, n, k, 1, false, 0)
	for i := range count {
		one.run(t, g, xa[i], dya[i], sepa[i])
	}
	for _, al := range []uint32{halfAlign, 16} {
		p, err := func() (*ltPlan, error) {
			defer g.enter()()
			if !g.ltReady() {
				t.Skip("no cuBLASLt")
			}
			p, _, err := g.newDWBatchPlan(dwBatchKey{dwShape: dwShape{m, n, k}, count: count, dtype: g.dataType16(), alignC: 256}, al)
			return p, err
		}()
		t.Logf("alignment %d: plan %v", al, err)
		if err != nil {
			continue
		}
		for _, beta := range []float32{0, 1} {
			for _, b := range dws {
				g.Fill(b, 0)
			}
			func() {
				defer g.enter()()
				s := &g.lt
				alpha := float32(1)
				err = ltCheck("cublasLtMatmul", call(s.lib.matmul, s.handle, p.desc, uintptr(unsafe.Pointer(&alpha)),
					uintptr(addr(xArr)), p.a, uintptr(addr(dyArr)), p.b, uintptr(unsafe.Pointer(&beta)), uintptr(addr(dwArr)), p.c, uintptr(addr(dwArr)), p.c,
					uintptr(unsafe.Pointer(&p.algo)), uintptr(s.ws), uintptr(s.wsSize), 0))
			}()
			t.Logf("alignment %d, beta %v: matmul %v", al, beta, err)
			if err == nil {
				for i := range count {
					checkClose(t, fmt.Sprintf("alignment %d beta %v member %d", al, beta, i), down(g, dws[i]), down(g, seps[i]), tolFor(m))
				}
			}
		}
		func() {
			defer g.enter()()
			g.ltDestroy(p)
		}()
	}
	t.Log(g.LtStatus())
}

// TestDWBatchCandidatesTiming times the heuristic's first eight algorithms for the
// deferred weight gradients' pointer-array batches of the 6L-6L step at token rows
// 7,872, 8,064, 8,184 and 8,192 (the bench's buckets: some products took 2–5× longer
// at 8,184 than at 7,872 in the step, GPU profile of the ninth session), on members of
// random values at separate addresses, beta 0. Logs µs per batch for each candidate
// (the first is what the flush runs without tuning). -short skips it.
func TestDWBatchCandidatesTiming(t *testing.T) {
	if testing.Short() {
		t.Skip("timing only")
	}
	g := withPrecision(t, BF16)
	for _, c := range []struct{ n, k, count int }{{512, 512, 24}, {512, 2048, 12}, {1024, 512, 6}, {1536, 512, 12}} {
		for _, m := range []int{7872, 8064, 8184, 8192} {
			g.BeginScope()
			r := rand.New(rand.NewPCG(uint64(m), uint64(c.n)))
			xa, dya, dwa := make([]uint64, c.count), make([]uint64, c.count), make([]uint64, c.count)
			for i := range c.count {
				xa[i], dya[i] = halfOf(upload16(g, randVec(r, m*c.k))).dptr(), halfOf(upload16(g, randVec(r, m*c.n))).dptr()
				dwa[i] = addr(g.Alloc(c.n * c.k))
			}
			xArr, dyArr, dwArr := uploadAddrs(g, xa), uploadAddrs(g, dya), uploadAddrs(g, dwa)
			var p *ltPlan
			var res []ltHeuristicResult
			err := func() (err error) {
				defer g.enter()()
				if !g.ltReady() {
					t.Skip("no cuBLASLt")
				}
				key := dwBatchKey{dwShape: dwShape{m, c.n, c.k}, count: c.count, dtype: g.dataType16(), alignC: 256}
				if p, _, err = g.newDWBatchPlan(key, halfAlign); err != nil {
					return err
				}
				res, err = g.ltHeuristicN(p, p.key, 8)
				return err
			}()
			if err != nil {
				t.Errorf("%d × %d×%d×%d: %v", c.count, c.n, c.k, m, err)
				g.EndScope()
				continue
			}
			line := fmt.Sprintf("%2d × %4d×%4d×%4d:", c.count, c.n, c.k, m)
			for _, h := range res {
				algo := h.algo
				run := func() {
					defer g.enter()()
					s := &g.lt
					alpha, beta := float32(1), float32(0)
					if err := ltCheck("cublasLtMatmul", call(s.lib.matmul, s.handle, p.desc, uintptr(unsafe.Pointer(&alpha)),
						uintptr(addr(xArr)), p.a, uintptr(addr(dyArr)), p.b, uintptr(unsafe.Pointer(&beta)), uintptr(addr(dwArr)), p.c, uintptr(addr(dwArr)), p.c,
						uintptr(unsafe.Pointer(&algo)), uintptr(s.ws), uintptr(s.wsSize), 0)); err != nil {
						t.Fatal(err)
					}
				}
				line += fmt.Sprintf(" %6.1f", us(timeDevice(t, g, 10, run)))
			}
			t.Log(line)
			func() {
				defer g.enter()()
				g.ltDestroy(p)
			}()
			g.EndScope()
		}
	}
}

// TestDeferredFinishTrainingSameBits: the column-sum finishes (LayerNorm dγ, dβ, dω;
// fc1's bias) queued while the weight gradients are deferred and run as list launches
// at the flush, against each launched at its backward call (XFORM_CUDA_DEFER_FINISH=0):
// each column's sum has the same operands in the same order, so 12 updates of both
// models, bf16 and fp16, both recipes, must give the same bits (every update's log and
// the final weights); graphed too. Also checks that finishes were queued and listed.
func TestDeferredFinishTrainingSameBits(t *testing.T) {
	gpu(t)
	eachTrainCase(t, func(t *testing.T, mc trainModel, prec Precision, rc trainCase) {
		offBE := newGraphTestBackend(t, prec, false)
		offBE.dwDefer.on, offBE.finish.off = true, true
		onBE := newGraphTestBackend(t, prec, false)
		onBE.dwDefer.on, onBE.finish.off = true, false
		graphBE := newGraphTestBackend(t, prec, true)
		graphBE.dwDefer.on, graphBE.finish.off = true, false
		off, _ := runTrain(t, mc.m, offBE, rc, mc.batches)
		on, _ := runTrain(t, mc.m, onBE, rc, mc.batches)
		graphed, _ := runTrain(t, mc.m, graphBE, rc, mc.batches)
		q, lists := onBE.FinishCounts()
		t.Logf("deferred finishes: %d queued, %d list launches", q, lists)
		if q == 0 || lists == 0 {
			t.Errorf("deferred run: %d finishes queued, %d list launches", q, lists)
		}
		if q, _ := offBE.FinishCounts(); q != 0 {
			t.Errorf("switched-off run queued %d finishes", q)
		}
		if st := graphBE.GraphStats(); st.Replays == 0 || st.Divergences != 0 {
			t.Errorf("graph use %+v: want replays, no divergence", st)
		}
		checkSameRun(t, "finishes deferred", on, "launched at each call", off)
		checkSameRun(t, "graphed, finishes deferred", graphed, "eager", on)
	})
}
