package cuda

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"unsafe"

	"github.com/xform-dev/xform/kernels"
)

// The cuBLASLt path of the 16-bit Linear and LinearBackward (cublaslt.go) against the
// references of gpu_precision_test.go: operands rounded to 16 bits in Go and multiplied
// in float64 (tight, tolTight = 1e-5 for reduction lengths ≤ 512, see there) and the
// rigorous per-element bound against the fp32 operands. A wrong enum, transpose,
// layout or bias pointer gives O(1) errors; rounding bugs are the cast's, shared with
// the GemmEx path and tested there.
//
// At the training shape 6000×2048×512 the reductions are longer than 512 (dx sums
// n = 2048 products, dw sums m = 6000). The accumulation error estimated at the top of
// gpu_precision_test.go, √L·2⁻²⁴ + 3e-9·L, stays below 2e-8·L for L ≥ 512, so such
// checks allow tolTight·L/512 (4e-5 and 1.2e-4): still a hundred times below an O(1)
// bug's error, and the rigorous bound holds whatever the length. Only sampled rows are
// compared there (first, last — the partial tiles — and random ones), as the float64
// reference of the whole product would take minutes.

// tolFor is the tight tolerance for reductions of length l.
func tolFor(l int) float64 {
	return tolTight * math.Max(1, float64(l)/512)
}

// sampleRows returns every index below n when n ≤ 64, else the first 8 and last 16
// (where partial tiles sit) and 8 others at random, sorted; with few, half as many.
func sampleRows(r *rand.Rand, n int, few bool) []int {
	if n <= 64 {
		idx := make([]int, n)
		for i := range idx {
			idx[i] = i
		}
		return idx
	}
	first, last, random := 8, 16, 8
	if few {
		first, last, random = 4, 8, 4
	}
	set := map[int]bool{}
	for i := 0; i < first; i++ {
		set[i] = true
	}
	for i := n - last; i < n; i++ {
		set[i] = true
	}
	for len(set) < first+last+random {
		set[r.IntN(n)] = true
	}
	var idx []int
	for i := range set {
		idx = append(idx, i)
	}
	slices.Sort(idx)
	return idx
}

// pickRows gathers rows idx of a row-major matrix with cols columns.
func pickRows(a []float32, cols int, idx []int) []float32 {
	out := make([]float32, 0, len(idx)*cols)
	for _, i := range idx {
		out = append(out, a[i*cols:(i+1)*cols]...)
	}
	return out
}

// pickCols gathers columns idx of a row-major rows×cols matrix into rows×len(idx).
func pickCols(a []float32, rows, cols int, idx []int) []float32 {
	out := make([]float32, 0, rows*len(idx))
	for i := 0; i < rows; i++ {
		for _, j := range idx {
			out = append(out, a[i*cols+j])
		}
	}
	return out
}

// ltCalls is how many matmuls the shared Backend has run through cuBLASLt.
func ltCalls(g *Backend) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.lt.calls
}

// requireLt fails when a product of dims all multiples of 8 (16-byte rows in every
// operand) did not run through cuBLASLt: such shapes are cuBLASLt's bread and butter,
// so a fallback there means a broken binding (a wrong enum shows up as "no algorithm"
// or a refusal) that the results alone would hide behind the GemmEx path.
func requireLt(t *testing.T, g *Backend, before int, what string, dims ...int) {
	t.Helper()
	used := ltCalls(g) > before
	t.Logf("%s: cuBLASLt used: %v (%s)", what, used, g.LtStatus())
	for _, d := range dims {
		if d%8 != 0 {
			return
		}
	}
	if !used {
		t.Errorf("%s: fell back to GemmEx: %s", what, g.LtStatus())
	}
}

var ltShapes = []struct{ m, n, k int }{{1, 3, 2}, {5, 7, 9}, {70, 130, 64}, {64, 512, 256}, {6000, 2048, 512}}

func TestLtLinear16(t *testing.T) {
	for _, ft := range formats {
		for _, sh := range ltShapes {
			for _, hasBias := range []bool{true, false} {
				t.Run(fmt.Sprintf("%v_%dx%dx%d_bias%v", ft.prec, sh.m, sh.n, sh.k, hasBias), func(t *testing.T) {
					g := withPrecision(t, ft.prec)
					m, n, k := sh.m, sh.n, sh.k
					r := rand.New(rand.NewPCG(31, uint64(m*n*k)))
					x, w := randVec(r, m*k), randVec(r, n*k)
					var bias []float32
					var gbias kernels.Buffer
					if hasBias {
						bias = randVec(r, n)
						gbias = g.Upload(bias)
					}
					// Poisoned output: a bias epilogue with beta = 0 must write every
					// element without reading y.
					nan := make([]float32, m*n)
					for i := range nan {
						nan[i] = float32(math.NaN())
					}
					gy := g.Upload(nan)
					before := ltCalls(g)
					g.Linear(gy, g.Upload(x), g.Upload(w), gbias, m, n, k)
					requireLt(t, g, before, "Linear", m, n, k)
					y := down(g, gy)

					rows := sampleRows(r, m, false)
					c0 := make([]float32, len(rows)*n)
					beta := float32(0)
					if hasBias {
						for i := range rows {
							copy(c0[i*n:], bias)
						}
						beta = 1
					}
					tight, exact, bound := refGemm(ft, false, true, len(rows), n, k, 1, pickRows(x, k, rows), k, w, k, beta, c0, n)
					got := pickRows(y, n, rows)
					checkClose(t, "Linear (cuBLASLt) vs rounded operands", got, tight, tolFor(k))
					checkBound(t, "Linear (cuBLASLt)", got, exact, bound)
					for i, v := range y {
						if math.IsNaN(float64(v)) {
							t.Fatalf("y[%d, %d] not written", i/n, i%n)
						}
					}
				})
			}
		}
	}
}

func TestLtLinearBackward16(t *testing.T) {
	for _, ft := range formats {
		for _, sh := range ltShapes {
			for _, hasDB := range []bool{true, false} {
				t.Run(fmt.Sprintf("%v_%dx%dx%d_db%v", ft.prec, sh.m, sh.n, sh.k, hasDB), func(t *testing.T) {
					g := withPrecision(t, ft.prec)
					m, n, k := sh.m, sh.n, sh.k
					r := rand.New(rand.NewPCG(37, uint64(m*n*k)))
					x, w, dy := randVec(r, m*k), randVec(r, n*k), randVec(r, m*n)
					dw0, db0 := randVec(r, n*k), randVec(r, n) // gradients accumulate onto these
					gx, gw, gdy := g.Upload(x), g.Upload(w), g.Upload(dy)
					gdx, gdw := g.Alloc(m*k), g.Upload(dw0)
					var gdb kernels.Buffer
					if hasDB {
						gdb = g.Upload(db0)
					}
					before := ltCalls(g)
					g.LinearBackward(gdx, gdw, gdb, gdy, gx, gw, m, n, k)
					requireLt(t, g, before, "LinearBackward", m, n, k)
					dx1, dw1 := down(g, gdx), down(g, gdw)

					// dx = dy·w on sampled rows of dy.
					rows := sampleRows(r, m, false)
					tight, exact, bound := refGemm(ft, false, false, len(rows), k, n, 1, pickRows(dy, n, rows), n, w, k,
						0, make([]float32, len(rows)*k), k)
					got := pickRows(dx1, k, rows)
					checkClose(t, "dx vs rounded operands", got, tight, tolFor(n))
					checkBound(t, "dx", got, exact, bound)

					// dw = dw0 + dyᵀ·x on sampled rows of dw (columns of dy).
					wr := sampleRows(r, n, true) // each row of dw costs m·k products
					dw0s := pickRows(dw0, k, wr)
					tightW, exactW, boundW := refGemm(ft, true, false, len(wr), k, m, 1, pickCols(dy, m, n, wr), len(wr), x, k, 1, dw0s, k)
					got = pickRows(dw1, k, wr)
					checkClose(t, "dw vs rounded operands", got, tightW, tolFor(m))
					checkBound(t, "dw", got, exactW, boundW)

					// db: the BGRADB epilogue's sum of the 16-bit dy, or the fp32 column
					// sum where cuBLASLt has no BGRADB for the shape (dbWant,
					// gpu_bgrad_test.go).
					if hasDB {
						want, tol := dbWant(g, ft, dy, db0, m, n, k, 1)
						checkClose(t, "db", down(g, gdb), want, tol)
					}

					// A second call accumulates again: dw0 + 2·P, db0 + 2·Σdy; dx is
					// overwritten with the same bits (same plan, one stream).
					g.LinearBackward(gdx, gdw, gdb, gdy, gx, gw, m, n, k)
					checkExact(t, "dx, second call", down(g, gdx), dx1)
					twice := make([]float32, len(tightW))
					for i, v := range tightW {
						twice[i] = float32(2*float64(v) - float64(dw0s[i]))
					}
					checkClose(t, "dw after two calls", pickRows(down(g, gdw), k, wr), twice, tolFor(m))
					if hasDB {
						want, tol := dbWant(g, ft, dy, db0, m, n, k, 2)
						checkClose(t, "db after two calls", down(g, gdb), want, tol)
					}
				})
			}
		}
	}
}

// TestLtUnaligned: y and the bias as Slices starting 4 and 12 bytes into their
// blocks. The plan's alignment preferences must follow the pointers (an algorithm
// chosen for 256-byte alignment would fault or read the wrong bias), and the
// elements around the slice stay untouched.
func TestLtUnaligned(t *testing.T) {
	for _, ft := range formats {
		t.Run(ft.prec.String(), func(t *testing.T) {
			g := withPrecision(t, ft.prec)
			const m, n, k = 64, 512, 256
			r := rand.New(rand.NewPCG(41, 3))
			x, w, bias := randVec(r, m*k), randVec(r, n*k), randVec(r, n)
			yBlock, bBlock := g.Alloc(m*n+2), g.Upload(append(make([]float32, 3), bias...))
			gy, gbias := g.Slice(yBlock, 1, m*n), g.Slice(bBlock, 3, n)
			g.Linear(gy, g.Upload(x), g.Upload(w), gbias, m, n, k)
			t.Log(g.LtStatus())
			c0 := make([]float32, m*n)
			for i := 0; i < m; i++ {
				copy(c0[i*n:], bias)
			}
			tight, exact, bound := refGemm(ft, false, true, m, n, k, 1, x, k, w, k, 1, c0, n)
			got := down(g, gy)
			checkClose(t, "Linear into a Slice vs rounded operands", got, tight, tolTight)
			checkBound(t, "Linear into a Slice", got, exact, bound)
			all := down(g, yBlock)
			if all[0] != 0 || all[m*n+1] != 0 {
				t.Errorf("elements outside the slice written: %v, %v", all[0], all[m*n+1])
			}
		})
	}
}

// TestLtOff: with cuBLASLt turned off the same calls take the GemmEx path (bias
// written first, beta = 1) and give the same results within the bound.
func TestLtOff(t *testing.T) {
	g := withPrecision(t, BF16)
	g.lt.off = true
	t.Cleanup(func() { g.lt.off = false })
	const m, n, k = 70, 130, 64
	r := rand.New(rand.NewPCG(43, 5))
	x, w, bias, dy, dw0 := randVec(r, m*k), randVec(r, n*k), randVec(r, n), randVec(r, m*n), randVec(r, n*k)
	before := ltCalls(g)
	gy, gdx, gdw := g.Alloc(m*n), g.Alloc(m*k), g.Upload(dw0)
	g.Linear(gy, g.Upload(x), g.Upload(w), g.Upload(bias), m, n, k)
	g.LinearBackward(gdx, gdw, nil, g.Upload(dy), g.Upload(x), g.Upload(w), m, n, k)
	if ltCalls(g) != before {
		t.Fatalf("cuBLASLt ran %d matmuls while turned off", ltCalls(g)-before)
	}
	c0 := make([]float32, m*n)
	for i := 0; i < m; i++ {
		copy(c0[i*n:], bias)
	}
	tight, _, _ := refGemm(fmtBF16, false, true, m, n, k, 1, x, k, w, k, 1, c0, n)
	checkClose(t, "Linear (GemmEx)", down(g, gy), tight, tolTight)
	tight, _, _ = refGemm(fmtBF16, false, false, m, k, n, 1, dy, n, w, k, 0, make([]float32, m*k), k)
	checkClose(t, "dx (GemmEx)", down(g, gdx), tight, tolTight)
	tight, _, _ = refGemm(fmtBF16, true, false, n, k, m, 1, dy, n, x, k, 1, dw0, k)
	checkClose(t, "dw (GemmEx)", down(g, gdw), tight, tolTight)
}

// TestLtColMajor checks the row-major → column-major translation without a GPU:
// cuBLASLt's product, emulated from the layouts (rows, columns, leading dimension,
// op) on the caller's arrays, must equal the row-major product computed directly,
// and every layout must be one cuBLASLt accepts (ld ≥ rows in column order).
func TestLtColMajor(t *testing.T) {
	r := rand.New(rand.NewPCG(47, 9))
	for _, ta := range []bool{false, true} {
		for _, tb := range []bool{false, true} {
			for _, d := range [][3]int{{1, 3, 2}, {5, 7, 9}, {4, 1, 6}, {13, 11, 1}} {
				m, n, k := d[0], d[1], d[2]
				ar, ac := m, k
				if ta {
					ar, ac = k, m
				}
				br, bc := k, n
				if tb {
					br, bc = n, k
				}
				lda, ldb, ldc := ac+2, bc+1, n+3 // padded, as Gemm allows
				a, b := randVec(r, ar*lda), randVec(r, br*ldb)
				at := func(i, l int) float64 {
					if ta {
						return float64(a[l*lda+i])
					}
					return float64(a[i*lda+l])
				}
				bt := func(l, j int) float64 {
					if tb {
						return float64(b[j*ldb+l])
					}
					return float64(b[l*ldb+j])
				}
				s := ltColMajor(ta, tb, m, n, k, lda, ldb, ldc)
				name := fmt.Sprintf("ta %v tb %v %dx%dx%d", ta, tb, m, n, k)
				for _, l := range [][3]int{{s.aRows, s.aCols, s.aLD}, {s.bRows, s.bCols, s.bLD}, {s.cRows, s.cCols, s.cLD}} {
					if l[2] < l[0] {
						t.Errorf("%s: layout %v has ld < rows", name, l)
					}
				}
				// cuBLASLt's A is stored column-major aRows×aCols at the caller's b;
				// op(A) is gemmM×gemmK. Likewise B at the caller's a, gemmK×gemmN.
				colA := func(i, l int) float64 {
					if s.opA == opT {
						return float64(b[i*s.aLD+l])
					}
					return float64(b[l*s.aLD+i])
				}
				colB := func(l, j int) float64 {
					if s.opB == opT {
						return float64(a[l*s.bLD+j])
					}
					return float64(a[j*s.bLD+l])
				}
				if s.gemmM != s.cRows || s.gemmN != s.cCols {
					t.Fatalf("%s: D is %d×%d for a %d×%d product", name, s.cRows, s.cCols, s.gemmM, s.gemmN)
				}
				for i := 0; i < s.gemmM; i++ {
					for j := 0; j < s.gemmN; j++ {
						var got float64
						for l := 0; l < s.gemmK; l++ {
							got += colA(i, l) * colB(l, j)
						}
						// D(i, j) sits at i + j·ldc: the caller's C[j][i].
						var want float64
						for l := 0; l < k; l++ {
							want += at(j, l) * bt(l, i)
						}
						if math.Abs(got-want) > 1e-12*(1+math.Abs(want)) {
							t.Fatalf("%s: D(%d,%d) = %v, row-major C[%d][%d] = %v", name, i, j, got, j, i, want)
						}
					}
				}
			}
		}
	}
}

// TestLtABI checks the Go mirror of cublasLtMatmulHeuristicResult_t against the C
// layout (cublasLt.h: cublasLtMatmulAlgo_t of 8 uint64, size_t, cublasStatus_t,
// float, int[4]) and the alignment classes.
func TestLtABI(t *testing.T) {
	var r ltHeuristicResult
	if s, w, st, wv := unsafe.Sizeof(r), unsafe.Offsetof(r.workspaceSize), unsafe.Offsetof(r.state), unsafe.Offsetof(r.wavesCount); s != 96 || w != 64 || st != 72 || wv != 76 {
		t.Errorf("ltHeuristicResult: size %d, offsets %d %d %d; want 96, 64 72 76", s, w, st, wv)
	}
	for _, c := range []struct {
		p    uint64
		want uint32
	}{{0x7f0000000000, 256}, {0x7f0000000200, 256}, {0x7f0000000100, 256}, {0x7f0000000080, 128}, {0x7f0000000004, 4}, {0x7f000000000c, 4}, {0x7f0000000010, 16}} {
		if got := alignOf(c.p); got != c.want {
			t.Errorf("alignOf(%#x) = %d, want %d", c.p, got, c.want)
		}
	}
}
