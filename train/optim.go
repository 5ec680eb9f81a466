package train

import (
	"fmt"
	"math"

	"github.com/xform-dev/xform/kernels"
	"github.com/xform-dev/xform/model"
)

// OptimConfig selects the optimizer and its hyper-parameters (fairseq flag names).
type OptimConfig struct {
	Name         string  // --optimizer: radam (radam_fairseq, Clinic) or adam (fairseq's AdamW-style adam)
	Beta1, Beta2 float64 // --adam-betas
	Eps          float64 // --adam-eps
	WeightDecay  float64 // --weight-decay, decoupled (p -= wd·lr·p) in both
}

// Optimizer is Adam or RAdam over every parameter of a TrainNet, ω included.
type Optimizer struct {
	cfg   OptimConfig
	be    kernels.Trainer
	m, v  []kernels.Buffer
	steps int // per-parameter step count (every parameter gets a gradient every update)
}

// NewOptimizer allocates zeroed moments for every parameter of net.
func NewOptimizer(net *model.TrainNet, cfg OptimConfig) (*Optimizer, error) {
	switch cfg.Name {
	case "radam", "adam":
	default:
		return nil, fmt.Errorf("optimizer: %q is not one of radam, adam", cfg.Name)
	}
	if cfg.Beta1 < 0 || cfg.Beta1 >= 1 || cfg.Beta2 < 0 || cfg.Beta2 >= 1 {
		return nil, fmt.Errorf("optimizer: betas (%g, %g) must lie in [0, 1)", cfg.Beta1, cfg.Beta2)
	}
	o := &Optimizer{cfg: cfg, be: net.Backend()}
	for _, p := range net.Params() {
		o.m = append(o.m, o.be.Alloc(p.P.Len()))
		o.v = append(o.v, o.be.Alloc(p.P.Len()))
	}
	return o, nil
}

// Steps returns how many updates the optimizer has applied.
func (o *Optimizer) Steps() int { return o.steps }

// Moments returns the first and second moment buffers of parameter i (Params order).
func (o *Optimizer) Moments(i int) (m, v kernels.Buffer) { return o.m[i], o.v[i] }

// SetState restores the step count (the moments are written through Moments).
func (o *Optimizer) SetState(steps int) { o.steps = steps }

// stepScalars computes one update's scalars in float64, in the reference's operation
// order (RADAM:95-124 and fairseq's optim/adam.py).
func (o *Optimizer) stepScalars(t int, lr float64) kernels.OptimStep {
	b1, b2 := o.cfg.Beta1, o.cfg.Beta2
	s := kernels.OptimStep{Beta1: float32(b1), Beta2: float32(b2), OneMinusBeta1: float32(1 - b1), OneMinusBeta2: float32(1 - b2),
		Eps: float32(o.cfg.Eps)}
	if o.cfg.WeightDecay != 0 {
		s.Decay = float32(-o.cfg.WeightDecay * lr)
	}
	tf := float64(t)
	switch o.cfg.Name {
	case "radam":
		b2t := math.Pow(b2, tf)
		smaMax := 2/(1-b2) - 1
		sma := smaMax - 2*tf*b2t/(1-b2t)
		if sma >= 5 {
			s.Update = true
			s.StepSize = float32(lr * math.Sqrt((1-b2t)*(sma-4)/(smaMax-4)*(sma-2)*smaMax/sma/(smaMax-2)) / (1 - math.Pow(b1, tf)))
		}
	case "adam":
		s.Update = true
		s.StepSize = float32(lr * math.Sqrt(1-math.Pow(b2, tf)) / (1 - math.Pow(b1, tf)))
	}
	return s
}

// Step applies one update with learning rate lr to every parameter of net, using its
// gradients as they are (normalised and clipped by the caller).
func (o *Optimizer) Step(net *model.TrainNet, lr float64) {
	o.steps++
	s := o.stepScalars(o.steps, lr)
	if mt, ok := o.be.(kernels.MultiTensor); ok {
		// Through the net, which knows where its 16-bit weight copies are and whether
		// this update wrote them.
		net.AdamStepAll(mt, o.m, o.v, s)
		return
	}
	for i, p := range net.Params() {
		o.be.AdamStep(p.P, p.G, o.m[i], o.v[i], s)
	}
}

// stepClipped is the update of Stepper.Step on a kernels.ClippedOptimizer backend: the
// gradients multiplied by pre, their norm, the clipping to maxNorm and the step with
// learning rate lr, in one backend operation queued before the norm is read. It returns
// the norm (of pre·g, before clipping, as GradNorm). When the norm is not finite the
// backend changed nothing, and the step is not counted. The net runs the update
// (model.TrainNet.AdamStepClipped), so that it knows whether its 16-bit weight copies
// were written with it.
func (o *Optimizer) stepClipped(co kernels.ClippedOptimizer, net *model.TrainNet, lr float64, pre float32, maxNorm float64) float64 {
	s := o.stepScalars(o.steps+1, lr)
	norm := net.AdamStepClipped(co, o.m, o.v, pre, maxNorm, s)()
	if !math.IsNaN(norm) && !math.IsInf(norm, 0) {
		o.steps++
	}
	return norm
}

// queueClipped is stepClipped returning the norm's reader instead of the norm: the
// update is queued and counted at once (Stepper.Queue; an update the device skips for
// a non-finite norm ends the run, so the count matters no more).
//
// Without clipping the norm decides nothing before the update here (its skip ends the
// run anyway), so the device may form it in the update's pass (OptimStep.NormAfter).
func (o *Optimizer) queueClipped(co kernels.ClippedOptimizer, net *model.TrainNet, lr float64, pre float32, maxNorm float64) func() float64 {
	o.steps++
	s := o.stepScalars(o.steps, lr)
	s.NormAfter = maxNorm <= 0
	return net.AdamStepClipped(co, o.m, o.v, pre, maxNorm, s)
}

// GradNorm returns the L2 norm of all gradients; when maxNorm > 0 and the norm exceeds
// it, the gradients are scaled by maxNorm/(norm+1e-6) as torch's clip_grad_norm_ does.
// The norm before clipping is returned either way (fairseq logs it as gnorm).
func GradNorm(net *model.TrainNet, maxNorm float64) float64 {
	be := net.Backend()
	// A backend that reduces many buffers at once (the GPU) does the whole norm in one
	// reduction and one host read, and the clipping in one launch.
	mt, _ := be.(kernels.MultiTensor)
	var grads []kernels.Buffer
	if mt != nil {
		for _, p := range net.Params() {
			grads = append(grads, p.G)
		}
	}
	var ss float64
	if mt != nil {
		ss = mt.SumSquaresAll(grads)
	} else {
		for _, p := range net.Params() {
			ss += be.SumSquares(p.G)
		}
	}
	norm := math.Sqrt(ss)
	if maxNorm > 0 && norm > maxNorm {
		c := float32(maxNorm / (norm + 1e-6))
		if mt != nil {
			mt.ScaleAll(grads, c)
			return norm
		}
		for _, p := range net.Params() {
			be.Scale(p.G, c)
		}
	}
	return norm
}
