package fairseqpt

import (
	"fmt"
	"sort"

	"github.com/nlpodyssey/gopickle/types"
)

// A decoded pickle is a tree of these Go values:
//
//	nil, bool, int, *big.Int, float64, string, []byte
//	*types.List, *types.Tuple, *types.Dict (ordered), *types.OrderedDict, *types.Set, *types.FrozenSet
//	*Object  — an instance of a Python class (argparse.Namespace, fairseq.meters.*, omegaconf
//	           containers, numpy arrays, or any unknown class), kept as inert data
//	*Global  — a reference to a Python class or function that was never called
//	*Tensor  — a lazy view onto a *Storage
//
// Nothing in the tree can run code.

// Global is a reference to module.name found in the pickle. Calling or instantiating it only
// records the arguments in an *Object.
type Global struct {
	Module, Name string
}

func (g *Global) String() string { return g.Module + "." + g.Name }

// Call records a REDUCE of an unknown callable as inert data.
func (g *Global) Call(args ...interface{}) (interface{}, error) {
	return &Object{Class: g, Args: args, Reduced: true}, nil
}

// PyNew records a NEWOBJ.
func (g *Global) PyNew(args ...interface{}) (interface{}, error) {
	return &Object{Class: g, Args: args}, nil
}

// Object is an inert instance: its class, constructor arguments and state. Attributes set
// through BUILD with a dict land in Attrs, in pickle order; any other state in State.
type Object struct {
	Class   *Global
	Args    []interface{}
	Reduced bool // made by REDUCE (a call) rather than NEWOBJ
	Attrs   *types.Dict
	State   interface{}
}

// PySetState implements BUILD.
func (o *Object) PySetState(state interface{}) error {
	if d, ok := state.(*types.Dict); ok {
		if o.Attrs == nil {
			o.Attrs = types.NewDict()
		}
		for _, e := range *d {
			o.Attrs.Set(e.Key, e.Value)
		}
		return nil
	}
	// (dict, slots) tuples, as CPython writes for objects with __slots__
	if t, ok := state.(*types.Tuple); ok && t.Len() == 2 {
		if d, ok := t.Get(0).(*types.Dict); ok {
			if err := o.PySetState(d); err != nil {
				return err
			}
			if s, ok := t.Get(1).(*types.Dict); ok {
				return o.PySetState(s)
			}
			return nil
		}
	}
	o.State = state
	return nil
}

// Attr returns attribute name (from BUILD state).
func (o *Object) Attr(name string) (interface{}, bool) {
	if o == nil || o.Attrs == nil {
		return nil, false
	}
	return o.Attrs.Get(name)
}

// Is reports whether the object's class is module.name.
func (o *Object) Is(module, name string) bool {
	return o != nil && o.Class != nil && o.Class.Module == module && o.Class.Name == name
}

func (o *Object) String() string { return fmt.Sprintf("<%s object>", o.Class) }

// DictGet returns d[key] for string keys of a *types.Dict or *types.OrderedDict, or an
// *Object's attribute.
func DictGet(d interface{}, key string) (interface{}, bool) {
	switch m := d.(type) {
	case *types.Dict:
		for _, e := range *m {
			if k, ok := e.Key.(string); ok && k == key {
				return e.Value, true
			}
		}
	case *types.OrderedDict:
		if e, ok := m.Map[key]; ok {
			return e.Value, true
		}
	case *Object:
		return m.Attr(key)
	}
	return nil, false
}

// Entry is one key/value pair of a mapping, in order.
type Entry struct {
	Key   string
	Value interface{}
}

// Entries lists the string-keyed entries of a dict, OrderedDict or object attributes in order;
// ok is false when v is not a mapping. Non-string keys are rendered with %v.
func Entries(v interface{}) ([]Entry, bool) {
	var out []Entry
	key := func(k interface{}) string {
		if s, ok := k.(string); ok {
			return s
		}
		return fmt.Sprint(k)
	}
	switch m := v.(type) {
	case *types.Dict:
		for _, e := range *m {
			out = append(out, Entry{key(e.Key), e.Value})
		}
	case *types.OrderedDict:
		for el := m.List.Front(); el != nil; el = el.Next() {
			e := el.Value.(*types.OrderedDictEntry)
			out = append(out, Entry{key(e.Key), e.Value})
		}
	case *Object:
		if m.Attrs == nil {
			return nil, true
		}
		return Entries(m.Attrs)
	default:
		return nil, false
	}
	return out, true
}

// sortedKeys is used where output must be deterministic over a Go map.
func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}
