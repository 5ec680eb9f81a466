package cuda

import (
	"encoding/binary"
	"math"
	"testing"

	"github.com/xform-dev/xform/kernels"
	"github.com/xform-dev/xform/model"
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
	fix, fixBatches := fixtureTraining(t, 10)
	wide, wideBatches := headDim64Training(t, 10)
	models := []struct {
		name    string
		m       *model.Model
		batches []*model.TrainBatch
	}{{"fixture", fix, fixBatches}, {"head dim 64", wide, wideBatches}}
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
// are made out of order; a graphed backend declines deferred reads.
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
	if graphed.DeferredReads() {
		t.Error("a graphed backend says DeferredReads")
	}
}
