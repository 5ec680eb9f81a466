package cuda

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/xform-dev/xform/kernels"
)

// TestPackRows: kernels.RowPacker against the host's copy, float32 and 16-bit, widths
// whose rows take the 16-byte kernel (512, 1536) and the 2-byte one (7, 12), an index
// of every padded slot (-1 rows zero) and one of the packed rows: the bits exactly.
func TestPackRows(t *testing.T) {
	for _, prec := range []Precision{BF16, FP16} {
		g := withPrecision(t, prec)
		for _, width := range []int{512, 1536, 7, 12} {
			r := rand.New(rand.NewPCG(uint64(width), 3))
			const srcRows = 37
			src := randVec(r, srcRows*width)
			// An expanding index (packed row or -1) over 50 slots and a packing one.
			expand := make([]int32, 50)
			for i := range expand {
				expand[i] = int32(r.IntN(srcRows+12)) - 12
				if expand[i] < 0 {
					expand[i] = -1
				}
			}
			pack := []int32{36, 0, 5, 5, 17, 2}
			for _, idx := range [][]int32{expand, pack} {
				want := make([]float32, len(idx)*width)
				for i, j := range idx {
					if j >= 0 {
						copy(want[i*width:(i+1)*width], src[int(j)*width:int(j+1)*width])
					}
				}
				// float32
				s32 := g.Upload(src)
				d32 := g.Upload(randVec(r, len(want))) // stale values must be overwritten, zeros included
				ix := g.RowIndex(idx, srcRows)
				g.PackRows(d32, s32, ix, width)
				got := make([]float32, len(want))
				g.Download(got, d32)
				for i := range want {
					if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
						t.Fatalf("%v width %d float32: element %d = %v, want %v", prec, width, i, got[i], want[i])
					}
				}
				// 16-bit: the rounded source's bits, moved.
				s16 := to16(g, s32)
				src16 := downHalf(t, g, s16)
				want16 := make([]float32, len(want))
				for i, j := range idx {
					if j >= 0 {
						copy(want16[i*width:(i+1)*width], src16[int(j)*width:int(j+1)*width])
					}
				}
				d16 := to16(g, g.Upload(randVec(r, len(want))))
				g.PackRows(d16, s16, ix, width)
				got16 := downHalf(t, g, d16)
				for i := range want16 {
					if math.Float32bits(got16[i]) != math.Float32bits(want16[i]) {
						t.Fatalf("%v width %d 16-bit: element %d = %v, want %v", prec, width, i, got16[i], want16[i])
					}
				}
			}
		}
	}
}

// TestPackRowsRefuses: mixed formats, indices past the source and short buffers panic
// with a message rather than reading or writing out of bounds.
func TestPackRowsRefuses(t *testing.T) {
	g := withPrecision(t, BF16)
	s32, d32 := g.Alloc(4*8), g.Alloc(4*8)
	for name, f := range map[string]func(){
		"formats differ": func() { g.PackRows(g.AllocHalf(32), s32, g.RowIndex([]int32{0, 1, 2, 3}, 4), 8) },
		"index past src": func() { g.RowIndex([]int32{0, 4}, 4) },
		"dst too short":  func() { g.PackRows(g.Alloc(8), s32, g.RowIndex([]int32{0, 1}, 4), 8) },
		"src too short":  func() { g.PackRows(d32, g.Alloc(8), g.RowIndex([]int32{0, 1}, 4), 8) },
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("%s: no panic", name)
				}
			}()
			f()
		}()
	}
}

// TestPackedRowsTraining: the fixture training (both models, bf16 and fp16, both
// recipes) on packed rows against the padded run: within checkTrainClose's 16-bit
// bounds (the sums are the same but for their grouping in the GEMMs, and with dropout
// the position-wise masks differ), packing taken (PackRows launched or attention run
// on packed rows; the batches have pads), and a backend with CUDA graphs on gives the
// packed eager run's bits (packed steps are not captured).
func TestPackedRowsTraining(t *testing.T) {
	gpu(t)
	eachTrainCase(t, func(t *testing.T, mc trainModel, prec Precision, rc trainCase) {
		padBE := newGraphTestBackend(t, prec, false)
		packBE := newGraphTestBackend(t, prec, false)
		graphBE := newGraphTestBackend(t, prec, true)
		padded, _ := runTrain(t, mc.m, padBE, rc, mc.batches)
		pc := rc
		pc.pack = true
		packed, _ := runTrain(t, mc.m, packBE, pc, mc.batches)
		graphed, _ := runTrain(t, mc.m, graphBE, pc, mc.batches)
		// A packed step reaches packed rows either through PackRows around
		// attention or through attention on packed rows (head dimension 64).
		took := func(be *Backend) int { defer be.enter()(); return be.packCalls + be.mmaFns().in16.packed }
		if took(packBE) == 0 || took(padBE) != 0 {
			t.Fatalf("PackRows or packed attention launches: packed run %d, padded run %d", took(packBE), took(padBE))
		}
		checkTrainClose(t, "packed", packed, "padded", padded)
		checkSameRun(t, "packed, graphs on", graphed, "packed, eager", packed)
	})
}

var _ kernels.RowPacker = (*Backend)(nil)
