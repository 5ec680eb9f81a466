package train

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/xform-dev/xform/generate"
	"github.com/xform-dev/xform/kernels"
	"github.com/xform-dev/xform/model"
)

// RunConfig is fairseq-train's main loop configuration (flag names in comments).
type RunConfig struct {
	Batch       BatchConfig
	UpdateFreq  []int // --update-freq (per epoch, the last repeats)
	MaxUpdate   int   // --max-update (0 = unlimited)
	MaxEpoch    int   // --max-epoch (0 = unlimited)
	MinLR       float64
	ValidSubset string // --valid-subset
	NoValidate  bool   // --disable-validation

	SaveDir             string // --save-dir
	NoSave              bool   // --no-save
	NoEpochCheckpoints  bool   // --no-epoch-checkpoints
	SaveIntervalUpdates int    // --save-interval-updates
	KeepLastEpochs      int    // --keep-last-epochs (0 = keep all)
	LogFormat           string // --log-format simple|json
	LogInterval         int    // --log-interval
	Log                 io.Writer
	// Save writes the model as a checkpoint at path (the fairseq/Clinic writer).
	Save func(path string, m *model.Model) error
}

// Progress is where training stands; it is saved beside every checkpoint.
type Progress struct {
	Epoch             int     `json:"epoch"` // last completed epoch when IterationsInEpoch is 0
	IterationsInEpoch int     `json:"iterations_in_epoch"`
	NumUpdates        int     `json:"num_updates"`
	OptimizerSteps    int     `json:"optimizer_steps"`
	BestLoss          float64 `json:"best_loss"`
	HaveBest          bool    `json:"have_best"`
	NumParams         int     `json:"num_params"`
}

// Data is a loaded data-bin: training and validation splits.
type Data struct {
	Train, Valid *generate.Split
}

// meters accumulates fairseq's training meters between resets.
type meters struct {
	loss, nll      float64 // weighted sums (bits·tokens)
	sample, tokens int
	sents, updates int
	gnorm, clip    float64
	start          time.Time
	trainWall      time.Duration
}

func (m *meters) reset() { *m = meters{start: time.Now()} }

func (m *meters) add(lg StepLog, dt time.Duration) {
	m.loss += lg.Loss * float64(lg.SampleSize)
	m.nll += lg.NLL * float64(lg.NTokens)
	m.sample += lg.SampleSize
	m.tokens += lg.NTokens
	m.sents += lg.NSentences
	m.updates++
	m.gnorm += lg.GNorm
	if lg.Clipped {
		m.clip++
	}
	m.trainWall += dt
}

// stats returns fairseq's ordered training stats.
func (m *meters) stats(numUpdates int, lr float64, wall time.Duration) [][2]string {
	div := func(a float64, b int) float64 {
		if b == 0 {
			return 0
		}
		return a / float64(b)
	}
	secs := time.Since(m.start).Seconds()
	nll := div(m.nll, m.tokens)
	return [][2]string{
		{"loss", fmt.Sprintf("%.3f", div(m.loss, m.sample))},
		{"nll_loss", fmt.Sprintf("%.3f", nll)},
		{"ppl", fmt.Sprintf("%.2f", math.Pow(2, nll))},
		{"wps", fmt.Sprintf("%.0f", float64(m.tokens)/math.Max(secs, 1e-9))},
		{"ups", fmt.Sprintf("%.0f", float64(m.updates)/math.Max(secs, 1e-9))},
		{"wpb", fmt.Sprintf("%.3f", div(float64(m.tokens), m.updates))},
		{"bsz", fmt.Sprintf("%.3f", div(float64(m.sents), m.updates))},
		{"num_updates", fmt.Sprint(numUpdates)},
		{"lr", pyG(lr)},
		{"gnorm", fmt.Sprintf("%.3f", div(m.gnorm, m.updates))},
		{"clip", fmt.Sprintf("%.3f", div(m.clip, m.updates))},
		{"oom", "0.000"},
		{"wall", fmt.Sprintf("%.0f", wall.Seconds())},
		{"train_wall", fmt.Sprintf("%.0f", m.trainWall.Seconds())},
	}
}

// pyG formats like Python's '{:g}'.
func pyG(v float64) string {
	s := fmt.Sprintf("%.6g", v)
	if i := strings.Index(s, "e"); i >= 0 && len(s) > i+2 && (s[i+1] == '-' || s[i+1] == '+') && len(s[i+2:]) == 1 {
		s = s[:i+2] + "0" + s[i+2:] // Python writes two exponent digits
	}
	return s
}

func writeStats(w io.Writer, format, prefix string, st [][2]string, mid bool) {
	if format == "json" {
		obj := map[string]any{}
		for _, kv := range st {
			obj[kv[0]] = kv[1]
		}
		b, _ := json.Marshal(obj)
		fmt.Fprintf(w, "%s %s\n", prefix, b)
		return
	}
	var parts []string
	for _, kv := range st {
		if mid {
			parts = append(parts, kv[0]+"="+kv[1])
		} else {
			parts = append(parts, kv[0]+" "+kv[1])
		}
	}
	if mid {
		fmt.Fprintf(w, "%s %s\n", prefix, strings.Join(parts, ", "))
		return
	}
	fmt.Fprintf(w, "%s | %s\n", prefix, strings.Join(parts, " | "))
}

// Run trains s.Net on d until --max-update or --max-epoch, validating after each epoch
// and saving checkpoints (checkpoint_last.pt, checkpoint_best.pt, checkpointN.pt,
// checkpoint_E_U.pt) as fairseq 0.8's train.py does. prog says where to resume.
func Run(ctx context.Context, s *Stepper, d *Data, cfg RunConfig, prog Progress) (Progress, error) {
	log := cfg.Log
	if log == nil {
		log = io.Discard
	}
	frozen, dropped, err := Batches(d.Train, cfg.Batch)
	if err != nil {
		return prog, fmt.Errorf("train split: %w", err)
	}
	if len(dropped) > 0 {
		fmt.Fprintf(log, "| WARNING: %d samples have invalid sizes and will be skipped, max_positions=(%d, %d), first few sample ids=%v\n",
			len(dropped), cfg.Batch.MaxSourcePos, cfg.Batch.MaxTargetPos, dropped[:min(10, len(dropped))])
	}
	var valid []*model.TrainBatch
	if !cfg.NoValidate {
		vcfg := cfg.Batch
		vcfg.SkipInvalidAll = false
		vb, _, err := Batches(d.Valid, vcfg)
		if err != nil {
			return prog, fmt.Errorf("%s split: %w", cfg.ValidSubset, err)
		}
		for _, b := range vb {
			tb, _ := Collate(b, d.Valid)
			valid = append(valid, tb)
		}
	}
	start := time.Now()
	var m meters
	m.reset()
	epoch := prog.Epoch + 1
	skip := 0
	if prog.IterationsInEpoch > 0 { // resume mid-epoch
		epoch, skip = prog.Epoch, prog.IterationsInEpoch
	}
	maxUpdate := cfg.MaxUpdate
	if maxUpdate <= 0 {
		maxUpdate = math.MaxInt
	}
	for (cfg.MaxEpoch <= 0 || epoch <= cfg.MaxEpoch) && s.NumUpdates < maxUpdate && s.Sched.LR() > cfg.MinLR {
		uf := 1
		if len(cfg.UpdateFreq) > 0 {
			uf = cfg.UpdateFreq[min(epoch-1, len(cfg.UpdateFreq)-1)]
		}
		order := EpochOrder(frozen, cfg.Batch.Seed, epoch)
		groups := (len(order) + uf - 1) / uf
		m.reset()
		for i := skip; i < groups; i++ {
			if err := ctx.Err(); err != nil {
				return prog, err
			}
			if i > 1 && cfg.LogInterval > 0 && i%cfg.LogInterval == 1 {
				m.reset() // the fork resets every meter here (clinic-spec §4.2)
			}
			var group []*model.TrainBatch
			for _, b := range order[i*uf : min((i+1)*uf, len(order))] {
				tb, _ := Collate(b, d.Train)
				group = append(group, tb)
			}
			t0 := time.Now()
			lg, err := s.Step(ctx, group)
			if err != nil {
				return prog, fmt.Errorf("epoch %d, update %d: %w", epoch, s.NumUpdates+1, err)
			}
			m.add(lg, time.Since(t0))
			prog = Progress{Epoch: epoch, IterationsInEpoch: i + 1, NumUpdates: s.NumUpdates, OptimizerSteps: s.Opt.Steps(),
				BestLoss: prog.BestLoss, HaveBest: prog.HaveBest}
			if cfg.LogInterval > 0 && (i+1)%cfg.LogInterval == 0 {
				writeStats(log, cfg.LogFormat, fmt.Sprintf("| epoch %03d: %6d / %d", epoch, i+1, groups),
					m.stats(s.NumUpdates, s.Sched.LR(), time.Since(start)), true)
			}
			if cfg.SaveIntervalUpdates > 0 && s.NumUpdates%cfg.SaveIntervalUpdates == 0 && s.NumUpdates < maxUpdate {
				vl, err := validate(ctx, s, valid, cfg, epoch, &prog, log)
				if err != nil {
					return prog, err
				}
				if err := saveCheckpoints(s, cfg, &prog, vl, false, log); err != nil {
					return prog, err
				}
			}
			if s.NumUpdates >= maxUpdate {
				break
			}
		}
		skip = 0
		writeStats(log, cfg.LogFormat, fmt.Sprintf("| epoch %03d", epoch), m.stats(s.NumUpdates, s.Sched.LR(), time.Since(start)), false)
		prog.Epoch, prog.IterationsInEpoch = epoch, 0
		vl, err := validate(ctx, s, valid, cfg, epoch, &prog, log)
		if err != nil {
			return prog, err
		}
		s.Sched.StepEpoch(epoch)
		if err := saveCheckpoints(s, cfg, &prog, vl, true, log); err != nil {
			return prog, err
		}
		epoch++
	}
	fmt.Fprintf(log, "| done training in %.1f seconds\n", time.Since(start).Seconds())
	return prog, nil
}

// validate runs the valid split and logs fairseq's valid line; it returns the loss in
// bits (NaN when validation is off).
func validate(ctx context.Context, s *Stepper, valid []*model.TrainBatch, cfg RunConfig, epoch int, prog *Progress, log io.Writer) (float64, error) {
	if cfg.NoValidate {
		return math.NaN(), nil
	}
	loss, nll, nt, err := Validate(ctx, s.Net, valid, s.Cfg.LabelSmoothing)
	if err != nil {
		return 0, fmt.Errorf("validation: %w", err)
	}
	vl := loss / float64(nt) / math.Ln2
	vn := nll / float64(nt) / math.Ln2
	st := [][2]string{{"loss", fmt.Sprintf("%.3f", vl)}, {"nll_loss", fmt.Sprintf("%.3f", vn)},
		{"ppl", fmt.Sprintf("%.2f", math.Pow(2, vn))}, {"num_updates", fmt.Sprint(s.NumUpdates)}}
	if prog.HaveBest {
		st = append(st, [2]string{"best_loss", pyG(math.Min(prog.BestLoss, vl))})
	}
	writeStats(log, cfg.LogFormat, fmt.Sprintf("| epoch %03d | valid on '%s' subset", epoch, cfg.ValidSubset), st, false)
	return vl, nil
}

// saveCheckpoints writes the files fairseq's save_checkpoint writes, each with a
// progress sidecar (<name>.progress.json) and the optimizer moments (<name>.optim).
func saveCheckpoints(s *Stepper, cfg RunConfig, pp *Progress, valLoss float64, endOfEpoch bool, log io.Writer) error {
	isBest := false
	if !math.IsNaN(valLoss) && (!pp.HaveBest || valLoss < pp.BestLoss) {
		isBest = true
		pp.BestLoss, pp.HaveBest = valLoss, true
	}
	prog := *pp
	if cfg.NoSave || cfg.SaveDir == "" || cfg.Save == nil {
		return nil
	}
	var names []string
	if endOfEpoch && !cfg.NoEpochCheckpoints {
		names = append(names, fmt.Sprintf("checkpoint%d.pt", prog.Epoch))
	}
	if !endOfEpoch {
		names = append(names, fmt.Sprintf("checkpoint_%d_%d.pt", prog.Epoch, prog.NumUpdates))
	}
	if isBest {
		names = append(names, "checkpoint_best.pt")
	}
	names = append(names, "checkpoint_last.pt")
	if err := os.MkdirAll(cfg.SaveDir, 0o755); err != nil {
		return fmt.Errorf("save dir: %w", err)
	}
	m := s.Net.Model()
	t0 := time.Now()
	for _, n := range names {
		p := filepath.Join(cfg.SaveDir, n)
		if err := cfg.Save(p, m); err != nil {
			return fmt.Errorf("save %s: %w", p, err)
		}
		if err := saveProgress(p, s, prog); err != nil {
			return err
		}
	}
	fmt.Fprintf(log, "| saved checkpoint %s (epoch %d @ %d updates) (writing took %g seconds)\n",
		filepath.Join(cfg.SaveDir, names[0]), prog.Epoch, prog.NumUpdates, time.Since(t0).Seconds())
	if endOfEpoch && cfg.KeepLastEpochs > 0 {
		old, _ := filepath.Glob(filepath.Join(cfg.SaveDir, "checkpoint[0-9]*.pt"))
		sort.Slice(old, func(i, j int) bool { return epochOf(old[i]) > epochOf(old[j]) })
		for _, o := range old[min(len(old), cfg.KeepLastEpochs):] {
			for _, f := range []string{o, o + ".progress.json", o + ".optim"} {
				_ = os.Remove(f)
			}
		}
	}
	return nil
}

func epochOf(path string) int {
	var n int
	fmt.Sscanf(strings.TrimPrefix(filepath.Base(path), "checkpoint"), "%d", &n)
	return n
}

func saveProgress(ckpt string, s *Stepper, prog Progress) error {
	prog.OptimizerSteps = s.Opt.Steps()
	prog.NumParams = len(s.Net.Params())
	b, err := json.MarshalIndent(prog, "", " ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(ckpt+".progress.json", append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("save progress: %w", err)
	}
	f, err := os.Create(ckpt + ".optim")
	if err != nil {
		return fmt.Errorf("save optimizer state: %w", err)
	}
	be := s.Net.Backend()
	for i, p := range s.Net.Params() {
		for _, b := range []int{0, 1} {
			mv, vv := s.Opt.Moments(i)
			buf := mv
			if b == 1 {
				buf = vv
			}
			v := make([]float32, p.P.Len())
			be.Download(v, buf)
			if err := binary.Write(f, binary.LittleEndian, v); err != nil {
				f.Close()
				return fmt.Errorf("save optimizer state: %w", err)
			}
		}
	}
	return f.Close()
}

// LoadProgress reads the progress sidecar of ckpt and, when its optimizer moments match
// the net's parameters, restores them into opt. It reports whether a sidecar existed.
func LoadProgress(ckpt string, s *Stepper) (Progress, bool, error) {
	var prog Progress
	b, err := os.ReadFile(ckpt + ".progress.json")
	if os.IsNotExist(err) {
		return prog, false, nil
	}
	if err != nil {
		return prog, false, err
	}
	if err := json.Unmarshal(b, &prog); err != nil {
		return prog, false, fmt.Errorf("%s.progress.json: %w", ckpt, err)
	}
	raw, err := os.ReadFile(ckpt + ".optim")
	if err != nil {
		return prog, true, fmt.Errorf("optimizer state of %s: %w", ckpt, err)
	}
	total := 0
	for _, p := range s.Net.Params() {
		total += 2 * p.P.Len()
	}
	if len(raw) != 4*total || prog.NumParams != len(s.Net.Params()) {
		return prog, true, fmt.Errorf("optimizer state of %s does not match the model (%d bytes, want %d)", ckpt, len(raw), 4*total)
	}
	// The backend owns the moment buffers: load each through a temporary upload.
	be := s.Net.Backend()
	off := 0
	for i, p := range s.Net.Params() {
		mv, vv := s.Opt.Moments(i)
		for _, dst := range []kernels.Buffer{mv, vv} {
			v := make([]float32, p.P.Len())
			for j := range v {
				v[j] = math.Float32frombits(binary.LittleEndian.Uint32(raw[off:]))
				off += 4
			}
			be.Fill(dst, 0)
			be.AddTo(dst, be.Upload(v))
		}
	}
	s.Opt.SetState(prog.OptimizerSteps)
	s.NumUpdates = prog.NumUpdates
	s.Sched.StepUpdate(prog.NumUpdates)
	return prog, true, nil
}
