package convert

import (
	"encoding/binary"
	"fmt"
	"math"
	"strconv"

	"github.com/nlpodyssey/gopickle/types"
	"github.com/xform-dev/xform/fairseqpt"
	"github.com/xform-dev/xform/model"
	"github.com/xform-dev/xform/tensor"
)

// XformProgressKey is the extra_state entry where xform keeps its own resume record (a
// JSON string). fairseq's loader reads only the extra_state keys it knows.
const XformProgressKey = "xform_progress"

// FP16OptimizerName is the class name of the fork's --fp16 optimizer wrapper. Its state
// is the wrapped optimizer's for one flat fp32 parameter (every parameter, in parameters()
// order, concatenated) plus 'loss_scale'; fairseq resumes it only with --fp16.
const FP16OptimizerName = "FP16Optimizer"

// TrainingState is what a fairseq checkpoint records of training besides the weights
// (clinic-spec §3.1, §3.3): the optimizer's state in fairseq's layout, the optimizer
// history entry the trainer checks on resume, and extra_state's iterator position.
type TrainingState struct {
	// OptimizerName is the optimizer_history class name, which fairseq's resume insists on:
	// FairseqRAdam or FairseqAdam (per-parameter state), or FP16OptimizerName, which also
	// selects the flat layout when writing.
	OptimizerName string
	CriterionName string // LabelSmoothedCrossEntropyCriterion
	LR            float64
	Betas         [2]float64
	Eps           float64
	WeightDecay   float64
	Step          int // per-parameter step count (every parameter steps every update)
	// ExpAvg and ExpAvgSq are each parameter's Adam moments under its canonical name
	// (model.Config.Expected order and shapes).
	ExpAvg, ExpAvgSq map[string][]float32
	NumUpdates       int
	// Epoch and IterationsInEpoch are extra_state.train_iterator: the epoch in progress
	// and the batches taken from it.
	Epoch, IterationsInEpoch int
	ValLoss, Best            *float64
	// LossScale is last_optimizer_state['loss_scale'] (fairseq's fp16 wrappers), nil when
	// absent. LossScaleInt writes it as a Python int: the fork keeps --fp16-init-scale's
	// int until the scale first changes.
	LossScale    *float64
	LossScaleInt bool
	// XformProgress is extra_state[XformProgressKey], empty when absent.
	XformProgress string
}

// fairseqParam is one entry of a fairseq model's parameters() list: its name and shape,
// and for every element the index of the element it is in the concatenation of the
// canonical parameters (Expected order).
type fairseqParam struct {
	Name  string
	Shape []int
	Src   []int64
}

// fairseqParams lists m's parameters as the target's model.parameters() does: the state
// dict's order without buffers (version, _float_tensor), tied tensors once. The mapping
// reuses the exporter itself, run on a model whose entries are their own element indices
// (float64 holds them exactly), so fused in_proj, embed_out and 0.12's separate
// projections line up with the weights exactly as exported.
func fairseqParams(m *model.Model, layout stateLayout) ([]fairseqParam, int64, error) {
	tag := &model.Model{Config: m.Config, Params: map[string]*tensor.Tensor{}}
	var off int64
	for _, p := range m.Config.Expected() {
		n := tensor.Numel(p.Shape)
		data := make([]byte, 8*n)
		for j := 0; j < n; j++ {
			binary.LittleEndian.PutUint64(data[8*j:], math.Float64bits(float64(off+int64(j))))
		}
		tag.Params[p.Name] = &tensor.Tensor{DType: tensor.F64, Shape: append([]int(nil), p.Shape...), Data: data}
		off += int64(n)
	}
	sd, err := fairseqStateDict(tag, layout)
	if err != nil {
		return nil, 0, err
	}
	var out []fairseqParam
	seen := map[*tensor.Tensor]bool{}
	for el := sd.List.Front(); el != nil; el = el.Next() {
		e := el.Value.(*types.OrderedDictEntry)
		name := e.Key.(string)
		t := e.Value.(*tensor.Tensor)
		if isBufferName(name) || seen[t] {
			continue
		}
		seen[t] = true
		src := make([]int64, t.Numel())
		for j := range src {
			src[j] = int64(math.Float64frombits(binary.LittleEndian.Uint64(t.Data[8*j:])))
		}
		out = append(out, fairseqParam{Name: name, Shape: append([]int(nil), t.Shape...), Src: src})
	}
	return out, off, nil
}

func isBufferName(name string) bool {
	return name == "encoder.version" || name == "decoder.version" || hasSuffix(name, "._float_tensor")
}

func hasSuffix(s, suf string) bool { return len(s) >= len(suf) && s[len(s)-len(suf):] == suf }

// putTrainingState replaces optimizer_history, extra_state and last_optimizer_state of
// root with st, as fairseq's save_state writes them (OrderedDicts inside the optimizer
// state because fairseq passes it through convert_state_dict_type; plain dicts elsewhere).
func putTrainingState(root *types.Dict, m *model.Model, layout stateLayout, src *fairseqpt.Checkpoint, st *TrainingState) error {
	params, total, err := fairseqParams(m, layout)
	if err != nil {
		return err
	}
	canon := func(name string, byName map[string][]float32) ([]float32, error) {
		flat := make([]float32, 0, total)
		for _, p := range m.Config.Expected() {
			v, ok := byName[p.Name]
			if !ok || len(v) != tensor.Numel(p.Shape) {
				return nil, fmt.Errorf("convert: training state: %s of %s missing or of the wrong size", name, p.Name)
			}
			flat = append(flat, v...)
		}
		return flat, nil
	}
	m1, err := canon("exp_avg", st.ExpAvg)
	if err != nil {
		return err
	}
	m2, err := canon("exp_avg_sq", st.ExpAvgSq)
	if err != nil {
		return err
	}
	gather := func(p fairseqParam, flat []float32) *tensor.Tensor {
		v := make([]float32, len(p.Src))
		for j, s := range p.Src {
			v[j] = flat[s]
		}
		return tensor.FromF32(append([]int(nil), p.Shape...), v)
	}
	state := types.NewOrderedDict()
	ids := types.NewList()
	if st.OptimizerName == FP16OptimizerName {
		// FP16Optimizer builds its fp32 copy by concatenating each parameter's flattened
		// data in parameters() order, and torch numbers that single parameter 0.
		flat := func(canon []float32) *tensor.Tensor {
			v := make([]float32, 0, total)
			for _, p := range params {
				for _, s := range p.Src {
					v = append(v, canon[s])
				}
			}
			return tensor.FromF32([]int{len(v)}, v)
		}
		ps := types.NewOrderedDict()
		ps.Set("step", st.Step)
		ps.Set("exp_avg", flat(m1))
		ps.Set("exp_avg_sq", flat(m2))
		state.Set(0, ps)
		ids.Append(0)
	} else {
		for i, p := range params {
			ps := types.NewOrderedDict()
			ps.Set("step", st.Step)
			ps.Set("exp_avg", gather(p, m1))
			ps.Set("exp_avg_sq", gather(p, m2))
			state.Set(i, ps)
			ids.Append(i)
		}
	}
	group := types.NewOrderedDict()
	group.Set("lr", st.LR)
	group.Set("betas", types.NewTupleFromSlice([]interface{}{st.Betas[0], st.Betas[1]}))
	group.Set("eps", st.Eps)
	group.Set("weight_decay", st.WeightDecay)
	group.Set("amsgrad", false)
	group.Set("params", ids)
	opt := types.NewOrderedDict()
	opt.Set("state", state)
	opt.Set("param_groups", types.NewListFromSlice([]interface{}{group}))
	if st.LossScale != nil {
		if st.LossScaleInt && *st.LossScale == math.Trunc(*st.LossScale) && math.Abs(*st.LossScale) < 1<<53 {
			opt.Set("loss_scale", int(*st.LossScale))
		} else {
			opt.Set("loss_scale", *st.LossScale)
		}
	} else if st.OptimizerName == FP16OptimizerName {
		return fmt.Errorf("convert: training state: %s without a loss scale", FP16OptimizerName)
	}

	optional := func(v *float64) interface{} {
		if v == nil {
			return nil
		}
		return *v
	}
	entry := types.NewDict()
	entry.Set("criterion_name", st.CriterionName)
	entry.Set("optimizer_name", st.OptimizerName)
	lrs := types.NewDict()
	lrs.Set("best", optional(st.Best))
	entry.Set("lr_scheduler_state", lrs)
	entry.Set("num_updates", st.NumUpdates)
	// fairseq appends to the history of the checkpoint it resumed from.
	history := types.NewList()
	if v, ok := fairseqpt.DictGet(srcRoot(src), "optimizer_history"); ok {
		if l, ok := v.(*types.List); ok {
			for i := 0; i < l.Len(); i++ {
				history.Append(l.Get(i))
			}
		}
	}
	history.Append(entry)

	ti := types.NewDict()
	ti.Set("epoch", st.Epoch)
	ti.Set("iterations_in_epoch", st.IterationsInEpoch)
	extra := types.NewDict()
	extra.Set("train_iterator", ti)
	extra.Set("val_loss", optional(st.ValLoss))
	if st.Best != nil {
		extra.Set("best", *st.Best)
	}
	if st.XformProgress != "" {
		extra.Set(XformProgressKey, st.XformProgress)
	}
	dictPut(root, "optimizer_history", history)
	dictPut(root, "extra_state", extra)
	dictPut(root, "last_optimizer_state", opt)
	return nil
}

// ReadTrainingState reads the training state of a fairseq checkpoint whose weights are
// m (as imported from it). It returns nil without last_optimizer_state. Per-parameter
// state (FairseqRAdam, FairseqAdam, MemoryEfficientFP16Optimizer) and FP16Optimizer's one
// flat parameter are both mapped back onto m's canonical parameters; the flat one must
// hold exactly the model's parameters. The fp16 wrappers' loss_scale is LossScale.
func ReadTrainingState(ck *fairseqpt.Checkpoint, m *model.Model) (*TrainingState, error) {
	root := ck.Root
	ov, ok := fairseqpt.DictGet(root, "last_optimizer_state")
	if !ok || ov == nil {
		return nil, nil
	}
	fail := func(format string, a ...interface{}) error {
		return fmt.Errorf("convert: %s: optimizer state: %s", ck.Path, fmt.Sprintf(format, a...))
	}
	layout := layoutClinic
	if ck.Generation == fairseqpt.GenCfg || ck.Generation == fairseqpt.GenDictConfig {
		layout = layout012
	}
	params, total, err := fairseqParams(m, layout)
	if err != nil {
		return nil, err
	}
	st := &TrainingState{ExpAvg: map[string][]float32{}, ExpAvgSq: map[string][]float32{}}
	sv, _ := fairseqpt.DictGet(ov, "state")
	states, ok := fairseqpt.Entries(sv)
	if !ok {
		return nil, fail("no state mapping")
	}
	gv, _ := fairseqpt.DictGet(ov, "param_groups")
	groups, ok := gv.(*types.List)
	if !ok || groups.Len() != 1 {
		return nil, fail("want one param group")
	}
	g := groups.Get(0)
	st.LR = number(g, "lr")
	st.Eps = number(g, "eps")
	st.WeightDecay = number(g, "weight_decay")
	if b, ok := fairseqpt.DictGet(g, "betas"); ok {
		if t, ok := b.(*types.Tuple); ok && t.Len() == 2 {
			st.Betas = [2]float64{toFloat(t.Get(0)), toFloat(t.Get(1))}
		}
	}
	byKey := map[string]interface{}{}
	for _, e := range states {
		byKey[e.Key] = e.Value
	}
	var order []string
	if pv, ok := fairseqpt.DictGet(g, "params"); ok {
		if l, ok := pv.(*types.List); ok {
			for i := 0; i < l.Len(); i++ {
				order = append(order, fmt.Sprint(l.Get(i)))
			}
		}
	}
	histName := ""
	if hv, ok := fairseqpt.DictGet(root, "optimizer_history"); ok {
		if l, ok := hv.(*types.List); ok && l.Len() > 0 {
			histName, _ = getString(l.Get(l.Len()-1), "optimizer_name")
		}
	}
	flatLayout := histName == FP16OptimizerName || (len(order) == 1 && len(params) > 1)
	// The state of parameter k of parameters() is state[params[k]].
	read := func(key, field string, want int) ([]float32, error) {
		ps, ok := byKey[key]
		if !ok {
			return nil, fail("no state for parameter %s", key)
		}
		tv, _ := fairseqpt.DictGet(ps, field)
		t, ok := tv.(*fairseqpt.Tensor)
		if !ok {
			return nil, fail("parameter %s has no %s tensor", key, field)
		}
		if t.Numel() != want {
			if flatLayout {
				return nil, fail("%s's flat %s has %d elements, the model's %d parameters hold %d", FP16OptimizerName, field, t.Numel(), len(params), want)
			}
			return nil, fail("%s of parameter %s has %d elements, the model's parameter %d", field, key, t.Numel(), want)
		}
		mt, err := t.Materialize()
		if err != nil {
			return nil, fail("%s: %v", field, err)
		}
		if mt.DType != tensor.F32 {
			if mt, err = mt.Convert(tensor.F32); err != nil {
				return nil, fail("%s: %v", field, err)
			}
		}
		return mt.F32()
	}
	flat1 := make([]float32, total)
	flat2 := make([]float32, total)
	var firstKey string
	switch {
	case flatLayout && len(order) != 1:
		return nil, fail("%s state with %d parameters in the param group, want its one flat parameter", FP16OptimizerName, len(order))
	case len(order) == len(params) && !flatLayout:
		firstKey = order[0]
		for k, p := range params {
			a, err := read(order[k], "exp_avg", len(p.Src))
			if err != nil {
				return nil, err
			}
			b, err := read(order[k], "exp_avg_sq", len(p.Src))
			if err != nil {
				return nil, err
			}
			for j, s := range p.Src {
				flat1[s], flat2[s] = a[j], b[j]
			}
		}
	case flatLayout: // FP16Optimizer: one flat fp32 copy of every parameter in order
		firstKey = order[0]
		a, err := read(order[0], "exp_avg", int(total))
		if err != nil {
			return nil, err
		}
		b, err := read(order[0], "exp_avg_sq", int(total))
		if err != nil {
			return nil, err
		}
		off := 0
		for _, p := range params {
			for j, s := range p.Src {
				flat1[s], flat2[s] = a[off+j], b[off+j]
			}
			off += len(p.Src)
		}
	default:
		return nil, fail("%d parameters in the param group, the model has %d", len(order), len(params))
	}
	if sv, ok := fairseqpt.DictGet(byKey[firstKey], "step"); ok {
		st.Step = int(toFloat(sv))
	}
	off := 0
	for _, p := range m.Config.Expected() {
		n := tensor.Numel(p.Shape)
		st.ExpAvg[p.Name] = flat1[off : off+n : off+n]
		st.ExpAvgSq[p.Name] = flat2[off : off+n : off+n]
		off += n
	}

	if hv, ok := fairseqpt.DictGet(root, "optimizer_history"); ok {
		if l, ok := hv.(*types.List); ok && l.Len() > 0 {
			last := l.Get(l.Len() - 1)
			st.OptimizerName, _ = getString(last, "optimizer_name")
			st.CriterionName, _ = getString(last, "criterion_name")
			st.NumUpdates = int(number(last, "num_updates"))
		}
	}
	if lv, ok := fairseqpt.DictGet(ov, "loss_scale"); ok && lv != nil {
		if f := toFloat(lv); !math.IsNaN(f) {
			st.LossScale = &f
			_, st.LossScaleInt = lv.(int)
			if _, ok := lv.(int64); ok {
				st.LossScaleInt = true
			}
		}
	}
	if ev, ok := fairseqpt.DictGet(root, "extra_state"); ok {
		if ti, ok := fairseqpt.DictGet(ev, "train_iterator"); ok {
			st.Epoch = int(number(ti, "epoch"))
			st.IterationsInEpoch = int(number(ti, "iterations_in_epoch"))
		}
		st.ValLoss = optionalNumber(ev, "val_loss")
		st.Best = optionalNumber(ev, "best")
		st.XformProgress, _ = getString(ev, XformProgressKey)
	}
	return st, nil
}

func getString(d interface{}, key string) (string, bool) {
	v, ok := fairseqpt.DictGet(d, key)
	s, isStr := v.(string)
	return s, ok && isStr
}

func number(d interface{}, key string) float64 {
	v, _ := fairseqpt.DictGet(d, key)
	return toFloat(v)
}

func optionalNumber(d interface{}, key string) *float64 {
	v, ok := fairseqpt.DictGet(d, key)
	if !ok || v == nil {
		return nil
	}
	f := toFloat(v)
	if math.IsNaN(f) {
		return nil
	}
	return &f
}

// toFloat reads a Python int, float, bool or one-element tensor (torch ≥1.12 keeps
// Adam's step as a tensor); anything else is NaN.
func toFloat(v interface{}) float64 {
	switch x := v.(type) {
	case int:
		return float64(x)
	case int64:
		return float64(x)
	case float64:
		return x
	case bool:
		if x {
			return 1
		}
		return 0
	case string:
		f, err := strconv.ParseFloat(x, 64)
		if err == nil {
			return f
		}
	case *fairseqpt.Tensor:
		if vs, err := x.Float64s(); err == nil && len(vs) == 1 {
			return vs[0]
		}
	}
	return math.NaN()
}
