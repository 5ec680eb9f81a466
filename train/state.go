package train

import (
	"fmt"
	"math"

	"github.com/xform-dev/xform/model"
	"github.com/xform-dev/xform/tensor"
)

// Snapshot is what one checkpoint holds: the weights, where training stands, and the
// optimizer's state. Run hands one to RunConfig.Save; the caller writes it in one file
// (one atomic write), so weights, counters and moments can never disagree on disk.
type Snapshot struct {
	Model    *model.Model
	Progress Progress
	Optim    OptimState
	// LR is the rate the next update uses; ValLoss is the validation loss in bits that
	// this save follows (NaN when there was no validation).
	LR, ValLoss float64
}

// OptimState is the optimizer's resumable state: its hyper-parameters, the step count and
// both Adam moments of every parameter (TrainNet.Params order, canonical names).
type OptimState struct {
	Name                  string // radam or adam
	Beta1, Beta2, Eps, WD float64
	Steps                 int
	Params                []ParamMoments
}

// ParamMoments are one parameter's first and second moments.
type ParamMoments struct {
	Name             string
	Shape            []int
	ExpAvg, ExpAvgSq []float32
}

// MeterSums are the deterministic sums behind fairseq's training meters (the timing ones
// restart on resume, as fairseq resets its TimeMeters). Saving them lets a run resumed in
// the middle of a log interval print the same averages as an uninterrupted one.
type MeterSums struct {
	Loss    float64 `json:"loss"`
	NLL     float64 `json:"nll_loss"`
	Sample  int     `json:"sample_size"`
	Tokens  int     `json:"ntokens"`
	Sents   int     `json:"nsentences"`
	Updates int     `json:"updates"`
	GNorm   float64 `json:"gnorm"`
	Clip    float64 `json:"clip"`
}

// State copies the optimizer's state off the backend.
func (o *Optimizer) State(net *model.TrainNet) OptimState {
	st := OptimState{Name: o.cfg.Name, Beta1: o.cfg.Beta1, Beta2: o.cfg.Beta2, Eps: o.cfg.Eps, WD: o.cfg.WeightDecay, Steps: o.steps}
	for i, p := range net.Params() {
		m := make([]float32, p.P.Len())
		v := make([]float32, p.P.Len())
		o.be.Download(m, o.m[i])
		o.be.Download(v, o.v[i])
		st.Params = append(st.Params, ParamMoments{Name: p.Name, Shape: append([]int(nil), p.Shape...), ExpAvg: m, ExpAvgSq: v})
	}
	return st
}

// Restore loads st's step count and moments. Every parameter of net must be in st with
// its shape; extra entries are an error too, so a state saved for another model is
// never half-applied.
func (o *Optimizer) Restore(net *model.TrainNet, st OptimState) error {
	byName := make(map[string]ParamMoments, len(st.Params))
	for _, p := range st.Params {
		byName[p.Name] = p
	}
	if len(byName) != len(net.Params()) {
		return fmt.Errorf("optimizer state has %d parameters, the model %d", len(byName), len(net.Params()))
	}
	for _, p := range net.Params() {
		pm, ok := byName[p.Name]
		if !ok {
			return fmt.Errorf("optimizer state has no moments for %s", p.Name)
		}
		if !tensor.ShapeEqual(pm.Shape, p.Shape) || len(pm.ExpAvg) != p.P.Len() || len(pm.ExpAvgSq) != p.P.Len() {
			return fmt.Errorf("optimizer state of %s has shape %v, the parameter %v", p.Name, pm.Shape, p.Shape)
		}
	}
	for i, p := range net.Params() {
		pm := byName[p.Name]
		// The backend owns the moment buffers: write each through a temporary upload.
		for _, x := range []struct {
			dst []float32
			buf int
		}{{pm.ExpAvg, 0}, {pm.ExpAvgSq, 1}} {
			dst := o.m[i]
			if x.buf == 1 {
				dst = o.v[i]
			}
			o.be.Fill(dst, 0)
			o.be.AddTo(dst, o.be.Upload(x.dst))
		}
	}
	o.steps = st.Steps
	return nil
}

// Snapshot captures the stepper's current state with prog (Run fills the meters).
func (s *Stepper) Snapshot(prog Progress, valLoss float64) *Snapshot {
	prog.NumUpdates = s.NumUpdates
	prog.OptimizerSteps = s.Opt.Steps()
	prog.NumParams = len(s.Net.Params())
	prog.LossScaler = nil
	if s.Scaler != nil {
		st := s.Scaler.State()
		prog.LossScaler = &st
	}
	return &Snapshot{Model: s.Net.Model(), Progress: prog, Optim: s.Opt.State(s.Net), LR: s.Sched.LR(), ValLoss: valLoss}
}

// Resume restores the update counter, the learning rate that follows from it (the
// schedule is stepped as fairseq does after every update; Run steps the per-epoch part
// once it knows where in the epoch prog stands) and, when st is not nil, the optimizer's
// moments and step count. Dropout masks need nothing: they are a pure function of
// (seed, update index). A loss scaler takes prog.LossScaler when there is one (a run
// without loss scaling saved none: the scaler keeps its initial scale, as fairseq does
// when the optimizer state has no 'loss_scale'); its flags stay this run's.
func (s *Stepper) Resume(prog Progress, st *OptimState) error {
	if st != nil {
		if st.Name != "" && st.Name != s.Opt.cfg.Name {
			return fmt.Errorf("the checkpoint's optimizer is %s, this run's %s (use --reset-optimizer to start a fresh one)", st.Name, s.Opt.cfg.Name)
		}
		if err := s.Opt.Restore(s.Net, *st); err != nil {
			return err
		}
	}
	if s.Scaler != nil && prog.LossScaler != nil {
		if err := s.Scaler.SetState(*prog.LossScaler); err != nil {
			return err
		}
	}
	s.NumUpdates = prog.NumUpdates
	s.Sched.StepUpdate(prog.NumUpdates)
	if math.IsNaN(s.Sched.LR()) {
		return fmt.Errorf("learning rate is NaN after resuming at update %d", prog.NumUpdates)
	}
	return nil
}
