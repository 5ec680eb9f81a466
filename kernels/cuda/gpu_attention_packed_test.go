package cuda

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/xform-dev/xform/kernels"
)

// packedSideT is one side of a packed attention test batch: B sentences of T slots,
// left- or right-padded, their rows packed.
type packedSideT struct {
	T, rows        int
	toPad, fromPad []int32
	pad            []bool
	base, lo, hi   []int32
}

func newPackedSideT(r *rand.Rand, B, T int, left bool) packedSideT {
	s := packedSideT{T: T, toPad: make([]int32, B*T), pad: make([]bool, B*T),
		base: make([]int32, B), lo: make([]int32, B), hi: make([]int32, B)}
	for b := 0; b < B; b++ {
		n := 1 + r.IntN(T)
		if b == 0 {
			n = T
		}
		lo := 0
		if left {
			lo = T - n
		}
		s.base[b], s.lo[b], s.hi[b] = int32(s.rows-lo), int32(lo), int32(lo+n)
		for i := 0; i < T; i++ {
			if i < lo || i >= lo+n {
				s.toPad[b*T+i], s.pad[b*T+i] = -1, true
				continue
			}
			s.toPad[b*T+i] = int32(s.rows)
			s.fromPad = append(s.fromPad, int32(b*T+i))
			s.rows++
		}
	}
	return s
}

// TestPackedAttentionSameBits: kernels.PackedAttention (attention_mma3_*_hr*) against
// its definition on the same backend: the packed rows expanded (PackRows), the seeded
// padded call, the outputs packed back. bf16 and fp16; self-attention (keys = queries,
// left-padded as an encoder, or right-padded and causal as a decoder) and
// cross-attention (right-padded queries, left-padded keys of another length); q, k, v
// as separate tensors and as column views of one fused tensor; dropout 0.1 and none;
// T 12–41. out, dq, dk, dv and probs must be the same bits, and a guard row after each
// packed output must stay as it was (nothing written past the real rows).
func TestPackedAttentionSameBits(t *testing.T) {
	for _, prec := range []Precision{BF16, FP16} {
		g := withAttnIn16(t, withPrecision(t, prec))
		if g.info.Major < 8 {
			t.Skip("the tensor-core kernels need sm_80")
		}
		type tc struct {
			name         string
			B, TQ, TK    int
			self, causal bool
			leftQ, leftK bool
			fused        bool
		}
		cases := []tc{
			{"encoder T 31", 40, 31, 31, true, false, true, true, true},
			{"encoder T 12", 60, 12, 12, true, false, true, true, false},
			{"decoder T 41", 30, 41, 41, true, true, false, false, true},
			{"decoder T 20", 50, 20, 20, true, true, false, false, false},
			{"cross 41 from 31", 30, 41, 31, false, false, false, true, false},
			{"cross 20 from 41", 40, 20, 41, false, false, false, true, false},
		}
		for _, c := range cases {
			for _, dropP := range []float64{0.1, 0} {
				t.Run(fmt.Sprintf("%v/%s/p=%v", prec, c.name, dropP), func(t *testing.T) {
					r := rand.New(rand.NewPCG(uint64(c.B*c.TQ), uint64(c.TK)))
					const H, D = 8, 64
					d := H * D
					qs := newPackedSideT(r, c.B, c.TQ, c.leftQ)
					ks := qs
					if !c.self {
						ks = newPackedSideT(r, c.B, c.TK, c.leftK)
					}
					a := kernels.AttentionArgs{Batch: c.B, Heads: H, HeadDim: D, TQ: c.TQ, TK: c.TK, Scale: 0.125,
						KeyPadding: ks.pad, KeyPadStride: c.TK, Causal: c.causal}
					const seed = 77
					half := func(rows, width int) kernels.Buffer {
						return to16(g, g.Upload(randVec(r, rows*width)))
					}
					// Packed inputs: q, k, v columns of one [rows, 3d] tensor (self, fused) or
					// separate [rows, d] ones; one guard row each.
					var q, k, v kernels.View
					if c.fused {
						qkv := half(qs.rows+1, 3*d)
						q = kernels.View{Buf: qkv, RowStride: 3 * d}
						k = kernels.View{Buf: qkv, Off: d, RowStride: 3 * d}
						v = kernels.View{Buf: qkv, Off: 2 * d, RowStride: 3 * d}
					} else {
						q = kernels.View{Buf: half(qs.rows+1, d), RowStride: d}
						k = kernels.View{Buf: half(ks.rows+1, d), RowStride: d}
						v = kernels.View{Buf: half(ks.rows+1, d), RowStride: d}
					}
					qSpans := g.RowSpans(qs.base, qs.lo, qs.hi, qs.rows)
					kSpans := g.RowSpans(ks.base, ks.lo, ks.hi, ks.rows)
					// The definition: expand, the padded seeded call, pack.
					expand := func(s packedSideT, x kernels.View) kernels.View {
						// x's columns [Off, Off+d) as a dense [rows, d] tensor first: x's buffer
						// read as rows of d, row i's columns are its sub-row i·(w/d) + Off/d.
						dense := x.Buf
						if x.RowStride != d || x.Off != 0 {
							w := x.RowStride
							ix := make([]int32, s.rows)
							for i := range ix {
								ix[i] = int32(i*(w/d) + x.Off/d)
							}
							dense = g.AllocHalf(s.rows * d)
							g.PackRows(dense, x.Buf, g.RowIndex(ix, (s.rows+1)*(w/d)), d)
						}
						p := g.AllocHalf(len(s.toPad) * d)
						g.PackRows(p, dense, g.RowIndex(s.toPad, s.rows), d)
						return kernels.View{Buf: p, BatchStride: s.T * d, RowStride: d}
					}
					packOut := func(s packedSideT, x kernels.View) []float32 {
						y := g.AllocHalf(s.rows * d)
						g.PackRows(y, x.Buf, g.RowIndex(s.fromPad, len(s.toPad)), d)
						return downHalf(t, g, y)
					}
					qP, kP, vP := expand(qs, q), expand(ks, k), expand(ks, v)
					outP := kernels.View{Buf: g.AllocHalf(c.B * c.TQ * d), BatchStride: c.TQ * d, RowStride: d}
					probsRef := g.Alloc(c.B * H * c.TQ * c.TK)
					if !g.AttentionForwardSeeded(outP, qP, kP, vP, a, probsRef, dropP, seed) {
						t.Fatal("AttentionForwardSeeded declined")
					}
					wantOut := packOut(qs, outP)

					guard := func(rows int) kernels.Buffer { return half(rows+1, d) }
					out := guard(qs.rows)
					outBefore := downHalf(t, g, out)
					probs := g.Alloc(c.B * H * c.TQ * c.TK)
					if !g.AttentionForwardPacked(kernels.View{Buf: out, RowStride: d}, q, k, v, a, qSpans, kSpans, probs, dropP, seed) {
						t.Fatal("AttentionForwardPacked declined")
					}
					same := func(what string, got, want []float32, n int) {
						t.Helper()
						for i := 0; i < n; i++ {
							if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
								t.Fatalf("%s element %d (row %d): packed %v, definition %v", what, i, i/d, got[i], want[i])
							}
						}
					}
					gotOut := downHalf(t, g, out)
					same("out", gotOut, wantOut, qs.rows*d)
					same("out's guard row", gotOut[qs.rows*d:], outBefore[qs.rows*d:], d)
					pr, pw := make([]float32, probs.Len()), make([]float32, probs.Len())
					g.Download(pr, probs)
					g.Download(pw, probsRef)
					same("probs", pr, pw, len(pr))

					// Backward.
					dout := half(qs.rows, d)
					doutP := expand(qs, kernels.View{Buf: dout, RowStride: d})
					dqP := kernels.View{Buf: g.AllocHalf(c.B * c.TQ * d), BatchStride: c.TQ * d, RowStride: d}
					dkP := kernels.View{Buf: g.AllocHalf(c.B * c.TK * d), BatchStride: c.TK * d, RowStride: d}
					dvP := kernels.View{Buf: g.AllocHalf(c.B * c.TK * d), BatchStride: c.TK * d, RowStride: d}
					if !g.AttentionBackwardSeeded(dqP, dkP, dvP, doutP, qP, kP, vP, a, probsRef, dropP, seed) {
						t.Fatal("AttentionBackwardSeeded declined")
					}
					dq, dk, dv := guard(qs.rows), guard(ks.rows), guard(ks.rows)
					dqBefore, dkBefore := downHalf(t, g, dq), downHalf(t, g, dk)
					if !g.AttentionBackwardPacked(kernels.View{Buf: dq, RowStride: d}, kernels.View{Buf: dk, RowStride: d},
						kernels.View{Buf: dv, RowStride: d}, kernels.View{Buf: dout, RowStride: d}, q, k, v, a, qSpans, kSpans,
						probs, dropP, seed) {
						t.Fatal("AttentionBackwardPacked declined")
					}
					gq, gk, gv := downHalf(t, g, dq), downHalf(t, g, dk), downHalf(t, g, dv)
					same("dq", gq, packOut(qs, dqP), qs.rows*d)
					same("dk", gk, packOut(ks, dkP), ks.rows*d)
					same("dv", gv, packOut(ks, dvP), ks.rows*d)
					same("dq's guard row", gq[qs.rows*d:], dqBefore[qs.rows*d:], d)
					same("dk's guard row", gk[ks.rows*d:], dkBefore[ks.rows*d:], d)
				})
			}
		}
	}
}

// TestPackedAttentionDeclines: what the packed kernels do not take is declined, nothing
// done: float32 views, the first variant's key lengths (past 48), the switch off.
func TestPackedAttentionDeclines(t *testing.T) {
	g := withAttnIn16(t, withPrecision(t, BF16))
	if g.info.Major < 8 {
		t.Skip("the tensor-core kernels need sm_80")
	}
	const B, T, H, D = 4, 16, 8, 64
	d := H * D
	r := rand.New(rand.NewPCG(1, 2))
	s := newPackedSideT(r, B, T, false)
	sp := g.RowSpans(s.base, s.lo, s.hi, s.rows)
	a := kernels.AttentionArgs{Batch: B, Heads: H, HeadDim: D, TQ: T, TK: T, Scale: 0.125, KeyPadding: s.pad, KeyPadStride: T}
	h := kernels.View{Buf: to16(g, g.Upload(randVec(r, s.rows*d))), RowStride: d}
	f32 := kernels.View{Buf: g.Upload(randVec(r, s.rows*d)), RowStride: d}
	probs := g.Alloc(B * H * T * T)
	if g.AttentionForwardPacked(f32, h, h, h, a, sp, sp, probs, 0, 1) {
		t.Error("a float32 out was taken")
	}
	long := a
	long.TQ, long.TK, long.KeyPadding, long.KeyPadStride = 64, 64, nil, 64
	if g.AttentionForwardPacked(h, h, h, h, long, sp, sp, g.Alloc(B*H*64*64), 0, 1) {
		t.Error("T 64 (the first variant's) was taken")
	}
	g.packedAttnOff = true
	defer func() { g.packedAttnOff = false }()
	if g.AttentionForwardPacked(h, h, h, h, a, sp, sp, probs, 0, 1) {
		t.Error("taken with the switch off")
	}
}

// TestPackedAttentionTrainingSameBits: the fixture training on packed rows with the
// attention on packed rows (PackedAttention) and with it off (the rows expanded around
// it, PackRows): the _hr kernels land the _hb kernels' tiles, so every update's log and
// the final weights are the same bits; graphed (packed steps run eagerly) too. The
// head-dimension-64 model must have run packed attention (the fixture's head dimension
// 8 never reaches the tensor-core kernels).
func TestPackedAttentionTrainingSameBits(t *testing.T) {
	gpu(t)
	eachTrainCase(t, func(t *testing.T, mc trainModel, prec Precision, rc trainCase) {
		offBE := newGraphTestBackend(t, prec, false)
		offBE.packedAttnOff = true
		onBE := newGraphTestBackend(t, prec, false)
		pc := rc
		pc.pack = true
		off, _ := runTrain(t, mc.m, offBE, pc, mc.batches)
		on, _ := runTrain(t, mc.m, onBE, pc, mc.batches)
		packed := func(be *Backend) int { defer be.enter()(); return be.mmaFns().in16.packed }
		if mc.name == "head dim 64" && packed(onBE) == 0 {
			t.Fatal("no attention ran on packed rows")
		}
		if packed(offBE) != 0 {
			t.Fatalf("%d packed attention launches with the switch off", packed(offBE))
		}
		t.Logf("packed attention launches: %d; PackRows: %d on, %d off", packed(onBE), onBE.packCalls, offBE.packCalls)
		checkSameRun(t, "packed attention", on, "rows expanded", off)
	})
}
