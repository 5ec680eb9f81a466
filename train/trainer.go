package train

import (
	"context"
	"fmt"
	"io"
	"math"
	"math/rand/v2"

	"github.com/xform-dev/xform/kernels"
	"github.com/xform-dev/xform/model"
)

// StepConfig holds the per-update flags of fairseq's train_step.
type StepConfig struct {
	ClipNorm          float64 // --clip-norm (0 = no clipping; the norm is still computed)
	LabelSmoothing    float64 // --label-smoothing
	Dropout           float64 // --dropout
	AttentionDropout  float64 // --attention-dropout
	ActivationDropout float64 // --activation-dropout / --relu-dropout
	Seed              uint64  // --seed: dropout masks are drawn from (seed, update index)
}

// Stepper runs fairseq's Trainer.train_step on a TrainNet: forward and backward of
// every sub-batch, gradients divided by the summed sample size, clipping, optimizer
// step, then the learning rate for the next update.
type Stepper struct {
	Net        *model.TrainNet
	Opt        *Optimizer
	Sched      Schedule
	Cfg        StepConfig
	NumUpdates int
	// Scaler, when set, trains with fairseq's --fp16 dynamic loss scaling: the loss
	// gradient is multiplied by its scale and an update whose gradient norm is not
	// finite is skipped. Nil for fp32 and bf16. Any backend works (the CPU's tests use
	// it); the CLI allows it only with the GPU's fp16 GEMMs, where overflows happen.
	Scaler *LossScaler
	// Log receives the fork's overflow warning; nil means Run's log (RunConfig.Log)
	// inside Run and nowhere outside it.
	Log io.Writer
	// NoPipeline keeps Queue from pipelining (xform train --sync-each-update): each
	// update's results are read before the next is queued.
	NoPipeline bool
}

// StepLog is what one update logs. Loss and NLL are per target token in bits, as
// fairseq prints them.
type StepLog struct {
	LR                              float64
	Loss, NLL                       float64
	LossSum, NLLSum                 float64 // nats, summed over the update
	SampleSize, NTokens, NSentences int
	GNorm                           float64
	Clipped                         bool
	// Overflow says the gradients were not finite under loss scaling: the update was
	// skipped (no optimizer step, NumUpdates and the schedule unchanged, gradients
	// zeroed), as fairseq's OverflowError handling does.
	Overflow bool
	// LossScale is the scaler's scale after this step (0 without a Scaler).
	LossScale float64
}

// ErrDiverged reports a non-finite loss or gradient norm.
var ErrDiverged = fmt.Errorf("training diverged")

// Step runs one update over the sub-batches (update-freq = len(batches)).
func (s *Stepper) Step(ctx context.Context, batches []*model.TrainBatch) (StepLog, error) {
	lg := StepLog{LR: s.Sched.LR()}
	net := s.Net
	scale := 1.0
	if s.Scaler != nil {
		scale = s.Scaler.Scale()
	}
	results, err := s.runBatches(ctx, batches, scale, false)
	if err != nil {
		return lg, err
	}
	for _, res := range results {
		lg.LossSum += res.Loss
		lg.NLLSum += res.NLL
		lg.NTokens += res.NTokens
		lg.NSentences += res.NSentences
	}
	lg.SampleSize = lg.NTokens
	pre := gradFactor(lg.SampleSize, scale)
	lg.perToken()
	// A backend that folds the multiply, the norm, the clipping and the skip of a
	// non-finite update into the optimizer (the GPU) gets the update queued before the
	// norm is read, with the same bits. A NaN loss stops the run before any update, so
	// that case keeps the separate operations.
	co, fused := net.Backend().(kernels.ClippedOptimizer)
	fused = fused && !math.IsNaN(lg.LossSum)
	if fused {
		lg.GNorm = s.Opt.stepClipped(co, net, lg.LR, pre, s.Cfg.ClipNorm)
	} else {
		if pre != 1 {
			scaleGrads(net, pre)
		}
		lg.GNorm = GradNorm(net, s.Cfg.ClipNorm)
	}
	if s.Scaler != nil {
		overflow := math.IsNaN(lg.GNorm) || math.IsInf(lg.GNorm, 0)
		s.Scaler.Update(overflow)
		lg.LossScale = s.Scaler.Scale()
		if overflow {
			if s.Scaler.AtMinimum() {
				return lg, &MinLossScaleError{Min: s.Scaler.Cfg.MinScale}
			}
			if s.Log != nil {
				fmt.Fprintf(s.Log, "| WARNING: overflow detected, setting loss scale to: %s\n", s.Scaler)
			}
			net.ZeroGrad()
			lg.Overflow = true
			return lg, nil
		}
	}
	if math.IsNaN(lg.GNorm) || math.IsInf(lg.GNorm, 0) || math.IsNaN(lg.LossSum) {
		return lg, fmt.Errorf("%w at update %d: loss %g, gradient norm %g", ErrDiverged, s.NumUpdates+1, lg.Loss, lg.GNorm)
	}
	lg.Clipped = s.Cfg.ClipNorm > 0 && lg.GNorm > s.Cfg.ClipNorm
	if !fused {
		s.Opt.Step(net, lg.LR)
	}
	s.NumUpdates++
	s.Sched.StepUpdate(s.NumUpdates)
	return lg, nil
}

// runBatches zeroes the gradients and runs forward and backward of every sub-batch of an
// update, the loss gradient times scale. fairseq reseeds torch with seed+num_updates
// before every update, so the masks depend on the update index alone; ours are drawn
// from a PCG stream the same way (the values cannot equal torch's). With deferLoss the
// results carry ReadLoss instead of Loss and NLL (model.StepOptions.DeferLoss).
func (s *Stepper) runBatches(ctx context.Context, batches []*model.TrainBatch, scale float64, deferLoss bool) ([]model.StepResult, error) {
	s.Net.ZeroGrad()
	rng := rand.New(rand.NewPCG(s.Cfg.Seed, uint64(s.NumUpdates)))
	results := make([]model.StepResult, 0, len(batches))
	for _, b := range batches {
		res, err := s.Net.Step(ctx, b, model.StepOptions{
			Dropout: s.Cfg.Dropout, AttentionDropout: s.Cfg.AttentionDropout, ActivationDropout: s.Cfg.ActivationDropout,
			RNG: rng, LabelSmoothing: s.Cfg.LabelSmoothing, Train: true, Backward: true, GradScale: float32(scale),
			DeferLoss: deferLoss,
		})
		if err != nil {
			return nil, err
		}
		results = append(results, res)
	}
	return results, nil
}

// gradFactor is the factor the gradients are multiplied by before the norm: the loss
// scale comes off in the same multiplication as the 1/sample-size normalisation, as
// FP16Optimizer's multiply_grads does. With a power-of-two scale both factors are
// exact, so the unscaled gradients equal an unscaled run's bits.
func gradFactor(sampleSize int, scale float64) float32 {
	pre := float32(1)
	if sampleSize > 0 || scale != 1 {
		inv := 1 / scale
		if sampleSize > 0 {
			inv = 1 / float64(sampleSize) / scale
		}
		pre = float32(inv)
	}
	return pre
}

// perToken sets Loss and NLL, in bits per target token, from the sums.
func (lg *StepLog) perToken() {
	if lg.SampleSize > 0 {
		lg.Loss = lg.LossSum / float64(lg.SampleSize) / math.Ln2
	}
	if lg.NTokens > 0 {
		lg.NLL = lg.NLLSum / float64(lg.NTokens) / math.Ln2
	}
}

// Pipelined says whether Queue returns before the update's loss and gradient norm are
// read, so that the caller can queue the next update first and the device does not
// wait for the host between updates. That needs a backend that folds the clipping into
// the optimizer (kernels.ClippedOptimizer) and reads results after later work was
// queued (kernels.DeferredReader: the GPU backend, graphed steps included), and no loss scaler
// (fp16's scaler decides the next update's scale from this one's norm).
func (s *Stepper) Pipelined() bool {
	be := s.Net.Backend()
	_, fused := be.(kernels.ClippedOptimizer)
	dr, ok := be.(kernels.DeferredReader)
	return fused && ok && s.Scaler == nil && !s.NoPipeline && dr.DeferredReads()
}

// Pending is an update queued by Queue; Wait reads its results.
type Pending struct {
	lg     StepLog
	update int // 1-based, for the divergence error
	losses []func() (float64, float64)
	norm   func() float64
	clip   float64
	done   bool
	err    error
}

// Queue starts one update over the sub-batches, as Step, and returns before its results
// are read where Pipelined holds (otherwise it runs Step and the Pending holds its
// result). NumUpdates and the schedule advance at once. Call Wait before reading the
// model's weights.
//
// Pipelined, an update is applied on the device unless its gradient norm is not finite
// (the optimizer skips it there, as Step does), and the check Step makes before
// queueing the update (a NaN loss) comes at Wait: a NaN loss with finite gradients is
// applied before Wait reports the divergence. Either way Wait returns ErrDiverged and
// the run must stop; the optimizer's step count took the update as done.
func (s *Stepper) Queue(ctx context.Context, batches []*model.TrainBatch) (*Pending, error) {
	if !s.Pipelined() {
		lg, err := s.Step(ctx, batches)
		return &Pending{lg: lg, err: err, done: true}, err
	}
	p := &Pending{lg: StepLog{LR: s.Sched.LR()}, update: s.NumUpdates + 1, clip: s.Cfg.ClipNorm}
	net := s.Net
	results, err := s.runBatches(ctx, batches, 1, true)
	if err != nil {
		return nil, err
	}
	for _, res := range results {
		p.losses = append(p.losses, res.ReadLoss)
		p.lg.NTokens += res.NTokens
		p.lg.NSentences += res.NSentences
	}
	p.lg.SampleSize = p.lg.NTokens
	co := net.Backend().(kernels.ClippedOptimizer)
	p.norm = s.Opt.queueClipped(co, net, p.lg.LR, gradFactor(p.lg.SampleSize, 1), s.Cfg.ClipNorm)
	s.NumUpdates++
	s.Sched.StepUpdate(s.NumUpdates)
	return p, nil
}

// Wait reads the update's loss and gradient norm (waiting for the device to finish
// that update only) and returns its log, or ErrDiverged.
func (p *Pending) Wait() (StepLog, error) {
	if p.done {
		return p.lg, p.err
	}
	p.done = true
	lg := &p.lg
	for _, read := range p.losses {
		l, n := read()
		lg.LossSum += l
		lg.NLLSum += n
	}
	lg.perToken()
	lg.GNorm = p.norm()
	if math.IsNaN(lg.GNorm) || math.IsInf(lg.GNorm, 0) || math.IsNaN(lg.LossSum) {
		p.err = fmt.Errorf("%w at update %d: loss %g, gradient norm %g", ErrDiverged, p.update, lg.Loss, lg.GNorm)
		return *lg, p.err
	}
	lg.Clipped = p.clip > 0 && lg.GNorm > p.clip
	return *lg, nil
}

// scaleGrads multiplies every gradient by c: one launch on a MultiTensor backend, the
// same products as Scale.
func scaleGrads(net *model.TrainNet, c float32) {
	if mt, ok := net.Backend().(kernels.MultiTensor); ok {
		gs := make([]kernels.Buffer, 0, len(net.Params()))
		for _, p := range net.Params() {
			gs = append(gs, p.G)
		}
		mt.ScaleAll(gs, c)
		return
	}
	for _, p := range net.Params() {
		net.Backend().Scale(p.G, c)
	}
}

// Validate returns the summed loss (nats) and token count over batches, without
// dropout or gradients.
func Validate(ctx context.Context, net *model.TrainNet, batches []*model.TrainBatch, eps float64) (loss, nll float64, ntokens int, err error) {
	for _, b := range batches {
		res, err := net.Step(ctx, b, model.StepOptions{LabelSmoothing: eps})
		if err != nil {
			return 0, 0, 0, err
		}
		loss += res.Loss
		nll += res.NLL
		ntokens += res.NTokens
	}
	return loss, nll, ntokens, nil
}
