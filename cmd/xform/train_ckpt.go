package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"

	"github.com/xform-dev/xform/convert"
	"github.com/xform-dev/xform/fairseqpt"
	"github.com/xform-dev/xform/model"
	"github.com/xform-dev/xform/train"
)

// fairseq's class names for xform's optimizers: the Clinic fork resumes a checkpoint's
// optimizer state only into the same class.
var fairseqOptimizerNames = map[string]string{"radam": "FairseqRAdam", "adam": "FairseqAdam"}

const fairseqCriterion = "LabelSmoothedCrossEntropyCriterion"

// checkpointSaver writes train.Snapshots as Clinic-layout checkpoints with fairseq's
// optimizer state and xform's progress record inside: one file holds everything needed
// to resume, and each file is replaced atomically.
type checkpointSaver struct {
	ctx context.Context
	log io.Writer
	// pauseAt > 0 stops before the pauseAt-th rename onto checkpoint_last.pt (a hidden
	// test flag: the resume test kills the process there).
	pauseAt, lastWrites int
}

func (cs *checkpointSaver) save(paths []string, snap *train.Snapshot) error {
	prog, err := json.Marshal(snap.Progress)
	if err != nil {
		return err
	}
	o := snap.Optim
	st := &convert.TrainingState{OptimizerName: fairseqOptimizerNames[o.Name], CriterionName: fairseqCriterion, LR: snap.LR,
		Betas: [2]float64{o.Beta1, o.Beta2}, Eps: o.Eps, WeightDecay: o.WD, Step: o.Steps,
		ExpAvg: map[string][]float32{}, ExpAvgSq: map[string][]float32{}, NumUpdates: snap.Progress.NumUpdates,
		Epoch: snap.Progress.Epoch, IterationsInEpoch: snap.Progress.BatchesInEpoch, XformProgress: string(prog)}
	for _, p := range o.Params {
		st.ExpAvg[p.Name], st.ExpAvgSq[p.Name] = p.ExpAvg, p.ExpAvgSq
	}
	// Only --fp16 has a loss scaler. The fork's --fp16 resumes only FP16Optimizer state
	// (one flat fp32 parameter and the loss scale), so such a run writes that layout;
	// the scaler's counters stay in xform_progress, which fairseq does not keep.
	if sc := snap.Progress.LossScaler; sc != nil {
		scale := sc.Scale
		st.OptimizerName, st.LossScale, st.LossScaleInt = convert.FP16OptimizerName, &scale, sc.PyInt
	}
	if !math.IsNaN(snap.ValLoss) {
		v := snap.ValLoss
		st.ValLoss = &v
	}
	if snap.Progress.HaveBest {
		b := snap.Progress.BestLoss
		st.Best = &b
	}
	ex, err := convert.BuildFairseqCheckpoint(snap.Model, convert.FairseqExportOptions{Target: convert.TargetClinic, Training: st})
	if err != nil {
		return err
	}
	for _, p := range paths {
		if err := cs.write(p, ex.Root); err != nil {
			return err
		}
	}
	return nil
}

// write is fairseqpt.WriteFile's all-or-nothing write (temporary file beside path,
// fsync, rename) with the test pause between the complete temporary file and the rename.
func (cs *checkpointSaver) write(path string, root interface{}) (err error) {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("checkpoint %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	bw := bufio.NewWriterSize(tmp, 1<<20)
	if err := fairseqpt.Write(bw, fairseqpt.ArchiveName(path), root); err != nil {
		return fmt.Errorf("checkpoint %s: %w", path, err)
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("checkpoint %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("checkpoint %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("checkpoint %s: %w", path, err)
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return fmt.Errorf("checkpoint %s: %w", path, err)
	}
	if filepath.Base(path) == "checkpoint_last.pt" {
		cs.lastWrites++
	}
	if cs.pauseAt > 0 && cs.lastWrites == cs.pauseAt && filepath.Base(path) == "checkpoint_last.pt" {
		fmt.Fprintf(cs.log, "| paused before renaming %s to %s\n", tmp.Name(), path)
		<-cs.ctx.Done()
		return cs.ctx.Err()
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("checkpoint %s: %w", path, err)
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil { // make the rename durable
		d.Sync()
		d.Close()
	}
	return nil
}

// removeStaleTemporaries deletes checkpoint temporaries that a killed run left in dir
// (the files themselves were never renamed into place, so nothing refers to them).
func removeStaleTemporaries(dir string, out io.Writer) {
	stale, _ := filepath.Glob(filepath.Join(dir, ".checkpoint*.pt.tmp-*"))
	for _, p := range stale {
		if os.Remove(p) == nil {
			fmt.Fprintf(out, "| removed %s, left by an interrupted checkpoint write\n", p)
		}
	}
}

// restoreTraining reads where a checkpoint's training stood: xform's own progress record
// when the file has one, else fairseq's optimizer history and train_iterator; and the
// optimizer's moments. ok is false when the file has no optimizer state.
func restoreTraining(ck *fairseqpt.Checkpoint, m *model.Model, optimizer string, out io.Writer) (train.Progress, *train.OptimState, bool, error) {
	var prog train.Progress
	if ck == nil {
		return prog, nil, false, nil
	}
	st, err := convert.ReadTrainingState(ck, m)
	if err != nil || st == nil {
		return prog, nil, false, err
	}
	if st.CriterionName != "" && st.CriterionName != fairseqCriterion {
		return prog, nil, false, fmt.Errorf("%s was trained with %s, xform trains with %s (use --reset-optimizer)", ck.Path, st.CriterionName, fairseqCriterion)
	}
	name := ""
	for k, v := range fairseqOptimizerNames {
		if v == st.OptimizerName {
			name = k
		}
	}
	switch {
	case st.OptimizerName == convert.FP16OptimizerName:
		// fairseq records the wrapper, not the optimizer inside it (nor does it check it);
		// xform's own --fp16 checkpoints need no remark.
		if st.XformProgress != "" {
			break
		}
		fmt.Fprintf(out, "| %s has %s state (an --fp16 run): its Adam moments continue as %s's\n", ck.Path, st.OptimizerName, optimizer)
	case name == "":
		fmt.Fprintf(out, "| %s has %s state: its Adam moments are used as %s's\n", ck.Path, st.OptimizerName, optimizer)
	}
	if st.XformProgress != "" {
		if err := json.Unmarshal([]byte(st.XformProgress), &prog); err != nil {
			return prog, nil, false, fmt.Errorf("%s: extra_state.%s: %w", ck.Path, convert.XformProgressKey, err)
		}
	} else {
		prog = train.Progress{Epoch: st.Epoch, BatchesInEpoch: st.IterationsInEpoch, NumUpdates: st.NumUpdates, OptimizerSteps: st.Step}
		if st.Best != nil {
			prog.BestLoss, prog.HaveBest = *st.Best, true
		}
		// An fp16 fairseq run's optimizer state has its loss scale; fairseq resumes the
		// scale alone, with fresh counters, and so does this.
		if ls := st.LossScale; ls != nil {
			sc := train.FreshScalerState(*ls)
			sc.PyInt = st.LossScaleInt
			prog.LossScaler = &sc
		}
	}
	ost := &train.OptimState{Name: name, Beta1: st.Betas[0], Beta2: st.Betas[1], Eps: st.Eps, WD: st.WeightDecay, Steps: st.Step}
	for _, p := range m.Config.Expected() {
		ost.Params = append(ost.Params, train.ParamMoments{Name: p.Name, Shape: p.Shape, ExpAvg: st.ExpAvg[p.Name], ExpAvgSq: st.ExpAvgSq[p.Name]})
	}
	return prog, ost, true, nil
}
