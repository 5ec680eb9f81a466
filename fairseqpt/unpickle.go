package fairseqpt

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/big"
	"strings"

	"github.com/nlpodyssey/gopickle/pickle"
	"github.com/nlpodyssey/gopickle/types"
)

// unpickler decodes one pickle with xform's class resolution. It records every global the
// pickle names, so inspect can list them.
type unpickler struct {
	path    string
	globals map[string]bool // module.name of every GLOBAL/INST opcode
	// persistent resolves a torch persistent id tuple to a *Storage.
	persistent func(pid *types.Tuple) (*Storage, error)
}

// load scans and then decodes data, which must hold exactly one pickle (trailing bytes are
// allowed and ignored by the caller that splits legacy files).
func (u *unpickler) load(data []byte) (v interface{}, err error) {
	if _, err := scanPickle(data, u.noteGlobal); err != nil {
		return nil, err
	}
	defer func() {
		// gopickle panics on a few malformed inputs (unhashable set keys and the like);
		// a checkpoint is untrusted, so turn any of them into an error.
		if r := recover(); r != nil {
			v, err = nil, fmt.Errorf("%w: malformed pickle: %v", ErrCorrupt, r)
		}
	}()
	up := pickle.NewUnpickler(bytes.NewReader(data))
	up.FindClass = u.findClass
	up.PersistentLoad = func(pid interface{}) (interface{}, error) {
		t, ok := pid.(*types.Tuple)
		if !ok {
			return nil, fmt.Errorf("%w: persistent id is %T, want a tuple", ErrCorrupt, pid)
		}
		if u.persistent == nil {
			return nil, fmt.Errorf("%w: persistent id in a pickle that cannot have storages", ErrCorrupt)
		}
		return u.persistent(t)
	}
	up.GetExtension = func(code int) (interface{}, error) {
		return nil, fmt.Errorf("%w: pickle extension registry code %d", ErrUnsupported, code)
	}
	up.NextBuffer = func() (interface{}, error) {
		return nil, fmt.Errorf("%w: out-of-band pickle buffers", ErrUnsupported)
	}
	v, err = up.Load()
	if err != nil {
		for _, sentinel := range []error{ErrTruncated, ErrCorrupt, ErrUnsupported, ErrNotTorch} {
			if errors.Is(err, sentinel) {
				return nil, err
			}
		}
		return nil, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	return v, nil
}

func (u *unpickler) noteGlobal(module, name string) {
	switch module {
	case "__builtin__":
		module = "builtins"
	case "copy_reg":
		module = "copyreg"
	}
	u.globals[module+"."+name] = true
}

// findClass is the allowlist. Known classes map to inert Go values that build data; every
// other name becomes a *Global whose "calls" only record their arguments.
func (u *unpickler) findClass(module, name string) (interface{}, error) {
	// Protocol-2 pickles written by Python 3 use Python-2 module names.
	switch module {
	case "__builtin__":
		module = "builtins"
	case "copy_reg":
		module = "copyreg"
	}
	u.noteGlobal(module, name) // STACK_GLOBAL names are only seen here
	switch module {
	case "torch":
		if dt, ok := storageDTypes[name]; ok {
			return &storageClass{name: name, dtype: dt}, nil
		}
	case "torch._utils":
		switch name {
		case "_rebuild_tensor_v2", "_rebuild_tensor":
			return callable(u.rebuildTensor), nil
		case "_rebuild_parameter":
			return callable(rebuildParameter), nil
		}
	case "collections":
		switch name {
		case "OrderedDict":
			return callable(newOrderedDict), nil
		case "defaultdict":
			return callable(func(args ...interface{}) (interface{}, error) { return types.NewDict(), nil }), nil
		}
	case "builtins":
		switch name {
		case "set":
			return callable(func(args ...interface{}) (interface{}, error) { return newSet(args) }), nil
		case "frozenset":
			return callable(func(args ...interface{}) (interface{}, error) { return newSet(args) }), nil
		case "object":
			return &types.ObjectClass{}, nil
		}
	case "copyreg":
		if name == "_reconstructor" {
			return &types.Reconstructor{}, nil
		}
	case "_codecs":
		if name == "encode" {
			return callable(codecsEncode), nil
		}
	case "numpy.core.multiarray", "numpy._core.multiarray":
		if name == "scalar" {
			return callable(numpyScalar), nil
		}
	}
	// argparse.Namespace, fairseq.meters.*, omegaconf containers, numpy dtypes and arrays, and
	// anything unknown: inert records (the schema layer reads their attributes).
	return &Global{Module: module, Name: name}, nil
}

type callable func(args ...interface{}) (interface{}, error)

func (c callable) Call(args ...interface{}) (interface{}, error) { return c(args...) }

func newOrderedDict(args ...interface{}) (interface{}, error) {
	d := types.NewOrderedDict()
	if len(args) == 0 {
		return d, nil
	}
	// OrderedDict([(k, v), ...]) as some writers emit it.
	l, ok := args[0].(*types.List)
	if !ok || len(args) > 1 {
		return nil, fmt.Errorf("%w: OrderedDict called with %d args", ErrCorrupt, len(args))
	}
	for _, it := range *l {
		kv, ok := it.(*types.Tuple)
		if !ok || kv.Len() != 2 {
			return nil, fmt.Errorf("%w: OrderedDict item is not a pair", ErrCorrupt)
		}
		d.Set(kv.Get(0), kv.Get(1))
	}
	return d, nil
}

func newSet(args []interface{}) (interface{}, error) {
	s := types.NewSet()
	if len(args) == 0 {
		return s, nil
	}
	l, ok := args[0].(*types.List)
	if !ok {
		return nil, fmt.Errorf("%w: set() of %T", ErrCorrupt, args[0])
	}
	for _, v := range *l {
		s.Add(v)
	}
	return s, nil
}

// codecsEncode is _codecs.encode(str, 'latin1'), how protocol 2 spells bytes objects.
func codecsEncode(args ...interface{}) (interface{}, error) {
	if len(args) < 1 {
		return nil, fmt.Errorf("%w: _codecs.encode without arguments", ErrCorrupt)
	}
	s, ok := args[0].(string)
	if !ok {
		return nil, fmt.Errorf("%w: _codecs.encode of %T", ErrCorrupt, args[0])
	}
	out := make([]byte, 0, len(s))
	for _, r := range s {
		if r > 0xff {
			return nil, fmt.Errorf("%w: _codecs.encode: rune %U is not latin-1", ErrCorrupt, r)
		}
		out = append(out, byte(r))
	}
	return out, nil
}

// numpyScalar decodes numpy.core.multiarray.scalar(dtype, bytes) for the dtypes fairseq's
// metrics use; others stay an inert record.
func numpyScalar(args ...interface{}) (interface{}, error) {
	rec := &Object{Class: &Global{"numpy.core.multiarray", "scalar"}, Args: args, Reduced: true}
	if len(args) != 2 {
		return rec, nil
	}
	dt, ok := args[0].(*Object)
	if !ok || len(dt.Args) == 0 {
		return rec, nil
	}
	code, _ := dt.Args[0].(string)
	var raw []byte
	switch b := args[1].(type) {
	case []byte:
		raw = b
	case string:
		raw = []byte(b)
	}
	le := binary.LittleEndian
	switch {
	case code == "f8" && len(raw) == 8:
		return math.Float64frombits(le.Uint64(raw)), nil
	case code == "f4" && len(raw) == 4:
		return float64(math.Float32frombits(le.Uint32(raw))), nil
	case code == "i8" && len(raw) == 8:
		return int(int64(le.Uint64(raw))), nil
	case code == "i4" && len(raw) == 4:
		return int(int32(le.Uint32(raw))), nil
	case code == "b1" && len(raw) == 1:
		return raw[0] != 0, nil
	}
	return rec, nil
}

func toInt64(v interface{}) (int64, bool) {
	switch x := v.(type) {
	case int:
		return int64(x), true
	case *big.Int:
		if x.IsInt64() {
			return x.Int64(), true
		}
	case bool:
		if x {
			return 1, true
		}
		return 0, true
	}
	return 0, false
}

func intTuple(v interface{}, what string) ([]int64, error) {
	t, ok := v.(*types.Tuple)
	if !ok {
		return nil, fmt.Errorf("%w: tensor %s is %T, want a tuple", ErrCorrupt, what, v)
	}
	out := make([]int64, t.Len())
	for i := range out {
		n, ok := toInt64(t.Get(i))
		if !ok {
			return nil, fmt.Errorf("%w: tensor %s element %d is %T", ErrCorrupt, what, i, t.Get(i))
		}
		out[i] = n
	}
	return out, nil
}

// rebuildTensor implements _rebuild_tensor_v2(storage, offset, size, stride, requires_grad,
// hooks[, metadata]) and v1's first four arguments. Only data is built.
func (u *unpickler) rebuildTensor(args ...interface{}) (interface{}, error) {
	if len(args) < 4 || len(args) > 7 {
		return nil, fmt.Errorf("%w: _rebuild_tensor with %d arguments", ErrCorrupt, len(args))
	}
	st, ok := args[0].(*Storage)
	if !ok {
		return nil, fmt.Errorf("%w: _rebuild_tensor storage is %T", ErrCorrupt, args[0])
	}
	off, ok := toInt64(args[1])
	if !ok {
		return nil, fmt.Errorf("%w: _rebuild_tensor offset is %T", ErrCorrupt, args[1])
	}
	size, err := intTuple(args[2], "size")
	if err != nil {
		return nil, err
	}
	stride, err := intTuple(args[3], "stride")
	if err != nil {
		return nil, err
	}
	t := &Tensor{Storage: st, Offset: off, Stride: stride, Shape: make([]int, len(size))}
	for i, s := range size {
		if s < 0 || s > math.MaxInt32*64 {
			return nil, fmt.Errorf("%w: tensor dimension %d", ErrCorrupt, s)
		}
		t.Shape[i] = int(s)
	}
	if len(args) > 4 {
		t.RequiresGrad, _ = args[4].(bool)
	}
	if err := t.validate(); err != nil {
		return nil, err
	}
	return t, nil
}

// rebuildParameter unwraps _rebuild_parameter(data, requires_grad, hooks): a Parameter is its data.
func rebuildParameter(args ...interface{}) (interface{}, error) {
	if len(args) < 1 {
		return nil, fmt.Errorf("%w: _rebuild_parameter without data", ErrCorrupt)
	}
	t, ok := args[0].(*Tensor)
	if !ok {
		return nil, fmt.Errorf("%w: _rebuild_parameter of %T", ErrCorrupt, args[0])
	}
	if len(args) > 1 {
		t.RequiresGrad, _ = args[1].(bool)
	}
	return t, nil
}

// parsePID validates a storage persistent id: ('storage', class, key, location, numel[, view]).
func parsePID(pid *types.Tuple, legacy bool) (cls *storageClass, key, loc string, numel int64, err error) {
	want := 5
	if legacy {
		want = 6
	}
	if pid.Len() != want {
		return nil, "", "", 0, fmt.Errorf("%w: storage persistent id has %d fields, want %d", ErrCorrupt, pid.Len(), want)
	}
	if s, _ := pid.Get(0).(string); s != "storage" {
		if s == "module" {
			return nil, "", "", 0, fmt.Errorf("%w: pickled nn.Module source (torch.save of a whole model)", ErrUnsupported)
		}
		return nil, "", "", 0, fmt.Errorf("%w: persistent id kind %v", ErrCorrupt, pid.Get(0))
	}
	cls, ok := pid.Get(1).(*storageClass)
	if !ok {
		return nil, "", "", 0, fmt.Errorf("%w: persistent id storage type %v is not a known torch storage class", ErrUnsupported, pid.Get(1))
	}
	key, ok = pid.Get(2).(string)
	if !ok {
		return nil, "", "", 0, fmt.Errorf("%w: storage key is %T", ErrCorrupt, pid.Get(2))
	}
	loc, _ = pid.Get(3).(string)
	numel, ok = toInt64(pid.Get(4))
	if !ok || numel < 0 {
		return nil, "", "", 0, fmt.Errorf("%w: storage %s element count %v", ErrCorrupt, key, pid.Get(4))
	}
	if legacy && pid.Get(5) != nil {
		return nil, "", "", 0, fmt.Errorf("%w: legacy storage views (storage %s)", ErrUnsupported, key)
	}
	if strings.ContainsAny(key, "/\\") {
		return nil, "", "", 0, fmt.Errorf("%w: storage key %q", ErrCorrupt, key)
	}
	return cls, key, loc, numel, nil
}
