package train

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/xform-dev/xform/generate"
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
	// Save writes snap to every path (checkpoint_best.pt, checkpoint_last.pt, …), each
	// atomically, the last path last: a run killed while saving keeps the previous
	// checkpoint_last.pt whole.
	Save func(paths []string, snap *Snapshot) error
}

// Progress is where training stands; every checkpoint carries it.
type Progress struct {
	Epoch             int `json:"epoch"` // last completed epoch when IterationsInEpoch is 0
	IterationsInEpoch int `json:"iterations_in_epoch"`
	// BatchesInEpoch is fairseq's train_iterator.iterations_in_epoch: batches (not
	// updates) taken from epoch Epoch, all of them after the epoch's end. A Progress read
	// from a fairseq checkpoint has only this; Run turns it into IterationsInEpoch.
	BatchesInEpoch int        `json:"batches_in_epoch"`
	NumUpdates     int        `json:"num_updates"`
	OptimizerSteps int        `json:"optimizer_steps"`
	BestLoss       float64    `json:"best_loss"`
	HaveBest       bool       `json:"have_best"`
	NumParams      int        `json:"num_params"`
	Meters         *MeterSums `json:"meters,omitempty"`
	// LossScaler is the --fp16 loss scaler's state (nil without loss scaling).
	LossScaler *ScalerState `json:"loss_scaler,omitempty"`
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

func (m *meters) sums() *MeterSums {
	return &MeterSums{Loss: m.loss, NLL: m.nll, Sample: m.sample, Tokens: m.tokens, Sents: m.sents, Updates: m.updates, GNorm: m.gnorm, Clip: m.clip}
}

func (m *meters) restore(s *MeterSums) {
	m.reset()
	if s != nil {
		m.loss, m.nll, m.sample, m.tokens, m.sents, m.updates, m.gnorm, m.clip = s.Loss, s.NLL, s.Sample, s.Tokens, s.Sents, s.Updates, s.GNorm, s.Clip
	}
}

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

// stats returns fairseq's ordered training stats; sc is the loss scaler of an --fp16
// run (nil otherwise), whose scale fairseq logs after oom.
func (m *meters) stats(numUpdates int, lr float64, wall time.Duration, sc *LossScaler) [][2]string {
	div := func(a float64, b int) float64 {
		if b == 0 {
			return 0
		}
		return a / float64(b)
	}
	secs := time.Since(m.start).Seconds()
	nll := div(m.nll, m.tokens)
	st := [][2]string{
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
	}
	if sc != nil {
		st = append(st, [2]string{"loss_scale", fmt.Sprintf("%.3f", sc.Scale())})
	}
	return append(st, [][2]string{
		{"wall", fmt.Sprintf("%.0f", wall.Seconds())},
		{"train_wall", fmt.Sprintf("%.0f", m.trainWall.Seconds())},
	}...)
}

// pyG formats like Python's '{:g}'.
func pyG(v float64) string {
	s := fmt.Sprintf("%.6g", v)
	if i := strings.Index(s, "e"); i >= 0 && len(s) > i+2 && (s[i+1] == '-' || s[i+1] == '+') && len(s[i+2:]) == 1 {
		s = s[:i+2] + "0" + s[i+2:] // Python writes two exponent digits
	}
	return s
}

// logger prints fairseq 0.8's progress lines: --log-format simple (progress_bar.py's
// simple_progress_bar) or json (json_progress_bar: one object per line, stats as strings,
// "epoch" an int, "update" the fraction of epochs done rounded to 3 decimals).
type logger struct {
	w    io.Writer
	json bool
}

// mid prints the line logged every --log-interval updates: i of size update groups done.
func (l logger) mid(epoch, i, size int, st [][2]string) {
	if l.json {
		update := float64(epoch-1) + float64(i)/float64(size)
		l.object(epoch, pyRound3(update), "", st)
		return
	}
	parts := make([]string, len(st))
	for k, kv := range st {
		parts[k] = kv[0] + "=" + kv[1]
	}
	fmt.Fprintf(l.w, "| epoch %03d:  %5d / %d %s\n", epoch, i, size, strings.Join(parts, ", "))
}

// print prints an end-of-epoch (tag "train") or validation (tag = the subset) line.
func (l logger) print(epoch int, tag string, st [][2]string) {
	if l.json {
		l.object(epoch, "", tag+"_", st)
		return
	}
	prefix := fmt.Sprintf("| epoch %03d", epoch)
	if tag != "train" {
		prefix += fmt.Sprintf(" | valid on '%s' subset", tag)
	}
	parts := make([]string, len(st))
	for k, kv := range st {
		parts[k] = kv[0] + " " + kv[1]
	}
	fmt.Fprintf(l.w, "%s | %s\n", prefix, strings.Join(parts, " | "))
}

// object writes a JSON object in key order as Python's json.dumps does (", " and ": ").
func (l logger) object(epoch int, update, keyPrefix string, st [][2]string) {
	var b strings.Builder
	fmt.Fprintf(&b, `{"epoch": %d`, epoch)
	if update != "" {
		fmt.Fprintf(&b, `, "update": %s`, update)
	}
	for _, kv := range st {
		k, _ := json.Marshal(keyPrefix + kv[0])
		v, _ := json.Marshal(kv[1])
		fmt.Fprintf(&b, ", %s: %s", k, v)
	}
	b.WriteString("}\n")
	io.WriteString(l.w, b.String())
}

// pyRound3 is repr(round(v, 3)) for the small non-negative values of "update": Go's
// fixed-point formatting rounds the exact binary value as Python's round does, and
// repr then gives the shortest form, with ".0" for whole numbers.
func pyRound3(v float64) string {
	r, _ := strconv.ParseFloat(strconv.FormatFloat(v, 'f', 3, 64), 64)
	s := strconv.FormatFloat(r, 'f', -1, 64)
	if !strings.ContainsAny(s, ".eE") {
		s += ".0"
	}
	return s
}

// Run trains s.Net on d until --max-update or --max-epoch, validating after each epoch
// and saving checkpoints (checkpoint_last.pt, checkpoint_best.pt, checkpointN.pt,
// checkpoint_E_U.pt) as fairseq 0.8's train.py does. prog says where to resume (the
// stepper must already be restored with Stepper.Resume); a resumed run logs and saves
// exactly what the uninterrupted run would have from that point on.
func Run(ctx context.Context, s *Stepper, d *Data, cfg RunConfig, prog Progress) (Progress, error) {
	out := cfg.Log
	if out == nil {
		out = io.Discard
	}
	log := logger{w: out, json: cfg.LogFormat == "json"}
	if s.Log == nil {
		s.Log = out
		defer func() { s.Log = nil }()
	}
	frozen, dropped, err := Batches(d.Train, cfg.Batch)
	if err != nil {
		return prog, fmt.Errorf("train split: %w", err)
	}
	collate, err := cfg.Batch.Collator(d.Train)
	if err != nil {
		return prog, fmt.Errorf("train split: %w", err)
	}
	if len(dropped) > 0 {
		fmt.Fprintf(out, "| WARNING: %d samples have invalid sizes and will be skipped, max_positions=(%d, %d), first few sample ids=%v\n",
			len(dropped), cfg.Batch.MaxSourcePos, cfg.Batch.MaxTargetPos, dropped[:min(10, len(dropped))])
	}
	var valid []*model.TrainBatch
	if !cfg.NoValidate {
		vcfg := cfg.Batch
		// Validation keeps fairseq's batching: bucket batching drops incomplete batches.
		vcfg.SkipInvalidAll, vcfg.Buckets = false, 0
		vb, _, err := Batches(d.Valid, vcfg)
		if err != nil {
			return prog, fmt.Errorf("%s split: %w", cfg.ValidSubset, err)
		}
		for _, b := range vb {
			tb, _ := Collate(b, d.Valid)
			valid = append(valid, tb)
		}
	}
	updateFreq := func(epoch int) int {
		if len(cfg.UpdateFreq) == 0 {
			return 1
		}
		return cfg.UpdateFreq[min(epoch-1, len(cfg.UpdateFreq)-1)]
	}
	prog = normalizeProgress(prog, len(frozen), updateFreq)
	if prog.Epoch > 0 { // a resume: the schedule's per-epoch rate is the last completed epoch's
		done := prog.Epoch
		if prog.IterationsInEpoch > 0 {
			done--
		}
		if done > 0 {
			s.Sched.StepEpoch(done)
		}
	}
	start := time.Now()
	var m meters
	m.reset()
	epoch := prog.Epoch + 1
	skip := 0
	if prog.IterationsInEpoch > 0 { // resume mid-epoch, with the meters as they were
		epoch, skip = prog.Epoch, prog.IterationsInEpoch
	}
	maxUpdate := cfg.MaxUpdate
	if maxUpdate <= 0 {
		maxUpdate = math.MaxInt
	}
	for (cfg.MaxEpoch <= 0 || epoch <= cfg.MaxEpoch) && s.NumUpdates < maxUpdate && s.Sched.LR() > cfg.MinLR {
		uf := updateFreq(epoch)
		order := EpochOrder(frozen, cfg.Batch.Seed, epoch)
		groups := (len(order) + uf - 1) / uf
		// fairseq's progress bar prints, at each log interval, the stats of the last
		// update that returned some (an overflowed one returns none): --log-format simple
		// keeps them as formatted then, json formats the meters at printing time.
		var lastMid [][2]string
		if skip > 0 {
			m.restore(prog.Meters)
		} else {
			m.reset()
		}
		// Pipelined (Stepper.Pipelined: the GPU), update k+1 is queued before update k's
		// results are read and logged, so the device does not wait for the host between
		// updates. An update after which the weights are read (a mid-epoch save, the
		// last update of the epoch or of the run) is finished before anything more is
		// queued, so saves and validation see exactly the weights after it.
		var pend *queuedUpdate
		stop, piped := false, s.Pipelined()
		// The fork resets every meter before iteration i's update (clinic-spec §4.2);
		// pipelined, before it is logged (after update i-1 is).
		resetAt := func(i int) bool { return i > 1 && cfg.LogInterval > 0 && i%cfg.LogInterval == 1 }
		// finish reads pend's results and does what fairseq does after an update:
		// meters, the log line, a save at --save-interval-updates; stop says
		// --max-update was reached.
		finish := func() error {
			q := pend
			pend = nil
			lg, err := q.p.Wait()
			if err != nil {
				return fmt.Errorf("epoch %d, update %d: %w", epoch, q.update, err)
			}
			dt := time.Since(q.start)
			prog = Progress{Epoch: epoch, IterationsInEpoch: q.i + 1, BatchesInEpoch: min((q.i+1)*uf, len(order)), NumUpdates: q.numUpdates,
				OptimizerSteps: q.optSteps, BestLoss: prog.BestLoss, HaveBest: prog.HaveBest}
			atInterval := cfg.LogInterval > 0 && (q.i+1)%cfg.LogInterval == 0
			if lg.Overflow {
				// The batches are consumed but no meter but the wall time moves, and,
				// as fairseq's train loop continues past such an update, nothing is
				// saved and --max-update is not checked (the count did not change).
				m.trainWall += dt
				if atInterval && lastMid != nil {
					st := lastMid
					if log.json {
						st = m.stats(q.numUpdates, q.lr, time.Since(start), s.Scaler)
					}
					log.mid(epoch, q.i+1, groups, st)
				}
				return nil
			}
			m.add(lg, dt)
			if atInterval || s.Scaler != nil {
				lastMid = m.stats(q.numUpdates, q.lr, time.Since(start), s.Scaler)
			}
			if atInterval {
				log.mid(epoch, q.i+1, groups, lastMid)
			}
			if q.saves {
				vl, err := validate(ctx, s, valid, cfg, epoch, &prog, log)
				if err != nil {
					return err
				}
				prog.Meters = m.sums()
				if err := saveCheckpoints(s, cfg, &prog, vl, false, out); err != nil {
					return err
				}
			}
			stop = q.numUpdates >= maxUpdate
			return nil
		}
		lastFinish := time.Time{}
		for i := skip; i < groups && !stop; i++ {
			if err := ctx.Err(); err != nil {
				if pend != nil {
					// The queued update has changed the weights: count and log it.
					if ferr := finish(); ferr != nil {
						return prog, ferr
					}
				}
				return prog, err
			}
			var group []*model.TrainBatch
			for _, b := range order[i*uf : min((i+1)*uf, len(order))] {
				tb, err := collate(b)
				if err != nil {
					return prog, fmt.Errorf("epoch %d: %w", epoch, err)
				}
				group = append(group, tb)
			}
			if !piped && resetAt(i) {
				m.reset()
			}
			t0 := time.Now()
			p, err := s.Queue(ctx, group)
			if err != nil {
				return prog, fmt.Errorf("epoch %d, update %d: %w", epoch, s.NumUpdates+1, err)
			}
			q := &queuedUpdate{p: p, i: i, update: s.NumUpdates, numUpdates: s.NumUpdates, optSteps: s.Opt.Steps(), lr: s.Sched.LR(), start: t0}
			if !lastFinish.IsZero() && lastFinish.After(t0) {
				q.start = lastFinish
			}
			q.saves = cfg.SaveIntervalUpdates > 0 && q.numUpdates%cfg.SaveIntervalUpdates == 0 && q.numUpdates < maxUpdate
			if pend != nil {
				if err := finish(); err != nil {
					return prog, err
				}
				lastFinish = time.Now()
				if q.start.Before(lastFinish) {
					q.start = lastFinish
				}
			}
			if piped && resetAt(i) {
				m.reset()
			}
			pend = q
			// Finish at once where the weights after this update are read next (a
			// save, the epoch's or the run's end) or where nothing is pipelined.
			if !piped || q.saves || i == groups-1 || q.numUpdates >= maxUpdate {
				if err := finish(); err != nil {
					return prog, err
				}
				lastFinish = time.Now()
			}
		}
		if pend != nil {
			if err := finish(); err != nil {
				return prog, err
			}
		}
		skip = 0
		log.print(epoch, "train", m.stats(s.NumUpdates, s.Sched.LR(), time.Since(start), s.Scaler))
		// An epoch cut short by --max-update is not finished: as fairseq's
		// train_iterator, the checkpoint keeps the position in it, so a later run with a
		// higher --max-update continues the epoch (with fresh meters, as fairseq resets
		// them after this line).
		finished := prog.Epoch != epoch || prog.IterationsInEpoch >= groups
		prog.Meters = nil
		if finished {
			prog.Epoch, prog.IterationsInEpoch, prog.BatchesInEpoch = epoch, 0, len(order)
		}
		vl, err := validate(ctx, s, valid, cfg, epoch, &prog, log)
		if err != nil {
			return prog, err
		}
		if finished {
			s.Sched.StepEpoch(epoch)
		}
		if err := saveCheckpoints(s, cfg, &prog, vl, finished, out); err != nil {
			return prog, err
		}
		if !finished {
			break
		}
		epoch++
	}
	fmt.Fprintf(out, "| done training in %.1f seconds\n", time.Since(start).Seconds())
	return prog, nil
}

// queuedUpdate is an update Run queued and has not logged yet, with the counters as
// they were right after it (the next update may be queued before it is logged).
type queuedUpdate struct {
	p          *Pending
	i          int // iteration in the epoch
	update     int // its 1-based number, for errors
	numUpdates int
	optSteps   int
	lr         float64   // the learning rate after it, which fairseq logs
	start      time.Time // when the device could start it (for train_wall)
	saves      bool      // --save-interval-updates saves after it
}

// normalizeProgress turns a Progress read from a fairseq checkpoint, which has only
// fairseq's batch count, into update groups. fairseq writes the epoch's whole batch count
// both at the epoch's end and (rarely) in a mid-epoch save at its last batch; like later
// fairseq releases we take it as a completed epoch. xform's own checkpoints say which.
func normalizeProgress(prog Progress, nbatches int, updateFreq func(epoch int) int) Progress {
	if prog.IterationsInEpoch != 0 || prog.BatchesInEpoch <= 0 || prog.Epoch <= 0 || prog.Meters != nil {
		return prog
	}
	if prog.BatchesInEpoch >= nbatches {
		return prog // completed: IterationsInEpoch 0
	}
	uf := updateFreq(prog.Epoch)
	prog.IterationsInEpoch = (prog.BatchesInEpoch + uf - 1) / uf
	return prog
}

// validate runs the valid split and logs fairseq's valid line; it returns the loss in
// bits (NaN when validation is off).
func validate(ctx context.Context, s *Stepper, valid []*model.TrainBatch, cfg RunConfig, epoch int, prog *Progress, log logger) (float64, error) {
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
	log.print(epoch, cfg.ValidSubset, st)
	return vl, nil
}

// saveCheckpoints writes the files fairseq's save_checkpoint writes, all from one
// snapshot, checkpoint_last.pt last.
func saveCheckpoints(s *Stepper, cfg RunConfig, pp *Progress, valLoss float64, endOfEpoch bool, log io.Writer) error {
	isBest := false
	if !math.IsNaN(valLoss) && (!pp.HaveBest || valLoss <= pp.BestLoss) { // fairseq's is_better is <=
		isBest = true
		pp.BestLoss, pp.HaveBest = valLoss, true
	}
	if cfg.NoSave || cfg.SaveDir == "" || cfg.Save == nil {
		return nil
	}
	prog := *pp
	var names []string
	if endOfEpoch && !cfg.NoEpochCheckpoints {
		names = append(names, fmt.Sprintf("checkpoint%d.pt", prog.Epoch))
	}
	if !endOfEpoch && cfg.SaveIntervalUpdates > 0 && prog.NumUpdates%cfg.SaveIntervalUpdates == 0 {
		names = append(names, fmt.Sprintf("checkpoint_%d_%d.pt", prog.Epoch, prog.NumUpdates))
	}
	if isBest {
		names = append(names, "checkpoint_best.pt")
	}
	names = append(names, "checkpoint_last.pt")
	if err := os.MkdirAll(cfg.SaveDir, 0o755); err != nil {
		return fmt.Errorf("save dir: %w", err)
	}
	paths := make([]string, len(names))
	for i, n := range names {
		paths[i] = filepath.Join(cfg.SaveDir, n)
	}
	t0 := time.Now()
	if err := cfg.Save(paths, s.Snapshot(prog, valLoss)); err != nil {
		return fmt.Errorf("save checkpoint: %w", err)
	}
	fmt.Fprintf(log, "| saved checkpoint %s (epoch %d @ %d updates) (writing took %g seconds)\n",
		paths[0], prog.Epoch, prog.NumUpdates, time.Since(t0).Seconds())
	if endOfEpoch && cfg.KeepLastEpochs > 0 {
		old, _ := filepath.Glob(filepath.Join(cfg.SaveDir, "checkpoint[0-9]*.pt"))
		sort.Slice(old, func(i, j int) bool { return epochOf(old[i]) > epochOf(old[j]) })
		for _, o := range old[min(len(old), cfg.KeepLastEpochs):] {
			_ = os.Remove(o)
		}
	}
	return nil
}

func epochOf(path string) int {
	var n int
	fmt.Sscanf(strings.TrimPrefix(filepath.Base(path), "checkpoint"), "%d", &n)
	return n
}
