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

// packing is a CPU backend with kernels.RowPacker (and, as kvBatching, the cross-
// attention batching switch), counting PackRows calls.
type packing struct {
	kernels.Trainer
	cpu   *cpu.Backend
	batch bool
	packs int
}

func newPacking(batch bool) *packing {
	c := cpu.New(1)
	return &packing{Trainer: c, cpu: c, batch: batch}
}

func (p *packing) BatchCrossKV() bool { return p.batch }

func (p *packing) RowIndex(idx []int32, srcRows int) kernels.RowIndex {
	return p.cpu.RowIndex(idx, srcRows)
}

func (p *packing) PackRows(dst, src kernels.Buffer, ix kernels.RowIndex, width int) {
	p.packs++
	p.cpu.PackRows(dst, src, ix, width)
}

// packingNet is the test model of c on be, with packed rows on or off.
func packingNet(t *testing.T, c model.Config, be *packing, pack bool) *model.TrainNet {
	t.Helper()
	net, err := model.NewTrainNet(trainTestModel(c, 1), be)
	if err != nil {
		t.Fatal(err)
	}
	if err := net.SetPackedRows(pack); err != nil {
		t.Fatal(err)
	}
	return net
}

// randomPaddedBatch is B sentence pairs of random lengths 1…S (sources, left-padded)
// and 1…T (targets, EOS first in prev, right-padded) over ids 4…vocab-1.
func randomPaddedBatch(r *rand.Rand, B, S, T, vocab int) *model.TrainBatch {
	b := &model.TrainBatch{B: B, S: S, T: T, Src: make([]int32, B*S), Prev: make([]int32, B*T), Target: make([]int32, B*T)}
	for i := range b.Src {
		b.Src[i] = model.Pad
	}
	for i := range b.Prev {
		b.Prev[i], b.Target[i] = model.Pad, model.Pad
	}
	for s := 0; s < B; s++ {
		ns, nt := 1+r.IntN(S), 1+r.IntN(T)
		if s == 0 {
			ns, nt = S, T // the batch's longest
		}
		for j := S - ns; j < S-1; j++ {
			b.Src[s*S+j] = int32(4 + r.IntN(vocab-4))
		}
		b.Src[s*S+S-1] = model.EOS
		for j := 0; j < nt; j++ {
			tok := int32(model.EOS)
			if j < nt-1 {
				tok = int32(4 + r.IntN(vocab-4))
			}
			b.Target[s*T+j] = tok
			if j == 0 {
				b.Prev[s*T] = model.EOS
			} else {
				b.Prev[s*T+j] = b.Target[s*T+j-1]
			}
		}
	}
	return b
}

// TestPackedRowsMatchPadded: a training step on packed rows (TrainNet.SetPackedRows)
// against the padded step, every test configuration, the cross-attention keys and
// values batched and per layer, on the fixed two-sentence batch and a random one of six
// with ~40 % pad slots. Without dropout the two compute the same sums over the same real
// rows (pad rows add exact zeros to every gradient), so the loss agrees to float64
// rounding and each gradient within 1e-5 of its tensor's largest (+1e-7 of the step's
// largest, for rounding noise around zero): the CPU GEMMs group a sum over rows by
// blocks, which moves with the row count. With attention dropout only (drawn in padded
// coordinates in both), the same must hold; the packed run must have packed.
func TestPackedRowsMatchPadded(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 12))
	batches := map[string]*model.TrainBatch{"fixed": trainTestBatch(), "random": randomPaddedBatch(r, 6, 7, 9, 11)}
	for name, c := range trainConfigs() {
		for bname, b := range batches {
			for _, kv := range []bool{false, true} {
				for _, attnDrop := range []float64{0, 0.2} {
					t.Run(fmt.Sprintf("%s/%s/kvbatch=%v/attention-dropout=%v", name, bname, kv, attnDrop), func(t *testing.T) {
						run := func(pack bool) (model.StepResult, map[string][]float32, int) {
							be := newPacking(kv)
							res, grads := stepGrads(t, packingNet(t, c, be, pack), b, attnDrop)
							return res, grads, be.packs
						}
						resP, gP, packs := run(true)
						resU, gU, packsU := run(false)
						if packs == 0 || packsU != 0 {
							t.Fatalf("PackRows calls: packed run %d, padded run %d", packs, packsU)
						}
						if resP.NTokens != resU.NTokens || math.Abs(resP.Loss-resU.Loss) > 1e-9*math.Abs(resU.Loss) ||
							math.Abs(resP.NLL-resU.NLL) > 1e-9*math.Abs(resU.NLL) {
							t.Fatalf("packed loss %v nll %v (%d tokens), padded %v %v (%d)", resP.Loss, resP.NLL, resP.NTokens,
								resU.Loss, resU.NLL, resU.NTokens)
						}
						worst := gradsClose(t, "packed", gP, "padded", gU)
						t.Logf("loss %.9g / %.9g; worst gradient difference %.3f of the bound", resP.Loss, resU.Loss, worst)
					})
				}
			}
		}
	}
}

// TestPackedRowsDropout: with every dropout on, a packed step draws its position-wise
// masks over packed elements, so it differs from the padded step; over many steps
// (fresh seeds) the mean losses must still agree within their standard errors (4σ),
// and each packed step must be finite.
func TestPackedRowsDropout(t *testing.T) {
	c := trainConfigs()["admin"]
	b := randomPaddedBatch(rand.New(rand.NewPCG(5, 6)), 6, 7, 9, 11)
	mean := func(pack bool) (float64, float64) {
		net := packingNet(t, c, newPacking(true), pack)
		rng := rand.New(rand.NewPCG(7, 8))
		const n = 300
		s, s2 := 0.0, 0.0
		for i := 0; i < n; i++ {
			res, err := net.Step(context.Background(), b, model.StepOptions{LabelSmoothing: 0.1, Train: true, Dropout: 0.3,
				AttentionDropout: 0.3, ActivationDropout: 0.3, RNG: rng})
			if err != nil {
				t.Fatal(err)
			}
			if math.IsNaN(res.Loss) || math.IsInf(res.Loss, 0) {
				t.Fatalf("step %d: loss %v", i, res.Loss)
			}
			s += res.Loss
			s2 += res.Loss * res.Loss
		}
		m := s / n
		return m, math.Sqrt((s2/n - m*m) / n)
	}
	mp, ep := mean(true)
	mu, eu := mean(false)
	if math.Abs(mp-mu) > 4*math.Hypot(ep, eu) {
		t.Fatalf("mean loss with dropout: packed %.5f ± %.5f, padded %.5f ± %.5f", mp, ep, mu, eu)
	}
	t.Logf("mean loss with dropout 0.3: packed %.5f ± %.5f, padded %.5f ± %.5f", mp, ep, mu, eu)
}

// TestSetPackedRowsNeedsPacker: a backend without kernels.RowPacker is refused.
func TestSetPackedRowsNeedsPacker(t *testing.T) {
	be := &kvBatching{Trainer: cpu.New(1), outs: map[int]int{}}
	net, err := model.NewTrainNet(trainTestModel(trainConfigs()["admin"], 1), be)
	if err != nil {
		t.Fatal(err)
	}
	if err := net.SetPackedRows(true); err == nil {
		t.Fatal("SetPackedRows(true) on a backend without RowPacker: no error")
	}
	if err := net.SetPackedRows(false); err != nil {
		t.Fatal(err)
	}
}

// stepGrads runs one training step of net on b (label smoothing 0.1, attention dropout
// attnDrop from a fixed seed, the other dropouts 0) and returns its result and a copy
// of every parameter's gradient, by name.
func stepGrads(t *testing.T, net *model.TrainNet, b *model.TrainBatch, attnDrop float64) (model.StepResult, map[string][]float32) {
	t.Helper()
	o := model.StepOptions{LabelSmoothing: 0.1, Backward: true, Train: attnDrop > 0,
		AttentionDropout: attnDrop, RNG: rand.New(rand.NewPCG(3, 4))}
	res, err := net.Step(context.Background(), b, o)
	if err != nil {
		t.Fatal(err)
	}
	grads := map[string][]float32{}
	for _, p := range net.Params() {
		grads[p.Name] = append([]float32(nil), cpu.Data(p.G)...)
	}
	return res, grads
}
