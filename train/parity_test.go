package train_test

import (
	"context"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/xform-dev/xform/kernels"
	"github.com/xform-dev/xform/kernels/cpu"
	"github.com/xform-dev/xform/model"
	"github.com/xform-dev/xform/train"
)

func parseBetas(t *testing.T, s string) (float64, float64) {
	s = strings.Trim(s, "() ")
	parts := strings.Split(s, ",")
	if len(parts) != 2 {
		t.Fatalf("betas %q", s)
	}
	a, err1 := strconv.ParseFloat(strings.TrimSpace(parts[0]), 64)
	b, err2 := strconv.ParseFloat(strings.TrimSpace(parts[1]), 64)
	if err1 != nil || err2 != nil {
		t.Fatalf("betas %q", s)
	}
	return a, b
}

func flt(t *testing.T, argv []string, flag string) float64 {
	v, err := strconv.ParseFloat(arg(argv, flag), 64)
	if err != nil {
		t.Fatalf("%s: %v", flag, err)
	}
	return v
}

// stepperFor builds our trainer with the reference run's flags and starting weights.
func stepperFor(t *testing.T, run refRun, z npz, name string) *train.Stepper {
	t.Helper()
	return stepperOn(t, run, z, name, cpu.New(2))
}

// stepperOn is stepperFor on backend be.
func stepperOn(t *testing.T, run refRun, z npz, name string, be kernels.Trainer) *train.Stepper {
	t.Helper()
	argv := run.Argv
	cfg := refConfig(argv)
	m := &model.Model{Config: cfg, Params: canonicalParams(t, z, name+"/state0/", cfg.EncoderEmbedDim)}
	net, err := model.NewTrainNet(m, be)
	if err != nil {
		t.Fatal(err)
	}
	b1, b2 := parseBetas(t, arg(argv, "--adam-betas"))
	opt, err := train.NewOptimizer(net, train.OptimConfig{Name: arg(argv, "--optimizer"), Beta1: b1, Beta2: b2, Eps: 1e-8,
		WeightDecay: flt(t, argv, "--weight-decay")})
	if err != nil {
		t.Fatal(err)
	}
	sched, err := train.NewSchedule(train.ScheduleConfig{Name: arg(argv, "--lr-scheduler"), LR: []float64{flt(t, argv, "--lr")},
		WarmupUpdates: int(flt(t, argv, "--warmup-updates")), WarmupInitLR: flt(t, argv, "--warmup-init-lr")})
	if err != nil {
		t.Fatal(err)
	}
	return &train.Stepper{Net: net, Opt: opt, Sched: sched, Cfg: train.StepConfig{ClipNorm: flt(t, argv, "--clip-norm"),
		LabelSmoothing: flt(t, argv, "--label-smoothing"), Seed: 1111}}
}

// maxDiff compares our parameters with the reference state after k updates and
// returns the largest absolute difference and where it is, and separately the largest
// difference over the attention key biases.
//
// Why the key biases are apart: softmax is invariant to adding one value to every
// score of a row, and q·b_k is such a value, so ∂loss/∂b_k is exactly zero. The
// reference's float32 backward leaves rounding noise of ~1e-9 there; Adam divides the
// noise by its own running RMS and turns it into steps of up to lr, in directions set by
// the noise. Our float64-accumulated backward leaves far smaller noise, so those
// entries cannot follow the reference's; they do not change any output.
func maxDiff(t *testing.T, net *model.TrainNet, z npz, prefix string) (float64, string, float64) {
	want := canonicalParams(t, z, prefix, net.Config().EncoderEmbedDim)
	worst, where, kb := 0.0, "", 0.0
	for _, p := range net.Params() {
		if strings.HasSuffix(p.Name, "k_proj.bias") {
			wv, _ := want[p.Name].F32()
			for i, g := range cpu.Data(p.P) {
				kb = max(kb, math.Abs(float64(g)-float64(wv[i])))
			}
			continue
		}
		w, ok := want[p.Name]
		if !ok {
			t.Fatalf("reference %s has no %s", prefix, p.Name)
		}
		wv, _ := w.F32()
		gv := cpu.Data(p.P)
		for i := range gv {
			if d := math.Abs(float64(gv[i]) - float64(wv[i])); d > worst || math.IsNaN(d) {
				worst, where = d, fmt.Sprintf("%s[%d] (ours %.9g, reference %.9g)", p.Name, i, gv[i], wv[i])
			}
		}
	}
	return worst, where, kb
}

// TestStepsMatchReference trains every reference run for 10 updates on the reference's
// batches and compares the logged numbers per update and the weights after every
// update (after 1 and 10 as the acceptance criterion, ≤1e-5).
func TestStepsMatchReference(t *testing.T) {
	dir := refDir(t)
	meta := readMeta(t, dir)
	batches := readNPZ(t, dir+"/batches.npz")
	states := map[string]npz{"admin": readNPZ(t, dir+"/runs_admin.npz"), "default": readNPZ(t, dir+"/runs_default.npz")}
	names := make([]string, 0, len(meta.Runs))
	for n := range meta.Runs {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		run := meta.Runs[name]
		if testing.Short() && name != "admin_radam" && name != "admin_adam" {
			continue // about 2 s each on one core
		}
		t.Run(name, func(t *testing.T) {
			z := states["default"]
			if run.Init == "ckpt_u1" {
				z = states["admin"]
			}
			s := stepperFor(t, run, z, name)
			uf := max(run.UpdateFreq, 1)
			for k, ref := range run.Steps {
				var group []*model.TrainBatch
				var ids []int
				for j := 0; j < uf; j++ {
					b, bid := refBatch(t, batches, k*uf+j)
					group = append(group, b)
					for _, x := range bid {
						ids = append(ids, int(x))
					}
				}
				if fmt.Sprint(ids) != fmt.Sprint(ref.BatchIDs) {
					t.Fatalf("update %d: batch ids differ from the run's", ref.Update)
				}
				lg, err := s.Step(context.Background(), group)
				if err != nil {
					t.Fatal(err)
				}
				checkStepLog(t, lg, ref)
				d, where, kb := maxDiff(t, s.Net, z, fmt.Sprintf("%s/state%d/", name, ref.Update))
				t.Logf("update %d: loss %.6f (ref %.6f) gnorm %.6f (ref %.6f) max |Δw| %.3g at %s; key biases %.3g", ref.Update, lg.Loss, ref.Loss,
					lg.GNorm, ref.GNorm, d, where, kb)
				if d > 1e-5 {
					t.Errorf("update %d: weights differ by %.3g at %s", ref.Update, d, where)
				}
				// The key biases may only drift by the reference's noise-driven steps.
				if bound := float64(ref.Update) * flt(t, run.Argv, "--lr"); kb > bound {
					t.Errorf("update %d: key biases differ by %.3g, more than the %.3g that noise-driven steps allow", ref.Update, kb, bound)
				}
			}
		})
	}
}

// checkStepLog compares an update's log with the reference's: the learning rate, sample
// size and sentence count exactly (1e-12), loss and nll within 1e-5 relative and the
// gradient norm within 1e-4 (TestStepsMatchReference's tolerances: float64 sums here,
// float32 there).
func checkStepLog(t *testing.T, lg train.StepLog, ref refStep) {
	t.Helper()
	rel := func(a, b float64) float64 { return math.Abs(a-b) / math.Max(math.Abs(b), 1e-12) }
	if rel(lg.LR, ref.LR) > 1e-12 || lg.SampleSize != ref.SampleSize || lg.NSentences != ref.NSentences {
		t.Errorf("update %d: lr %.12g sample_size %d nsentences %d, reference %.12g %d %d", ref.Update, lg.LR, lg.SampleSize,
			lg.NSentences, ref.LR, ref.SampleSize, ref.NSentences)
	}
	if rel(lg.Loss, ref.Loss) > 1e-5 || rel(lg.NLL, ref.NLL) > 1e-5 || rel(lg.GNorm, ref.GNorm) > 1e-4 {
		t.Errorf("update %d: loss %.7f nll %.7f gnorm %.7f, reference %.7f %.7f %.7f", ref.Update, lg.Loss, lg.NLL, lg.GNorm,
			ref.Loss, ref.NLL, ref.GNorm)
	}
}

// TestFirstGradientMatchesReference compares the normalised gradient of update 1.
func TestFirstGradientMatchesReference(t *testing.T) {
	dir := refDir(t)
	meta := readMeta(t, dir)
	batches := readNPZ(t, dir+"/batches.npz")
	z := readNPZ(t, dir+"/runs_admin.npz")
	run := meta.Runs["admin_radam"]
	s := stepperFor(t, run, z, "admin_radam")
	b, _ := refBatch(t, batches, 0)
	net := s.Net
	net.ZeroGrad()
	if _, err := net.Step(context.Background(), b, model.StepOptions{LabelSmoothing: 0.1, Train: true, Backward: true}); err != nil {
		t.Fatal(err)
	}
	want := canonicalParams(t, z, "admin_radam/grad1/", 32)
	c := float32(1 / float64(b.NTokens))
	worst := 0.0
	for _, p := range net.Params() {
		wv, _ := want[p.Name].F32()
		for i, g := range cpu.Data(p.G) {
			d := math.Abs(float64(g*c) - float64(wv[i]))
			worst = max(worst, d)
			if d > 1e-6+1e-4*math.Abs(float64(wv[i])) {
				t.Errorf("%s[%d]: gradient %.9g, reference %.9g", p.Name, i, g*c, wv[i])
				return
			}
		}
	}
	t.Logf("max |Δgrad| %.3g", worst)
}

// deferredCPU is the CPU backend declaring deferred reads (kernels.DeferredReader), so
// that a Stepper pipelines on it as on the GPU: its results are computed when queued,
// so reading them late is always right, and the test checks the bookkeeping.
type deferredCPU struct{ *cpu.Backend }

func (deferredCPU) DeferredReads() bool { return true }

// TestPipelinedStepsMatchReference trains the Admin reference runs with update k+1
// queued before update k's results are read (Stepper.Queue / Pending.Wait, as xform
// train and xform bench do on the GPU) and checks every update's log against the
// reference with TestStepsMatchReference's tolerances, and the weights after the last
// update (the earlier ones are not observable: the next update is queued by then).
func TestPipelinedStepsMatchReference(t *testing.T) {
	dir := refDir(t)
	meta := readMeta(t, dir)
	batches := readNPZ(t, dir+"/batches.npz")
	z := readNPZ(t, dir+"/runs_admin.npz")
	for _, name := range []string{"admin_adam", "admin_radam"} {
		run, ok := meta.Runs[name]
		if !ok || run.Init != "ckpt_u1" || max(run.UpdateFreq, 1) != 1 {
			t.Fatalf("reference run %s missing or not a one-batch Admin run", name)
		}
		t.Run(name, func(t *testing.T) {
			s := stepperOn(t, run, z, name, deferredCPU{cpu.New(2)})
			if !s.Pipelined() {
				t.Fatal("Stepper.Pipelined false on a backend with deferred reads and the fused optimizer")
			}
			check := func(k int, p *train.Pending) {
				lg, err := p.Wait()
				if err != nil {
					t.Fatalf("update %d: %v", run.Steps[k].Update, err)
				}
				checkStepLog(t, lg, run.Steps[k])
			}
			var prev *train.Pending
			for k := range run.Steps {
				b, _ := refBatch(t, batches, k)
				p, err := s.Queue(context.Background(), []*model.TrainBatch{b})
				if err != nil {
					t.Fatal(err)
				}
				if s.NumUpdates != k+1 {
					t.Fatalf("after queueing update %d NumUpdates is %d", k+1, s.NumUpdates)
				}
				if prev != nil {
					check(k-1, prev)
				}
				prev = p
			}
			last := len(run.Steps) - 1
			check(last, prev)
			if _, err := prev.Wait(); err != nil {
				t.Fatalf("a second Wait: %v", err)
			}
			d, where, _ := maxDiff(t, s.Net, z, fmt.Sprintf("%s/state%d/", name, run.Steps[last].Update))
			if d > 1e-5 {
				t.Errorf("after update %d: weights differ by %.3g at %s", run.Steps[last].Update, d, where)
			}
		})
	}
}
