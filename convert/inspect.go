package convert

import (
	"fmt"
	"math"
	"math/big"
	"sort"
	"strings"

	"github.com/nlpodyssey/gopickle/types"
	"github.com/xform-dev/xform/fairseqpt"
	"github.com/xform-dev/xform/model"
	"github.com/xform-dev/xform/tensor"
)

// Report is what `xform inspect` shows: the container, the fairseq schema, the model it
// maps to, Admin ω per branch, training progress and every pickle global.
type Report struct {
	File          string              `json:"file"`
	Bytes         int64               `json:"bytes"`
	Kind          string              `json:"kind"` // fairseq | xform
	Container     string              `json:"container,omitempty"`
	ArchiveFolder string              `json:"archive_folder,omitempty"`
	Generation    string              `json:"generation,omitempty"`
	GenerationDoc string              `json:"generation_doc,omitempty"`
	TopLevelKeys  []string            `json:"top_level_keys,omitempty"`
	Config        model.Config        `json:"config"`
	Params        int                 `json:"parameters"`
	ParamBytes    int64               `json:"parameter_bytes"`
	DTypes        []string            `json:"dtypes"`
	State         []StateEntry        `json:"state,omitempty"` // fairseq state dict as stored
	Args          map[string]any      `json:"args,omitempty"`
	Omega         []OmegaStat         `json:"admin_omega,omitempty"`
	Optimizer     bool                `json:"optimizer_state"`
	Progress      *fairseqpt.Progress `json:"training,omitempty"`
	Globals       []string            `json:"pickle_globals,omitempty"`
	Unknown       []string            `json:"unknown_globals,omitempty"`
	Dropped       []string            `json:"dropped_entries,omitempty"`
	SrcDict       string              `json:"src_dict,omitempty"`
	TgtDict       string              `json:"tgt_dict,omitempty"`
	Profile       string              `json:"admin_profile,omitempty"`
}

// StateEntry is one stored state-dict tensor.
type StateEntry struct {
	Name  string       `json:"name"`
	Shape []int        `json:"shape"`
	DType tensor.DType `json:"dtype"`
}

// OmegaStat summarises one Admin ω vector. The values are float32 numbers widened exactly.
type OmegaStat struct {
	Name  string  `json:"name"`
	First float64 `json:"first"`
	Mean  float64 `json:"mean"`
	Min   float64 `json:"min"`
	Max   float64 `json:"max"`
}

// knownGlobals are the classes the reader maps to data; anything else is listed as unknown.
var knownGlobals = map[string]bool{
	"argparse.Namespace": true, "collections.OrderedDict": true, "collections.defaultdict": true,
	"torch._utils._rebuild_tensor_v2": true, "torch._utils._rebuild_tensor": true, "torch._utils._rebuild_parameter": true,
	"fairseq.meters.AverageMeter": true, "fairseq.meters.TimeMeter": true, "fairseq.meters.StopwatchMeter": true,
	"builtins.set": true, "builtins.frozenset": true, "builtins.object": true, "copyreg._reconstructor": true, "_codecs.encode": true,
	"numpy.core.multiarray.scalar": true, "numpy._core.multiarray.scalar": true, "numpy.dtype": true,
	"numpy.core.multiarray._reconstruct": true, "numpy._core.multiarray._reconstruct": true, "numpy.ndarray": true,
}

func isKnownGlobal(g string) bool {
	if knownGlobals[g] {
		return true
	}
	if len(g) > 6 && g[:6] == "torch." {
		if _, ok := map[string]bool{"torch.FloatStorage": true, "torch.HalfStorage": true, "torch.BFloat16Storage": true,
			"torch.DoubleStorage": true, "torch.LongStorage": true, "torch.IntStorage": true, "torch.ShortStorage": true,
			"torch.CharStorage": true, "torch.ByteStorage": true, "torch.BoolStorage": true}[g]; ok {
			return true
		}
	}
	return len(g) > 10 && g[:10] == "omegaconf." || len(g) > 15 && g[:15] == "fairseq.logging"
}

var generationDocs = map[fairseqpt.Generation]string{
	fairseqpt.GenArgs:       "args = argparse.Namespace (fairseq ≤0.10, Transformer-Clinic)",
	fairseqpt.GenDictConfig: "cfg = pickled omegaconf DictConfig (fairseq master 2020-10…2021-03)",
	fairseqpt.GenCfg:        "cfg = plain dicts, args None (fairseq 0.12)",
	fairseqpt.GenWeights:    "state dict only, no config",
}

// Inspect reports on a checkpoint or model directory. Of a fairseq checkpoint it reads only the
// Admin ω vectors' data; every other tensor is checked by dtype and shape alone, so inspecting a
// large checkpoint costs little more than its pickle.
func Inspect(path string) (*Report, error) {
	im, err := importWith(path, func(name string) bool { return strings.HasSuffix(name, "_ratio_change") })
	if err != nil {
		return nil, err
	}
	defer im.Close()
	m := im.Model
	r := &Report{File: im.Source, Kind: im.Kind, Config: m.Config, Params: m.NumParams(), Optimizer: false,
		Dropped: im.Dropped, SrcDict: im.SrcDict, TgtDict: im.TgtDict, Profile: im.Profile}
	dts := map[string]bool{}
	for _, t := range m.Params {
		r.ParamBytes += int64(t.Numel() * t.DType.Size())
		dts[string(t.DType)] = true
	}
	for d := range dts {
		r.DTypes = append(r.DTypes, d)
	}
	sort.Strings(r.DTypes)
	if ck := im.Checkpoint; ck != nil {
		r.Bytes = ck.Size
		r.Container = string(ck.Format)
		r.ArchiveFolder = ck.Prefix
		r.Generation = string(ck.Generation)
		r.GenerationDoc = generationDocs[ck.Generation]
		top, _ := fairseqpt.Entries(ck.Root)
		for _, e := range top {
			r.TopLevelKeys = append(r.TopLevelKeys, e.Key)
		}
		for _, nt := range ck.State {
			r.State = append(r.State, StateEntry{nt.Name, nt.Tensor.Shape, nt.Tensor.DType()})
		}
		if ck.Generation == fairseqpt.GenArgs {
			r.Args = map[string]any{}
			for _, e := range ck.Config {
				r.Args[e.Key] = plainJSON(e.Value)
			}
		}
		r.Optimizer = ck.OptimizerState
		p := ck.Progress
		r.Progress = &p
		r.Globals = ck.Globals
		for _, g := range ck.Globals {
			if !isKnownGlobal(g) {
				r.Unknown = append(r.Unknown, g)
			}
		}
	}
	r.Omega, err = OmegaStats(m)
	if err != nil {
		return nil, err
	}
	return r, nil
}

// OmegaStats summarises every Admin ω vector in canonical order.
func OmegaStats(m *model.Model) ([]OmegaStat, error) {
	var out []OmegaStat
	for _, p := range m.Config.Expected() {
		if len(p.Name) < 6 || p.Name[len(p.Name)-6:] != "_omega" {
			continue
		}
		v, err := m.Params[p.Name].F32()
		if err != nil {
			return nil, fmt.Errorf("convert: %s: %w", p.Name, err)
		}
		s := OmegaStat{Name: p.Name, First: float64(v[0]), Min: math.Inf(1), Max: math.Inf(-1)}
		for _, x := range v {
			f := float64(x)
			s.Mean += f
			s.Min = math.Min(s.Min, f)
			s.Max = math.Max(s.Max, f)
		}
		s.Mean /= float64(len(v))
		out = append(out, s)
	}
	return out, nil
}

// plainJSON renders pickle values as JSON-friendly data.
func plainJSON(v interface{}) interface{} {
	switch x := v.(type) {
	case nil, bool, int, float64, string:
		if f, ok := x.(float64); ok && (math.IsInf(f, 0) || math.IsNaN(f)) {
			return fmt.Sprint(f)
		}
		return x
	case *big.Int:
		return x.String()
	case []byte:
		return string(x)
	case *types.List:
		out := make([]interface{}, len(*x))
		for i, e := range *x {
			out[i] = plainJSON(e)
		}
		return out
	case *types.Tuple:
		out := make([]interface{}, len(*x))
		for i, e := range *x {
			out[i] = plainJSON(e)
		}
		return out
	case *types.Dict, *types.OrderedDict:
		es, _ := fairseqpt.Entries(x)
		out := map[string]interface{}{}
		for _, e := range es {
			out[e.Key] = plainJSON(e.Value)
		}
		return out
	case *fairseqpt.Tensor:
		return x.String()
	case *fairseqpt.Object:
		return "<" + x.Class.String() + ">"
	case *fairseqpt.Global:
		return "<" + x.String() + ">"
	}
	return fmt.Sprintf("<%T>", v)
}
