package train

import (
	"fmt"
	"math"
	"strconv"

	"github.com/xform-dev/xform/internal/pyfmt"
)

// LossScaleConfig holds fairseq's --fp16 loss-scaling flags.
type LossScaleConfig struct {
	InitScale float64 // --fp16-init-scale (fairseq: 128)
	// Window is --fp16-scale-window: overflow-free updates before the scale doubles.
	// fairseq's default is 2**14 / world size / update_freq[0], a true division, so it
	// may be fractional; the doubling test is then a float modulo, as there (see Update).
	Window    float64
	Tolerance float64 // --fp16-scale-tolerance (0: every overflow halves the scale)
	Threshold float64 // --threshold-loss-scale (0: none; fairseq's max(scale, None-or-x))
	MinScale  float64 // --min-loss-scale: training stops once an overflow leaves the scale at or below it
}

// DefaultScaleWindow is fairseq's --fp16-scale-window when none is given, for one
// worker accumulating updateFreq batches per update.
func DefaultScaleWindow(updateFreq int) float64 { return math.Pow(2, 14) / float64(updateFreq) }

// LossScaler is the Clinic fork's DynamicLossScaler (fairseq 0.8, fp16_optimizer.py):
// the loss gradient is multiplied by Scale, an update whose gradient norm is not finite
// is an overflow and halves the scale (once overflows reach Tolerance of the updates
// since the last change), and Window overflow-free updates double it. The factor is 2,
// as fairseq's FP16Optimizer always builds it.
type LossScaler struct {
	Cfg   LossScaleConfig
	state ScalerState
}

// ScalerState is everything LossScaler.Update reads, so a resumed run scales exactly as
// the uninterrupted one. fairseq saves only the scale (optimizer state 'loss_scale') and
// restarts the counters; xform's checkpoints keep them all.
type ScalerState struct {
	Scale                 float64 `json:"scale"`
	Iter                  int     `json:"iter"`
	LastOverflowIter      int     `json:"last_overflow_iter"`
	LastRescaleIter       int     `json:"last_rescale_iter"`
	OverflowsSinceRescale int     `json:"overflows_since_rescale"`
	// PyInt says the scale is still the int argparse gave fairseq (it turns into a
	// Python float at its first change); only the warning's text depends on it ("128"
	// against "64.0").
	PyInt bool `json:"py_int,omitempty"`
}

// NewLossScaler returns a scaler at cfg.InitScale with fairseq's fresh counters.
func NewLossScaler(cfg LossScaleConfig) (*LossScaler, error) {
	if !(cfg.InitScale > 0) || math.IsInf(cfg.InitScale, 0) {
		return nil, fmt.Errorf("loss scale: initial scale %g must be positive", cfg.InitScale)
	}
	if !(cfg.Window > 0) || math.IsInf(cfg.Window, 0) {
		return nil, fmt.Errorf("loss scale: scale window %g must be positive", cfg.Window)
	}
	if cfg.Tolerance < 0 || math.IsNaN(cfg.Tolerance) {
		return nil, fmt.Errorf("loss scale: tolerance %g must not be negative", cfg.Tolerance)
	}
	s := &LossScaler{Cfg: cfg}
	s.state = FreshScalerState(cfg.InitScale)
	s.state.PyInt = cfg.InitScale == math.Trunc(cfg.InitScale)
	return s, nil
}

// FreshScalerState is the state fairseq starts from, at scale: what a resume from a
// fairseq checkpoint (which keeps only the scale) continues with.
func FreshScalerState(scale float64) ScalerState {
	return ScalerState{Scale: scale, LastOverflowIter: -1, LastRescaleIter: -1}
}

// Scale is the factor the next update's loss gradient is multiplied by.
func (s *LossScaler) Scale() float64 { return s.state.Scale }

// State returns a copy of the scaler's state.
func (s *LossScaler) State() ScalerState { return s.state }

// SetState restores a state saved by State (or FreshScalerState for a fairseq checkpoint).
func (s *LossScaler) SetState(st ScalerState) error {
	if !(st.Scale > 0) || math.IsInf(st.Scale, 0) {
		return fmt.Errorf("loss scale %g in the checkpoint is not a positive number", st.Scale)
	}
	s.state = st
	return nil
}

// Update records one update attempt, overflowed or not, and rescales as
// DynamicLossScaler.update_scale does. It returns whether the scale changed.
func (s *LossScaler) Update(overflow bool) bool {
	st, c := &s.state, s.Cfg
	before := st.Scale
	sinceRescale := st.Iter - st.LastRescaleIter
	if overflow {
		st.LastOverflowIter = st.Iter
		st.OverflowsSinceRescale++
		if float64(st.OverflowsSinceRescale)/float64(sinceRescale) >= c.Tolerance {
			st.Scale /= 2
			if c.Threshold > 0 {
				st.Scale = math.Max(st.Scale, c.Threshold)
			}
			st.PyInt = false
			st.LastRescaleIter = st.Iter
			st.OverflowsSinceRescale = 0
		}
	} else if math.Mod(float64(st.Iter-st.LastOverflowIter), c.Window) == 0 {
		st.Scale *= 2
		st.PyInt = false
		st.LastRescaleIter = st.Iter
	}
	st.Iter++
	return st.Scale != before
}

// AtMinimum reports the fork's stopping condition after an overflow.
func (s *LossScaler) AtMinimum() bool { return s.state.Scale <= s.Cfg.MinScale }

// String is the scale as the fork prints it (Python's str of an int or a float).
func (s *LossScaler) String() string {
	if s.state.PyInt && math.Abs(s.state.Scale) < 1<<53 {
		return strconv.FormatFloat(s.state.Scale, 'f', 0, 64)
	}
	return pyfmt.Float(s.state.Scale)
}

// MinLossScaleError is the fork's FloatingPointError: an overflow left the loss scale
// at or below --min-loss-scale.
type MinLossScaleError struct{ Min float64 }

func (e *MinLossScaleError) Error() string {
	return fmt.Sprintf("FloatingPointError: Minimum loss scale reached (%s). Your loss is probably exploding. "+
		"Try lowering the learning rate, using gradient clipping or increasing the batch size.", pyfmt.Float(e.Min))
}
