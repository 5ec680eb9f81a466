package train

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"

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
}

// ErrDiverged reports a non-finite loss or gradient norm.
var ErrDiverged = fmt.Errorf("training diverged")

// Step runs one update over the sub-batches (update-freq = len(batches)).
func (s *Stepper) Step(ctx context.Context, batches []*model.TrainBatch) (StepLog, error) {
	lg := StepLog{LR: s.Sched.LR()}
	net := s.Net
	net.ZeroGrad()
	// fairseq reseeds torch with seed+num_updates before every update, so the masks
	// depend on the update index alone; ours are drawn from a PCG stream the same way
	// (the values cannot equal torch's).
	rng := rand.New(rand.NewPCG(s.Cfg.Seed, uint64(s.NumUpdates)))
	for _, b := range batches {
		res, err := net.Step(ctx, b, model.StepOptions{
			Dropout: s.Cfg.Dropout, AttentionDropout: s.Cfg.AttentionDropout, ActivationDropout: s.Cfg.ActivationDropout,
			RNG: rng, LabelSmoothing: s.Cfg.LabelSmoothing, Train: true, Backward: true,
		})
		if err != nil {
			return lg, err
		}
		lg.LossSum += res.Loss
		lg.NLLSum += res.NLL
		lg.NTokens += res.NTokens
		lg.NSentences += res.NSentences
	}
	lg.SampleSize = lg.NTokens
	if lg.SampleSize > 0 {
		c := float32(1 / float64(lg.SampleSize))
		for _, p := range net.Params() {
			net.Backend().Scale(p.G, c)
		}
		lg.Loss = lg.LossSum / float64(lg.SampleSize) / math.Ln2
	}
	if lg.NTokens > 0 {
		lg.NLL = lg.NLLSum / float64(lg.NTokens) / math.Ln2
	}
	lg.GNorm = GradNorm(net, s.Cfg.ClipNorm)
	if math.IsNaN(lg.GNorm) || math.IsInf(lg.GNorm, 0) || math.IsNaN(lg.LossSum) {
		return lg, fmt.Errorf("%w at update %d: loss %g, gradient norm %g", ErrDiverged, s.NumUpdates+1, lg.Loss, lg.GNorm)
	}
	lg.Clipped = s.Cfg.ClipNorm > 0 && lg.GNorm > s.Cfg.ClipNorm
	s.Opt.Step(net, lg.LR)
	s.NumUpdates++
	s.Sched.StepUpdate(s.NumUpdates)
	return lg, nil
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
