package fairseqpt

import (
	"fmt"
	"math/big"

	"github.com/nlpodyssey/gopickle/types"
)

// Generation names the fairseq checkpoint layout a file was written in.
type Generation string

const (
	GenArgs       Generation = "args"          // fairseq ≤0.10 and the Clinic fork: args = argparse.Namespace
	GenDictConfig Generation = "cfg-omegaconf" // 2020-10…2021-03 masters: cfg = pickled omegaconf DictConfig
	GenCfg        Generation = "cfg"           // fairseq 0.12: args None, cfg = plain dicts
	GenWeights    Generation = "weights-only"  // {"model": state dict} without config
)

// NamedTensor is one state-dict entry.
type NamedTensor struct {
	Name   string
	Tensor *Tensor
}

// Checkpoint is a fairseq checkpoint: the torch file plus its schema.
type Checkpoint struct {
	*File
	Generation Generation
	// Config is the flat model configuration in fairseq's attribute names: the args
	// Namespace, or cfg["model"] (flattened) with cfg["task"] filling what it lacks.
	Config []Entry
	// State is the model state dict in file order.
	State []NamedTensor
	// OptimizerState reports whether last_optimizer_state is present.
	OptimizerState bool
	Progress       Progress
}

// Progress is what a checkpoint records of training.
type Progress struct {
	Epoch             int      `json:"epoch,omitempty"`
	IterationsInEpoch int      `json:"iterations_in_epoch,omitempty"`
	Updates           int      `json:"num_updates,omitempty"`
	LR                *float64 `json:"lr,omitempty"`
	LossScale         *float64 `json:"loss_scale,omitempty"`
	ValLoss           *float64 `json:"val_loss,omitempty"`
	BestLoss          *float64 `json:"best_loss,omitempty"`
	OptimizerName     string   `json:"optimizer_name,omitempty"`
	CriterionName     string   `json:"criterion_name,omitempty"`
}

// Get returns a config attribute.
func (c *Checkpoint) Get(name string) (interface{}, bool) {
	for _, e := range c.Config {
		if e.Key == name {
			return e.Value, true
		}
	}
	return nil, false
}

// OpenCheckpoint opens a torch file and interprets it as a fairseq checkpoint.
func OpenCheckpoint(path string) (*Checkpoint, error) {
	f, err := Open(path)
	if err != nil {
		return nil, err
	}
	ck, err := Interpret(f)
	if err != nil {
		f.Close()
		return nil, err
	}
	return ck, nil
}

// Interpret reads the fairseq schema of an opened torch file.
func Interpret(f *File) (*Checkpoint, error) {
	fail := func(format string, a ...interface{}) error {
		return fmt.Errorf("fairseqpt: %s: %w: %s", f.Path, ErrNotFairseq, fmt.Sprintf(format, a...))
	}
	top, ok := Entries(f.Root)
	if !ok {
		return nil, fail("the pickled object is %s, not a dict", typeName(f.Root))
	}
	ck := &Checkpoint{File: f}
	modelV, ok := DictGet(f.Root, "model")
	if !ok {
		keys := make([]string, 0, len(top))
		for _, e := range top {
			keys = append(keys, e.Key)
		}
		return nil, fail("no \"model\" entry (top-level keys %v)", keys)
	}
	state, ok := Entries(modelV)
	if !ok {
		return nil, fail("\"model\" is %s, not a state dict", typeName(modelV))
	}
	for _, e := range state {
		t, ok := e.Value.(*Tensor)
		if !ok {
			return nil, fail("model entry %q is %s, not a tensor", e.Key, typeName(e.Value))
		}
		ck.State = append(ck.State, NamedTensor{e.Key, t})
	}

	if len(ck.State) == 0 {
		return nil, fail("the \"model\" state dict holds no tensors")
	}
	args, _ := DictGet(f.Root, "args")
	cfg, _ := DictGet(f.Root, "cfg")
	switch {
	case isNamespace(args):
		ck.Generation = GenArgs
		ck.Config, _ = Entries(args)
	case cfg != nil:
		ck.Generation = GenCfg
		if o, ok := cfg.(*Object); ok && o.Class.Module == "omegaconf.dictconfig" {
			ck.Generation = GenDictConfig
		}
		plain := PlainConfig(cfg)
		m, ok := DictGet(plain, "model")
		if !ok || m == nil {
			return nil, fail("cfg has no model section")
		}
		ck.Config = flattenModelConfig(m)
		if task, ok := DictGet(plain, "task"); ok {
			te, _ := Entries(task)
			for _, e := range te {
				if _, dup := ck.Get(e.Key); !dup && e.Key != "_name" {
					ck.Config = append(ck.Config, e)
				}
			}
		}
	default:
		ck.Generation = GenWeights
	}

	if _, ok := DictGet(f.Root, "last_optimizer_state"); ok {
		ck.OptimizerState = true
	}
	ck.Progress = readProgress(f.Root)
	return ck, nil
}

func isNamespace(v interface{}) bool {
	o, ok := v.(*Object)
	return ok && o.Is("argparse", "Namespace")
}

func typeName(v interface{}) string {
	switch x := v.(type) {
	case nil:
		return "None"
	case *Object:
		return x.Class.String() + " object"
	case *Global:
		return "a reference to " + x.String()
	}
	return fmt.Sprintf("%T", v)
}

// flattenModelConfig turns cfg["model"] into flat fairseq attribute names. A Namespace (the
// legacy --arch path) is already flat; the dataclass form nests encoder/decoder groups.
func flattenModelConfig(m interface{}) []Entry {
	es, _ := Entries(m)
	var out []Entry
	for _, e := range es {
		if sub, ok := e.Value.(*types.Dict); ok && (e.Key == "encoder" || e.Key == "decoder") {
			se, _ := Entries(sub)
			for _, s := range se {
				out = append(out, Entry{e.Key + "_" + s.Key, s.Value})
			}
			continue
		}
		out = append(out, e)
	}
	if name, ok := DictGet(m, "_name"); ok {
		if _, has := DictGet(m, "arch"); !has {
			out = append(out, Entry{"arch", name})
		}
	}
	return out
}

// PlainConfig converts omegaconf containers (pickled DictConfig/ListConfig and their value
// nodes) and Namespaces inside a cfg into plain dicts, lists and scalars.
func PlainConfig(v interface{}) interface{} {
	switch x := v.(type) {
	case *Object:
		switch {
		case x.Class.Module == "omegaconf.dictconfig" || x.Class.Module == "omegaconf.listconfig":
			content, _ := x.Attr("_content")
			return PlainConfig(content)
		case len(x.Class.Module) >= 14 && x.Class.Module[:14] == "omegaconf.node":
			val, _ := x.Attr("_val")
			return PlainConfig(val)
		case x.Is("argparse", "Namespace"):
			d := types.NewDict()
			es, _ := Entries(x)
			for _, e := range es {
				d.Set(e.Key, PlainConfig(e.Value))
			}
			return d
		}
		return x
	case *types.Dict:
		d := types.NewDict()
		for _, e := range *x {
			d.Set(e.Key, PlainConfig(e.Value))
		}
		return d
	case *types.List:
		l := make(types.List, len(*x))
		for i, e := range *x {
			l[i] = PlainConfig(e)
		}
		return &l
	}
	return v
}

func readProgress(root interface{}) Progress {
	var p Progress
	if ex, ok := DictGet(root, "extra_state"); ok {
		if ti, ok := DictGet(ex, "train_iterator"); ok {
			p.Epoch = asInt(get(ti, "epoch"))
			p.IterationsInEpoch = asInt(get(ti, "iterations_in_epoch"))
		}
		p.ValLoss = asFloatPtr(get(ex, "val_loss"))
		p.BestLoss = asFloatPtr(get(ex, "best"))
	}
	if h, ok := DictGet(root, "optimizer_history"); ok {
		if l, ok := h.(*types.List); ok && l.Len() > 0 {
			last := l.Get(l.Len() - 1)
			p.Updates = asInt(get(last, "num_updates"))
			p.OptimizerName, _ = get(last, "optimizer_name").(string)
			p.CriterionName, _ = get(last, "criterion_name").(string)
		}
	}
	if os, ok := DictGet(root, "last_optimizer_state"); ok {
		p.LossScale = asFloatPtr(get(os, "loss_scale"))
		if pg, ok := DictGet(os, "param_groups"); ok {
			if l, ok := pg.(*types.List); ok && l.Len() > 0 {
				p.LR = asFloatPtr(get(l.Get(0), "lr"))
			}
		}
	}
	return p
}

func get(m interface{}, key string) interface{} {
	v, _ := DictGet(m, key)
	return v
}

func asInt(v interface{}) int {
	switch x := v.(type) {
	case int:
		return x
	case *big.Int:
		if x.IsInt64() {
			return int(x.Int64())
		}
	case float64:
		return int(x)
	}
	return 0
}

func asFloatPtr(v interface{}) *float64 {
	switch x := v.(type) {
	case float64:
		return &x
	case int:
		f := float64(x)
		return &f
	}
	return nil
}
