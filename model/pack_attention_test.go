package model_test

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/xform-dev/xform/kernels"
	"github.com/xform-dev/xform/kernels/cpu"
	"github.com/xform-dev/xform/model"
)

// halfPacking is a CPU backend that answers the 16-bit interfaces with float32 buffers
// (nothing is rounded: its "16-bit" buffers are float32 ones) and implements
// kernels.PackedAttention by its definition on CPU operations (expand, the stored-mask
// attention with the mask DropoutMask draws from the seed, pack), so that the model's
// packed-attention plumbing — the spans, the views of fused and batched tensors, the
// backward's placement of dq, dk, dv — can be checked against its expanding path on the
// same arithmetic.
type halfPacking struct {
	*packing
	packedOn    bool
	packedCalls int
	// maxKeys, when set, is the longest key length PackedAttentionTakes accepts.
	maxKeys int
}

var _ kernels.PackedAttention = (*halfPacking)(nil)

func (h *halfPacking) PackedAttentionTakes(a kernels.AttentionArgs) bool {
	return h.maxKeys == 0 || a.TK <= h.maxKeys
}

func (h *halfPacking) AllocHalf(n int) kernels.Buffer               { return h.cpu.Alloc(n) }
func (h *halfPacking) Attention16(kernels.AttentionArgs) bool       { return true }
func (h *halfPacking) AttentionInputs16(kernels.AttentionArgs) bool { return true }
func (h *halfPacking) HalfOutputs() bool                            { return true }
func (h *halfPacking) RoundAll(dst, src []kernels.Buffer) {
	for i := range dst {
		copy(cpu.Data(dst[i]), cpu.Data(src[i]))
	}
}

type testSpans struct {
	base, lo, hi []int32
	rows         int
}

func (s *testSpans) Len() int  { return len(s.base) }
func (s *testSpans) Rows() int { return s.rows }

func (h *halfPacking) RowSpans(base, lo, hi []int32, rows int) kernels.RowSpans {
	kernels.CheckRowSpans(base, lo, hi, rows)
	return &testSpans{base: base, lo: lo, hi: hi, rows: rows}
}

// expand is view x's packed rows in the padded [B·T, d] layout (zeros at pads).
func (h *halfPacking) expand(x kernels.View, s *testSpans, T, d int) kernels.Buffer {
	y := h.cpu.Alloc(len(s.base) * T * d)
	src, dst := cpu.Data(x.Buf), cpu.Data(y)
	for b := range s.base {
		for i := s.lo[b]; i < s.hi[b]; i++ {
			r := int(s.base[b] + i)
			copy(dst[(b*T+int(i))*d:][:d], src[x.Off+r*x.RowStride:][:d])
		}
	}
	return y
}

// store writes padded y's real rows into view x's packed rows.
func (h *halfPacking) store(x kernels.View, y kernels.Buffer, s *testSpans, T, d int) {
	src, dst := cpu.Data(y), cpu.Data(x.Buf)
	for b := range s.base {
		for i := s.lo[b]; i < s.hi[b]; i++ {
			r := int(s.base[b] + i)
			copy(dst[x.Off+r*x.RowStride:][:d], src[(b*T+int(i))*d:][:d])
		}
	}
}

func (h *halfPacking) mask(a kernels.AttentionArgs, p float64, seed uint64) kernels.Buffer {
	if p <= 0 {
		return nil
	}
	m := h.cpu.Alloc(a.Batch * a.Heads * a.TQ * a.TK)
	h.cpu.DropoutMask(m, p, seed)
	return m
}

func (h *halfPacking) AttentionForwardPacked(out, q, k, v kernels.View, a kernels.AttentionArgs, qs, ks kernels.RowSpans, probs kernels.Buffer, p float64, seed uint64) bool {
	if !h.packedOn || !h.PackedAttentionTakes(a) {
		return false
	}
	h.packedCalls++
	d := a.Heads * a.HeadDim
	qsp, ksp := qs.(*testSpans), ks.(*testSpans)
	pv := func(b kernels.Buffer, T int) kernels.View {
		return kernels.View{Buf: b, BatchStride: T * d, RowStride: d}
	}
	o := h.cpu.Alloc(a.Batch * a.TQ * d)
	h.cpu.AttentionForward(pv(o, a.TQ), pv(h.expand(q, qsp, a.TQ, d), a.TQ), pv(h.expand(k, ksp, a.TK, d), a.TK),
		pv(h.expand(v, ksp, a.TK, d), a.TK), a, probs, h.mask(a, p, seed))
	h.store(out, o, qsp, a.TQ, d)
	return true
}

func (h *halfPacking) AttentionBackwardPacked(dq, dk, dv, dout, q, k, v kernels.View, a kernels.AttentionArgs, qs, ks kernels.RowSpans, probs kernels.Buffer, p float64, seed uint64) bool {
	if !h.packedOn || !h.PackedAttentionTakes(a) {
		return false
	}
	d := a.Heads * a.HeadDim
	qsp, ksp := qs.(*testSpans), ks.(*testSpans)
	pv := func(b kernels.Buffer, T int) kernels.View {
		return kernels.View{Buf: b, BatchStride: T * d, RowStride: d}
	}
	gq, gk, gv := h.cpu.Alloc(a.Batch*a.TQ*d), h.cpu.Alloc(a.Batch*a.TK*d), h.cpu.Alloc(a.Batch*a.TK*d)
	h.cpu.AttentionBackward(pv(gq, a.TQ), pv(gk, a.TK), pv(gv, a.TK), pv(h.expand(dout, qsp, a.TQ, d), a.TQ),
		pv(h.expand(q, qsp, a.TQ, d), a.TQ), pv(h.expand(k, ksp, a.TK, d), a.TK), pv(h.expand(v, ksp, a.TK, d), a.TK),
		a, probs, h.mask(a, p, seed))
	h.store(dq, gq, qsp, a.TQ, d)
	h.store(dk, gk, ksp, a.TK, d)
	h.store(dv, gv, ksp, a.TK, d)
	return true
}

// TestPackedAttentionPlumbing: packed steps with the attention on packed rows
// (kernels.PackedAttention, here its definition on the CPU) against the same steps
// expanding rows around it, every test configuration, the cross-attention keys and
// values batched and per layer, attention dropout 0 and 0.2, on a batch with left- and
// right-padded sentences: the two run the same arithmetic on the same values, so the
// loss and every gradient must be the same bits, and the packed run must have taken
// the packed attention for every attention call.
func TestPackedAttentionPlumbing(t *testing.T) {
	r := rand.New(rand.NewPCG(21, 22))
	b := randomPaddedBatch(r, 6, 7, 9, 11)
	for name, c := range trainConfigs() {
		for _, kv := range []bool{false, true} {
			for _, attnDrop := range []float64{0, 0.2} {
				t.Run(fmt.Sprintf("%s/kvbatch=%v/attention-dropout=%v", name, kv, attnDrop), func(t *testing.T) {
					run := func(on bool) (model.StepResult, map[string][]float32, int) {
						be := &halfPacking{packing: newPacking(kv), packedOn: on}
						net, err := model.NewTrainNet(trainTestModel(c, 1), be)
						if err != nil {
							t.Fatal(err)
						}
						if err := net.SetPackedRows(true); err != nil {
							t.Fatal(err)
						}
						res, grads := stepGrads(t, net, b, attnDrop)
						return res, grads, be.packedCalls
					}
					on, gOn, calls := run(true)
					off, gOff, callsOff := run(false)
					if want := c.EncoderLayers + 2*c.DecoderLayers; calls != want || callsOff != 0 {
						t.Fatalf("packed attention calls: %d with it on (want %d), %d off", calls, want, callsOff)
					}
					if on.Loss != off.Loss || on.NLL != off.NLL {
						t.Fatalf("loss %v nll %v with packed attention, %v %v expanding", on.Loss, on.NLL, off.Loss, off.NLL)
					}
					for pname, g := range gOff {
						for i := range g {
							if math.Float32bits(gOn[pname][i]) != math.Float32bits(g[i]) {
								t.Fatalf("%s[%d]: %v with packed attention, %v expanding", pname, i, gOn[pname][i], g[i])
							}
						}
					}
				})
			}
		}
	}
}

// TestPackedRowsWherePaying: SetPackedRowsWherePaying packs a step only where every
// attention call takes packed rows (kernels.PackedAttention.PackedAttentionTakes): with
// the backend taking keys up to 9, a batch of 7 source and 9 target slots packs (packed
// attention at every call, no PackRows), one of 12 target slots runs padded (neither),
// and SetPackedRows(true) packs that one too, expanding rows around attention. The
// padded step's loss is the plain padded net's, bit for bit.
func TestPackedRowsWherePaying(t *testing.T) {
	c := trainConfigs()["admin"]
	r := rand.New(rand.NewPCG(31, 32))
	short, long := randomPaddedBatch(r, 6, 7, 9, 11), randomPaddedBatch(r, 6, 7, 12, 11)
	step := func(b *model.TrainBatch, mode string) (model.StepResult, *halfPacking) {
		be := &halfPacking{packing: newPacking(true), packedOn: true, maxKeys: 9}
		net, err := model.NewTrainNet(trainTestModel(c, 1), be)
		if err != nil {
			t.Fatal(err)
		}
		switch mode {
		case "paying":
			err = net.SetPackedRowsWherePaying()
		case "always":
			err = net.SetPackedRows(true)
		}
		if err != nil {
			t.Fatal(err)
		}
		res, err := net.Step(context.Background(), b, model.StepOptions{LabelSmoothing: 0.1, Backward: true})
		if err != nil {
			t.Fatal(err)
		}
		return res, be
	}
	want := c.EncoderLayers + 2*c.DecoderLayers
	if _, be := step(short, "paying"); be.packedCalls != want || be.packs != 0 {
		t.Errorf("short keys: %d packed attention calls (want %d), %d PackRows (want 0)", be.packedCalls, want, be.packs)
	}
	res, be := step(long, "paying")
	if be.packedCalls != 0 || be.packs != 0 {
		t.Errorf("long keys: %d packed attention calls, %d PackRows: the step packed", be.packedCalls, be.packs)
	}
	if plain, _ := step(long, "off"); res.Loss != plain.Loss || res.NLL != plain.NLL {
		t.Errorf("long keys: loss %v nll %v, the padded net's %v %v", res.Loss, res.NLL, plain.Loss, plain.NLL)
	}
	if _, be := step(long, "always"); be.packs == 0 {
		t.Error("long keys with SetPackedRows(true): no PackRows, the step did not pack")
	}
}
