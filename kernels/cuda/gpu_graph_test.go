package cuda

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/xform-dev/xform/kernels"
	"github.com/xform-dev/xform/model"
)

// TestGraphedTrainingSameBits trains the fixture model with CUDA graphs and without, on
// the same backend settings and seeds, over batches whose shapes repeat (3 reference
// batches, 4 times each: the first step of a shape runs eagerly, the second is captured,
// the rest replay with new dropout seeds patched into the graph). A graph replays the
// same kernels with the same arguments, so every update's loss, nll and gradient norm
// and the final weights must be the same bits as the eager run — there is no tolerance
// to state. It also checks that the graphs were used: 3 captures, 6 replays, kernel
// nodes updated (the dropout seeds), no divergence.
func TestGraphedTrainingSameBits(t *testing.T) {
	gpu(t)
	m, ref := fixtureTraining(t, 3)
	var batches []*model.TrainBatch
	for r := 0; r < 4; r++ {
		batches = append(batches, ref...)
	}
	for _, prec := range []Precision{FP32, BF16} {
		for _, rc := range sameBitsCases {
			t.Run(prec.String()+"/"+rc.name, func(t *testing.T) {
				eagerBE := newGraphTestBackend(t, prec, false)
				graphBE := newGraphTestBackend(t, prec, true)
				eager, et := runTrain(t, m, eagerBE, rc, batches)
				graphed, gt := runTrain(t, m, graphBE, rc, batches)
				st := graphBE.GraphStats()
				t.Logf("%d updates: eager %v, graphed %v; %+v", len(batches), et.Round(time.Millisecond), gt.Round(time.Millisecond), st)
				if st.Captures != 3 || st.Replays != 6 || st.Divergences != 0 || st.Eager != 3 {
					t.Errorf("graph use %+v: want 3 eager, 3 captures, 6 replays, no divergence", st)
				}
				// In bf16 the optimizer writes the weights' 16-bit copies: one RoundAll, at
				// the first step, outside the graphs (a RoundAll inside would diverge).
				if prec != FP32 && (graphBE.roundAlls != 1 || graphBE.roundedUpdates != len(batches)) {
					t.Errorf("graphed: %d RoundAll, %d rounding updates; want 1 and %d", graphBE.roundAlls, graphBE.roundedUpdates, len(batches))
				}
				if rc.dropout > 0 && st.NodeUpdates == 0 {
					t.Errorf("no kernel node updated although every step draws new dropout seeds")
				}
				checkSameRun(t, "graphed", graphed, "eager", eager)
			})
		}
	}
}

// TestGraphedStepRejectsReads: a download inside a graphed step is an error naming
// the operation, and the backend works normally afterwards.
func TestGraphedStepRejectsReads(t *testing.T) {
	gpu(t)
	be := newGraphTestBackend(t, FP32, true)
	x := be.Upload([]float32{1, 2, 3})
	f := func() error {
		y := be.Alloc(3)
		be.AddTo(y, x)
		be.Download(make([]float32, 3), y)
		return nil
	}
	if err := be.Graphed("k", f); err != nil { // first sight: eager, the read is fine
		t.Fatal(err)
	}
	err := func() (err error) {
		defer Guard(&err)
		return be.Graphed("k", f)
	}()
	if err == nil || !strings.Contains(err.Error(), "Download inside a graphed step") {
		t.Fatalf("download inside a capture: %v", err)
	}
	y := be.Alloc(3)
	be.AddTo(y, x)
	if got := down(be, y); got[2] != 3 {
		t.Fatalf("after the failed capture: %v", got)
	}
}

func newGraphTestBackend(t *testing.T, prec Precision, graphs bool) *Backend {
	t.Helper()
	be, err := New(context.Background(), Options{Precision: prec, Graphs: graphs, CacheDir: os.Getenv("XFORM_CUDA_TEST_CACHE")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { be.Close() })
	if graphs && !be.GraphsEnabled() {
		t.Fatal("graphs asked for but not enabled (XFORM_CUDA_GRAPHS=0, profile or sync check on?)")
	}
	return be
}

var _ kernels.StepGrapher = (*Backend)(nil)
