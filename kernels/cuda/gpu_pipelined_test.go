package cuda

import (
	"encoding/binary"
	"math"
	"testing"
	"time"

	"github.com/xform-dev/xform/kernels"
)

// TestPipelinedTrainingSameBits trains with update k+1 queued before update k's loss
// and gradient norm are read (train.Stepper.Queue, deferred reads through page-locked
// memory and events) and without (Stepper.Step, which reads before queueing more): the
// device runs the same kernels in the same order on the same data either way, so every
// update's loss, nll and gradient norm and the final weights must be the same bits. A
// read that waited on the wrong event, or copied a buffer after the next update reused
// it, would show here. FP32 and BF16, the fixture model and the head-dim-64 model (the
// bench's attention path), both recipes.
func TestPipelinedTrainingSameBits(t *testing.T) {
	gpu(t)
	models := fixtureAndHeadDim64(t, 10, 1)
	for _, prec := range []Precision{FP32, BF16} {
		for _, md := range models {
			for _, rc := range sameBitsCases {
				t.Run(prec.String()+"/"+md.name+"/"+rc.name, func(t *testing.T) {
					m, batches := md.m, md.batches
					plainBE := newGraphTestBackend(t, prec, false)
					pipeBE := newGraphTestBackend(t, prec, false)
					if !pipeBE.DeferredReads() {
						t.Fatal("DeferredReads false on a backend without graphs")
					}
					plain, _ := runTrain(t, m, plainBE, rc, batches)
					prc := rc
					prc.pipelined = true
					piped, _ := runTrain(t, m, pipeBE, prc, batches)
					if n := len(pipeBE.readsMade); n == 0 || n > 4 {
						t.Errorf("%d page-locked read slots made; want 1–4 (two reads in flight per update, recycled)", n)
					}
					checkSameRun(t, "pipelined", piped, "step by step", plain)
				})
			}
		}
	}
}

// TestReadAsyncOrder: a deferred read returns the bytes its buffer held when the read
// was queued, though the buffer is overwritten by work queued after it and the reads
// are made out of order; a graphed backend offers deferred reads too.
func TestReadAsyncOrder(t *testing.T) {
	gpu(t)
	be := newGraphTestBackend(t, FP32, false)
	x := be.Upload([]float32{1, 2, 3, 4})
	reads := make([]func() []byte, 0, 3)
	for range 3 {
		func() {
			defer be.enter()()
			reads = append(reads, be.readLater(x.(*buffer), 16))
		}()
		// Overwrite x in stream order: x = 10·x.
		be.Scale(x, 10)
	}
	for i := 2; i >= 0; i-- {
		b := reads[i]()
		want := math.Pow(10, float64(i))
		for j := range 4 {
			got := math.Float32frombits(binary.LittleEndian.Uint32(b[4*j:]))
			if float64(got) != float64(float32(float64(j+1)*want)) {
				t.Errorf("read %d element %d: %v, want %v", i, j, got, float32(float64(j+1)*want))
			}
		}
	}
	if len(be.readsMade) != 3 || len(be.reads) != 3 {
		t.Errorf("%d slots made, %d free after the reads; want 3 and 3", len(be.readsMade), len(be.reads))
	}
	var _ kernels.DeferredReader = be
	graphed := newGraphTestBackend(t, FP32, true)
	if !graphed.DeferredReads() {
		t.Error("a graphed backend declines DeferredReads")
	}
}

// TestGraphedPipelinedSameBits trains with CUDA graphs and update k+1 queued before
// update k's results are read (train.Stepper.Queue: the replay's dry run of k+1 runs
// while the GPU runs graph k, its uploads staged until graph k is done, graph k's loss
// copied out of the shared pinned memory before graph k+1 overwrites it), against the
// eager run step by step. The device runs the same kernels with the same arguments in
// the same order, so every update's loss, nll and gradient norm and the final weights
// must be the same bits. Batches: 3 reference batches 4 times (3 shapes: eager, capture,
// then 2 replays each), FP32 and BF16, the fixture model and the head-dim-64 model
// (the same batches), both recipes.
func TestGraphedPipelinedSameBits(t *testing.T) {
	gpu(t)
	models := fixtureAndHeadDim64(t, 3, 4)
	for _, prec := range []Precision{FP32, BF16} {
		for _, md := range models {
			for _, rc := range sameBitsCases {
				t.Run(prec.String()+"/"+md.name+"/"+rc.name, func(t *testing.T) {
					m, batches := md.m, md.batches
					eagerBE := newGraphTestBackend(t, prec, false)
					graphBE := newGraphTestBackend(t, prec, true)
					if !graphBE.DeferredReads() {
						t.Fatal("DeferredReads false on a graphed backend")
					}
					eager, _ := runTrain(t, m, eagerBE, rc, batches)
					prc := rc
					prc.pipelined = true
					graphed, _ := runTrain(t, m, graphBE, prc, batches)
					st := graphBE.GraphStats()
					t.Logf("%+v; per replay: host %v, waiting for the previous launch %v", st,
						st.ReplayHost/time.Duration(max(st.Replays, 1)), st.ReplayWait/time.Duration(max(st.Replays, 1)))
					if st.Captures != 3 || st.Replays != 6 || st.Divergences != 0 || st.Eager != 3 {
						t.Errorf("graph use %+v: want 3 eager, 3 captures, 6 replays, no divergence", st)
					}
					if prec != FP32 && (graphBE.roundAlls != 1 || graphBE.roundedUpdates != len(batches)) {
						t.Errorf("graphed: %d RoundAll, %d rounding updates; want 1 and %d", graphBE.roundAlls, graphBE.roundedUpdates, len(batches))
					}
					if r := &graphBE.graph.reads; len(r.pending) != 0 || len(r.staged) != 0 {
						t.Errorf("after the last read: %d read-backs pending, %d staged; want none", len(r.pending), len(r.staged))
					}
					checkSameRun(t, "graphed pipelined", graphed, "eager step by step", eager)
				})
			}
		}
	}
}
