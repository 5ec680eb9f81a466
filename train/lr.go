package train

import (
	"fmt"
	"math"
)

// Schedule is a fairseq 0.8 learning-rate scheduler. Like fairseq's, it is stepped
// after every update with the number of completed updates and at every epoch end;
// LR is the rate the next update uses.
type Schedule interface {
	LR() float64
	StepUpdate(numUpdates int)
	StepEpoch(epoch int)
}

// ScheduleConfig holds the flags of every scheduler (fairseq names in comments).
type ScheduleConfig struct {
	Name          string    // --lr-scheduler: inverse_sqrt, fixed, linear
	LR            []float64 // --lr (fixed accepts one per epoch)
	WarmupUpdates int       // --warmup-updates
	WarmupInitLR  float64   // --warmup-init-lr (<0: scheduler default)
	MinLR         float64   // --min-lr (linear decays toward it)
	MaxUpdate     int       // --max-update (linear)
	ForceAnneal   int       // --force-anneal (fixed; 0 = never)
	LRShrink      float64   // --lr-shrink (fixed)
}

// NewSchedule builds the scheduler cfg names, with fairseq's validation.
func NewSchedule(cfg ScheduleConfig) (Schedule, error) {
	if len(cfg.LR) == 0 {
		return nil, fmt.Errorf("lr scheduler: no --lr")
	}
	switch cfg.Name {
	case "inverse_sqrt":
		if len(cfg.LR) > 1 {
			return nil, fmt.Errorf("lr scheduler: inverse_sqrt takes one --lr (use fixed for a list)")
		}
		if cfg.WarmupUpdates <= 0 {
			return nil, fmt.Errorf("lr scheduler: inverse_sqrt needs --warmup-updates > 0 (fairseq divides by it)")
		}
		s := &inverseSqrt{cfg: cfg, end: cfg.LR[0]}
		if s.cfg.WarmupInitLR < 0 {
			s.cfg.WarmupInitLR = 0
		}
		s.step = (s.end - s.cfg.WarmupInitLR) / float64(cfg.WarmupUpdates)
		s.decay = s.end * math.Sqrt(float64(cfg.WarmupUpdates))
		s.lr = s.cfg.WarmupInitLR
		return s, nil
	case "linear":
		if len(cfg.LR) > 1 {
			return nil, fmt.Errorf("lr scheduler: linear takes one --lr")
		}
		if cfg.WarmupUpdates <= 0 {
			return nil, fmt.Errorf("lr scheduler: linear needs --warmup-updates > 0")
		}
		if cfg.MaxUpdate <= cfg.WarmupUpdates {
			return nil, fmt.Errorf("lr scheduler: linear needs --max-update (%d) > --warmup-updates (%d)", cfg.MaxUpdate, cfg.WarmupUpdates)
		}
		s := &linear{cfg: cfg}
		if s.cfg.WarmupInitLR < 0 {
			s.cfg.WarmupInitLR = cfg.LR[0]
		}
		s.step = (cfg.LR[0] - s.cfg.WarmupInitLR) / float64(cfg.WarmupUpdates)
		s.lr = s.cfg.WarmupInitLR
		return s, nil
	case "fixed":
		s := &fixed{cfg: cfg, factor: 1}
		if cfg.WarmupUpdates > 0 {
			s.factor = 1 / float64(cfg.WarmupUpdates)
		}
		s.base = s.next(0)
		return s, nil
	}
	return nil, fmt.Errorf("lr scheduler: %q is not one of inverse_sqrt, fixed, linear", cfg.Name)
}

type inverseSqrt struct {
	cfg              ScheduleConfig
	end, step, decay float64
	lr               float64
}

func (s *inverseSqrt) LR() float64   { return s.lr }
func (s *inverseSqrt) StepEpoch(int) {}
func (s *inverseSqrt) StepUpdate(n int) {
	if n < s.cfg.WarmupUpdates {
		s.lr = s.cfg.WarmupInitLR + float64(n)*s.step
	} else {
		s.lr = s.decay * math.Pow(float64(n), -0.5)
	}
}

// linear is radam_fairseq's linear schedule. Note fairseq's --min-lr default of −1:
// without an explicit --min-lr the rate decays toward −1 and turns negative, as the
// reference's does (clinic-spec §4.6).
type linear struct {
	cfg      ScheduleConfig
	step, lr float64
}

func (s *linear) LR() float64   { return s.lr }
func (s *linear) StepEpoch(int) {}
func (s *linear) StepUpdate(n int) {
	w := s.cfg.WarmupUpdates
	if n < w {
		s.lr = s.cfg.WarmupInitLR + float64(n)*s.step
		return
	}
	end := s.cfg.LR[0] - s.cfg.MinLR
	s.lr = end*(1-float64(n-w)/float64(s.cfg.MaxUpdate-w)) + s.cfg.MinLR
}

// fixed is fairseq's fixed schedule: one rate per epoch (the last repeats), optional
// annealing from --force-anneal, linear warmup over the first updates.
type fixed struct {
	cfg          ScheduleConfig
	factor, base float64
}

func (s *fixed) next(epoch int) float64 {
	lrs := s.cfg.LR
	if s.cfg.ForceAnneal <= 0 || epoch < s.cfg.ForceAnneal {
		return lrs[min(epoch, len(lrs)-1)]
	}
	return lrs[len(lrs)-1] * math.Pow(s.cfg.LRShrink, float64(epoch+1-s.cfg.ForceAnneal))
}

func (s *fixed) LR() float64 { return s.factor * s.base }
func (s *fixed) StepEpoch(epoch int) {
	s.base = s.next(epoch)
}
func (s *fixed) StepUpdate(n int) {
	if w := s.cfg.WarmupUpdates; w > 0 && n <= w {
		s.factor = float64(n) / float64(w)
	}
}
