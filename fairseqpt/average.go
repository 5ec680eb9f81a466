package fairseqpt

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"

	"github.com/nlpodyssey/gopickle/types"
	"github.com/xform-dev/xform/tensor"
)

// ErrAverage wraps checkpoints that cannot be averaged together.
var ErrAverage = errors.New("cannot average checkpoints")

var (
	epochCheckpoint  = regexp.MustCompile(`^checkpoint(\d+)\.pt$`)
	updateCheckpoint = regexp.MustCompile(`^checkpoint_\d+_(\d+)\.pt$`)
)

// LastCheckpoints selects the n newest checkpoints in dir as fairseq's
// average_checkpoints.py does: checkpoint<epoch>.pt (or checkpoint_<epoch>_<update>.pt
// when byUpdate), numbers ≤ upperBound when upperBound ≥ 0, newest first.
func LastCheckpoints(dir string, n int, byUpdate bool, upperBound int) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("fairseqpt: %w", err)
	}
	re := epochCheckpoint
	if byUpdate {
		re = updateCheckpoint
	}
	type cand struct {
		num  int
		name string
	}
	var cs []cand
	for _, e := range ents {
		m := re.FindStringSubmatch(e.Name())
		if m == nil {
			continue
		}
		k, err := strconv.Atoi(m[1])
		if err != nil || (upperBound >= 0 && k > upperBound) {
			continue
		}
		cs = append(cs, cand{k, e.Name()})
	}
	sort.Slice(cs, func(i, j int) bool { return cs[i].num > cs[j].num })
	if len(cs) < n {
		return nil, fmt.Errorf("fairseqpt: %s: %w: found %d checkpoints matching %s, need %d", dir, ErrAverage, len(cs), re, n)
	}
	out := make([]string, n)
	for i := range out {
		out[i] = filepath.Join(dir, cs[i].name)
	}
	return out, nil
}

// Averaged is the result of Average: the checkpoint object to write, and the source
// files, which must stay open until it is written (its non-model entries are read lazily).
type Averaged struct {
	Root  interface{}
	files []*File
}

// Close releases the source files.
func (a *Averaged) Close() error {
	var first error
	for _, f := range a.files {
		if err := f.Close(); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// Average averages the "model" state dicts of the checkpoints at paths as fairseq's
// average_checkpoints does: every entry widened to float32 (half → float first), summed in
// the order given in float32, then divided by the count; the keys of every file must be the
// same, in the same order. Everything else comes from the first file (the newest, when the
// list comes from LastCheckpoints). Tied entries become separate tensors, as fairseq's
// clone() leaves them.
func Average(paths []string) (*Averaged, error) {
	if len(paths) == 0 {
		return nil, fmt.Errorf("fairseqpt: %w: no checkpoints", ErrAverage)
	}
	av := &Averaged{}
	var keys []string
	var sums [][]float32
	var shapes [][]int
	for i, p := range paths {
		f, err := Open(p)
		if err != nil {
			av.Close()
			return nil, err
		}
		if i == 0 {
			av.files = append(av.files, f)
		}
		es, err := modelEntries(f)
		if err != nil {
			av.Close()
			f.Close()
			return nil, err
		}
		if i == 0 {
			for _, e := range es {
				keys = append(keys, e.Key)
			}
			sums = make([][]float32, len(es))
			shapes = make([][]int, len(es))
		} else if len(es) != len(keys) {
			f.Close()
			av.Close()
			return nil, fmt.Errorf("fairseqpt: %s: %w: %d model entries, %s has %d", p, ErrAverage, len(es), paths[0], len(keys))
		}
		for j, e := range es {
			if e.Key != keys[j] {
				f.Close()
				av.Close()
				return nil, fmt.Errorf("fairseqpt: %s: %w: model entry %d is %s, %s has %s", p, ErrAverage, j, e.Key, paths[0], keys[j])
			}
			t := e.Value.(*Tensor)
			if !t.DType().IsFloat() {
				f.Close()
				av.Close()
				return nil, fmt.Errorf("fairseqpt: %s: %w: %s is %s, not floating point", p, ErrAverage, e.Key, t.DType())
			}
			m, err := t.Materialize()
			if err != nil {
				f.Close()
				av.Close()
				return nil, err
			}
			v, err := m.F32()
			if err != nil {
				f.Close()
				av.Close()
				return nil, fmt.Errorf("fairseqpt: %s: %s: %w", p, e.Key, err)
			}
			if i == 0 {
				sums[j], shapes[j] = v, m.Shape
				continue
			}
			if !tensor.ShapeEqual(m.Shape, shapes[j]) {
				f.Close()
				av.Close()
				return nil, fmt.Errorf("fairseqpt: %s: %w: %s has shape %v, %s has %v", p, ErrAverage, e.Key, m.Shape, paths[0], shapes[j])
			}
			s := sums[j]
			for k := range s {
				s[k] += v[k] // float32 accumulation in file order, as torch's +=
			}
		}
		if i > 0 {
			f.Close()
		}
	}
	n := float32(len(paths))
	avg := types.NewOrderedDict()
	for j, k := range keys {
		s := sums[j]
		t := &tensor.Tensor{DType: tensor.F32, Shape: shapes[j], Data: make([]byte, 4*len(s))}
		for i, x := range s {
			binary.LittleEndian.PutUint32(t.Data[4*i:], math.Float32bits(x/n))
		}
		avg.Set(k, t)
	}
	// The first checkpoint's top level, with the averaged model in place of its own.
	top, _ := Entries(av.files[0].Root)
	root := types.NewDict()
	for _, e := range top {
		if e.Key == "model" {
			root.Set("model", avg)
			continue
		}
		root.Set(e.Key, e.Value)
	}
	av.Root = root
	return av, nil
}

func modelEntries(f *File) ([]Entry, error) {
	m, ok := DictGet(f.Root, "model")
	if !ok {
		return nil, fmt.Errorf("fairseqpt: %s: %w: no \"model\" entry", f.Path, ErrNotFairseq)
	}
	es, ok := Entries(m)
	if !ok {
		return nil, fmt.Errorf("fairseqpt: %s: %w: \"model\" is not a dict", f.Path, ErrNotFairseq)
	}
	for _, e := range es {
		if _, ok := e.Value.(*Tensor); !ok {
			return nil, fmt.Errorf("fairseqpt: %s: %w: model entry %s is not a tensor", f.Path, ErrNotFairseq, e.Key)
		}
	}
	return es, nil
}
