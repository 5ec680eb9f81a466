package fairseqpt

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/big"
	"sort"

	"github.com/nlpodyssey/gopickle/types"
	"github.com/xform-dev/xform/tensor"
)

// ErrUnpicklable reports a value the protocol-2 pickler cannot write.
var ErrUnpicklable = errors.New("value cannot be pickled")

// Protocol-2 opcodes (pickletools names).
const (
	opMark        = '('
	opStop        = '.'
	opBinInt      = 'J'
	opBinInt1     = 'K'
	opBinInt2     = 'M'
	opNone        = 'N'
	opBinPersID   = 'Q'
	opReduce      = 'R'
	opBinUnicode  = 'X'
	opAppend      = 'a'
	opBuild       = 'b'
	opGlobal      = 'c'
	opAppends     = 'e'
	opBinGet      = 'h'
	opLongBinGet  = 'j'
	opEmptyList   = ']'
	opBinPut      = 'q'
	opLongBinPut  = 'r'
	opSetItem     = 's'
	opTuple       = 't'
	opSetItems    = 'u'
	opEmptyDict   = '}'
	opEmptyTuple  = ')'
	opBinFloat    = 'G'
	opProto       = 0x80
	opNewObj      = 0x81
	opTuple1      = 0x85
	opTuple2      = 0x86
	opTuple3      = 0x87
	opNewTrue     = 0x88
	opNewFalse    = 0x89
	opLong1       = 0x8a
	opLong4       = 0x8b
	pickleBatch   = 1000 // CPython's _BATCHSIZE for APPENDS/SETITEMS
	maxPickleNest = 10000
)

// storageSource is one storage to be written as data/<key>: a reader storage (kept with its
// views and bytes exactly) or a dense tensor made in memory.
type storageSource struct {
	key   string
	memo  int // memo index of the key string once written (torch reuses the str object)
	dtype tensor.DType
	numel int64
	src   *Storage       // from a file, or
	dense *tensor.Tensor // new data
}

func (s *storageSource) bytes() ([]byte, error) {
	if s.src != nil {
		return s.src.Bytes()
	}
	return s.dense.Data, nil
}

// pickler writes the value model of value.go as a protocol-2 pickle the way CPython's
// pickler and torch.save do: every str, tuple, list, dict, global and reduced object is
// memoized with BINPUT in creation order, and an object met again (same Go pointer) is a
// BINGET. Globals and the constants torch reuses ('storage', 'cpu') are memoized by value,
// as CPython sees them as one object. Nothing depends on Go map order, so the same tree
// always gives the same bytes.
type pickler struct {
	buf      bytes.Buffer
	nextMemo int
	memo     map[interface{}]int // pointer identity → memo index
	globals  map[string]int      // "module\nname" → memo index
	consts   map[string]int      // 'storage', 'cpu'
	storages []*storageSource
	byStore  map[*Storage]*storageSource
	byDense  map[*tensor.Tensor]*storageSource
	depth    int
}

func newPickler() *pickler {
	return &pickler{
		memo:    map[interface{}]int{},
		globals: map[string]int{},
		consts:  map[string]int{},
		byStore: map[*Storage]*storageSource{},
		byDense: map[*tensor.Tensor]*storageSource{},
	}
}

// Pickle returns the protocol-2 pickle of v and the storages it references, keyed "0",
// "1", … in first-reference order (tied tensors share one storage).
func Pickle(v interface{}) ([]byte, []*storageSource, error) {
	p := newPickler()
	p.buf.Write([]byte{opProto, 2})
	if err := p.save(v); err != nil {
		return nil, nil, err
	}
	p.buf.WriteByte(opStop)
	return p.buf.Bytes(), p.storages, nil
}

func (p *pickler) put() {
	i := p.nextMemo
	p.nextMemo++
	if i < 256 {
		p.buf.Write([]byte{opBinPut, byte(i)})
		return
	}
	var b [5]byte
	b[0] = opLongBinPut
	binary.LittleEndian.PutUint32(b[1:], uint32(i))
	p.buf.Write(b[:])
}

func (p *pickler) get(i int) {
	if i < 256 {
		p.buf.Write([]byte{opBinGet, byte(i)})
		return
	}
	var b [5]byte
	b[0] = opLongBinGet
	binary.LittleEndian.PutUint32(b[1:], uint32(i))
	p.buf.Write(b[:])
}

// memoized emits a BINGET and reports true when key was pickled before.
func (p *pickler) memoized(key interface{}) bool {
	if i, ok := p.memo[key]; ok {
		p.get(i)
		return true
	}
	return false
}

func (p *pickler) remember(key interface{}) {
	p.memo[key] = p.nextMemo
	p.put()
}

func (p *pickler) save(v interface{}) error {
	p.depth++
	defer func() { p.depth-- }()
	if p.depth > maxPickleNest {
		return fmt.Errorf("%w: nesting deeper than %d", ErrUnpicklable, maxPickleNest)
	}
	switch x := v.(type) {
	case nil:
		p.buf.WriteByte(opNone)
	case bool:
		if x {
			p.buf.WriteByte(opNewTrue)
		} else {
			p.buf.WriteByte(opNewFalse)
		}
	case int:
		p.saveInt(big.NewInt(int64(x)))
	case int64:
		p.saveInt(big.NewInt(x))
	case int32:
		p.saveInt(big.NewInt(int64(x)))
	case *big.Int:
		p.saveInt(x)
	case float64:
		var b [9]byte
		b[0] = opBinFloat
		binary.BigEndian.PutUint64(b[1:], math.Float64bits(x))
		p.buf.Write(b[:])
	case float32:
		return p.save(float64(x))
	case string:
		p.saveString(x)
		p.put()
	case []byte:
		return p.saveBytes(x)
	case *types.List:
		return p.saveList(x)
	case *types.Tuple:
		return p.saveTuple(x)
	case *types.Dict:
		return p.saveDict(x)
	case *types.OrderedDict:
		return p.saveOrderedDict(x)
	case *types.Set:
		return p.saveSet("set", x.Len(), func(f func(interface{})) {
			for k := range *x {
				f(k)
			}
		})
	case *types.FrozenSet:
		return p.saveSet("frozenset", x.Len(), func(f func(interface{})) {
			for k := range *x {
				f(k)
			}
		})
	case *Global:
		p.saveGlobal(x.Module, x.Name)
	case *Object:
		return p.saveObject(x)
	case *Tensor:
		return p.saveLazyTensor(x)
	case *tensor.Tensor:
		return p.saveDenseTensor(x)
	default:
		return fmt.Errorf("%w: Go type %T", ErrUnpicklable, v)
	}
	return nil
}

// saveInt follows CPython's save_long for protocol 2.
func (p *pickler) saveInt(x *big.Int) {
	if x.IsInt64() {
		n := x.Int64()
		switch {
		case n >= 0 && n <= 0xff:
			p.buf.Write([]byte{opBinInt1, byte(n)})
			return
		case n >= 0 && n <= 0xffff:
			p.buf.Write([]byte{opBinInt2, byte(n), byte(n >> 8)})
			return
		case n >= math.MinInt32 && n <= math.MaxInt32:
			var b [5]byte
			b[0] = opBinInt
			binary.LittleEndian.PutUint32(b[1:], uint32(int32(n)))
			p.buf.Write(b[:])
			return
		}
	}
	enc := encodeLong(x)
	if len(enc) < 256 {
		p.buf.Write([]byte{opLong1, byte(len(enc))})
	} else {
		var b [5]byte
		b[0] = opLong4
		binary.LittleEndian.PutUint32(b[1:], uint32(len(enc)))
		p.buf.Write(b[:])
	}
	p.buf.Write(enc)
}

// encodeLong is pickle.encode_long: little-endian two's complement, shortest form.
func encodeLong(x *big.Int) []byte {
	if x.Sign() == 0 {
		return nil
	}
	nbytes := (x.BitLen() >> 3) + 1
	v := new(big.Int).Set(x)
	if x.Sign() < 0 {
		// two's complement in nbytes bytes
		mod := new(big.Int).Lsh(big.NewInt(1), uint(8*nbytes))
		v.Add(v, mod)
	}
	be := v.FillBytes(make([]byte, nbytes))
	out := make([]byte, nbytes)
	for i := range be {
		out[i] = be[nbytes-1-i]
	}
	// CPython trims a redundant sign byte for negatives: -1 → ff, not ffff.
	if x.Sign() < 0 && nbytes > 1 && out[nbytes-1] == 0xff && out[nbytes-2]&0x80 != 0 {
		out = out[:nbytes-1]
	}
	return out
}

func (p *pickler) saveString(s string) {
	var b [5]byte
	b[0] = opBinUnicode
	binary.LittleEndian.PutUint32(b[1:], uint32(len(s)))
	p.buf.Write(b[:])
	p.buf.WriteString(s)
}

// saveConst writes a string torch reuses as one Python object, memoized by value.
func (p *pickler) saveConst(s string) {
	if i, ok := p.consts[s]; ok {
		p.get(i)
		return
	}
	p.saveString(s)
	p.consts[s] = p.nextMemo
	p.put()
}

// saveBytes writes bytes as protocol 2 does: _codecs.encode(latin-1 text, 'latin1').
func (p *pickler) saveBytes(b []byte) error {
	if len(b) == 0 {
		p.saveGlobal("builtins", "bytes")
		p.buf.WriteByte(opEmptyTuple)
		p.buf.WriteByte(opReduce)
		p.put()
		return nil
	}
	p.saveGlobal("_codecs", "encode")
	r := make([]rune, len(b))
	for i, c := range b {
		r[i] = rune(c)
	}
	p.saveString(string(r))
	p.put()
	p.saveConst("latin1")
	p.buf.WriteByte(opTuple2)
	p.put()
	p.buf.WriteByte(opReduce)
	p.put()
	return nil
}

// saveGlobal writes GLOBAL with protocol-2 (Python 2) module names, memoized by name.
func (p *pickler) saveGlobal(module, name string) {
	switch module {
	case "builtins":
		module = "__builtin__"
	case "copyreg":
		module = "copy_reg"
	}
	key := module + "\n" + name
	if i, ok := p.globals[key]; ok {
		p.get(i)
		return
	}
	p.buf.WriteByte(opGlobal)
	p.buf.WriteString(key + "\n")
	p.globals[key] = p.nextMemo
	p.put()
}

func (p *pickler) saveList(l *types.List) error {
	if p.memoized(l) {
		return nil
	}
	p.buf.WriteByte(opEmptyList)
	p.remember(l)
	items := []interface{}(*l)
	for len(items) > 0 {
		n := min(len(items), pickleBatch)
		if n == 1 {
			if err := p.save(items[0]); err != nil {
				return err
			}
			p.buf.WriteByte(opAppend)
		} else {
			p.buf.WriteByte(opMark)
			for _, it := range items[:n] {
				if err := p.save(it); err != nil {
					return err
				}
			}
			p.buf.WriteByte(opAppends)
		}
		items = items[n:]
	}
	return nil
}

func (p *pickler) saveTuple(t *types.Tuple) error {
	if t.Len() == 0 {
		p.buf.WriteByte(opEmptyTuple)
		return nil
	}
	if p.memoized(t) {
		return nil
	}
	return p.saveTupleItems([]interface{}(*t), t)
}

// saveTupleItems writes a non-empty tuple of items; key (may be nil) memoizes it.
func (p *pickler) saveTupleItems(items []interface{}, key interface{}) error {
	if len(items) == 0 {
		p.buf.WriteByte(opEmptyTuple)
		return nil
	}
	if len(items) <= 3 {
		for _, it := range items {
			if err := p.save(it); err != nil {
				return err
			}
		}
		p.buf.WriteByte([]byte{opTuple1, opTuple2, opTuple3}[len(items)-1])
	} else {
		p.buf.WriteByte(opMark)
		for _, it := range items {
			if err := p.save(it); err != nil {
				return err
			}
		}
		p.buf.WriteByte(opTuple)
	}
	if key != nil {
		p.remember(key)
	} else {
		p.put()
	}
	return nil
}

type kv struct{ k, v interface{} }

func (p *pickler) setItems(items []kv) error {
	for len(items) > 0 {
		n := min(len(items), pickleBatch)
		if n == 1 {
			if err := p.save(items[0].k); err != nil {
				return err
			}
			if err := p.save(items[0].v); err != nil {
				return err
			}
			p.buf.WriteByte(opSetItem)
		} else {
			p.buf.WriteByte(opMark)
			for _, it := range items[:n] {
				if err := p.save(it.k); err != nil {
					return err
				}
				if err := p.save(it.v); err != nil {
					return err
				}
			}
			p.buf.WriteByte(opSetItems)
		}
		items = items[n:]
	}
	return nil
}

func (p *pickler) saveDict(d *types.Dict) error {
	if p.memoized(d) {
		return nil
	}
	p.buf.WriteByte(opEmptyDict)
	p.remember(d)
	items := make([]kv, 0, d.Len())
	for _, e := range *d {
		items = append(items, kv{e.Key, e.Value})
	}
	return p.setItems(items)
}

// saveOrderedDict follows OrderedDict.__reduce__: OrderedDict(), its items, then the
// instance __dict__ (a state dict's _metadata) as BUILD state.
func (p *pickler) saveOrderedDict(d *types.OrderedDict) error {
	if p.memoized(d) {
		return nil
	}
	p.saveGlobal("collections", "OrderedDict")
	p.buf.WriteByte(opEmptyTuple)
	p.buf.WriteByte(opReduce)
	p.remember(d)
	items := make([]kv, 0, d.Len())
	for el := d.List.Front(); el != nil; el = el.Next() {
		e := el.Value.(*types.OrderedDictEntry)
		items = append(items, kv{e.Key, e.Value})
	}
	if err := p.setItems(items); err != nil {
		return err
	}
	if len(d.PyDict) > 0 {
		state := types.NewDict()
		for _, k := range sortedKeys(d.PyDict) {
			state.Set(k, d.PyDict[k])
		}
		if err := p.saveDict(state); err != nil {
			return err
		}
		p.buf.WriteByte(opBuild)
	}
	return nil
}

// saveSet writes set(list) / frozenset(list) with the items in a stable order (Python's
// own order is hash order, which no reader relies on).
func (p *pickler) saveSet(kind string, n int, each func(func(interface{}))) error {
	items := make([]interface{}, 0, n)
	each(func(v interface{}) { items = append(items, v) })
	sort.Slice(items, func(i, j int) bool { return fmt.Sprint(items[i]) < fmt.Sprint(items[j]) })
	p.saveGlobal("builtins", kind)
	l := types.List(items)
	if err := p.saveTupleItems([]interface{}{&l}, nil); err != nil {
		return err
	}
	p.buf.WriteByte(opReduce)
	p.put()
	return nil
}

// saveObject writes an inert instance the way it was read: REDUCE of its class with its
// arguments, or NEWOBJ (cls.__new__(cls, *args)), then its state with BUILD.
func (p *pickler) saveObject(o *Object) error {
	if p.memoized(o) {
		return nil
	}
	if o.Class == nil {
		return fmt.Errorf("%w: object without a class", ErrUnpicklable)
	}
	p.saveGlobal(o.Class.Module, o.Class.Name)
	if err := p.saveTupleItems(o.Args, nil); err != nil {
		return err
	}
	if o.Reduced {
		p.buf.WriteByte(opReduce)
	} else {
		p.buf.WriteByte(opNewObj)
	}
	p.remember(o)
	switch {
	case o.Attrs != nil:
		if err := p.saveDict(o.Attrs); err != nil {
			return err
		}
		p.buf.WriteByte(opBuild)
	case o.State != nil:
		if err := p.save(o.State); err != nil {
			return err
		}
		p.buf.WriteByte(opBuild)
	}
	return nil
}

var storageNames = func() map[tensor.DType]string {
	m := map[tensor.DType]string{}
	for name, dt := range storageDTypes {
		m[dt] = name
	}
	return m
}()

func (p *pickler) storageFor(src *Storage, dense *tensor.Tensor) *storageSource {
	if src != nil {
		if s, ok := p.byStore[src]; ok {
			return s
		}
	} else if s, ok := p.byDense[dense]; ok {
		return s
	}
	s := &storageSource{key: fmt.Sprint(len(p.storages)), memo: -1, src: src, dense: dense}
	if src != nil {
		s.dtype, s.numel = src.DType, src.Numel
		p.byStore[src] = s
	} else {
		s.dtype, s.numel = dense.DType, int64(dense.Numel())
		p.byDense[dense] = s
	}
	p.storages = append(p.storages, s)
	return s
}

// saveTensorCall writes _rebuild_tensor_v2(storage, offset, size, stride, requires_grad,
// OrderedDict()) with storage as the persistent id ('storage', cls, key, 'cpu', numel).
//
// key memoizes the tensor object: a tensor read from a file and met again (the same Python
// object there) becomes a BINGET; a dense tensor met twice is written twice sharing its
// storage, as torch writes the distinct tensor objects state_dict() returns for tied
// parameters. key is nil for the latter.
func (p *pickler) saveTensorCall(key interface{}, st *storageSource, offset int64, shape []int, stride []int64, requiresGrad bool) error {
	if key != nil && p.memoized(key) {
		return nil
	}
	cls, ok := storageNames[st.dtype]
	if !ok {
		return fmt.Errorf("%w: tensor of dtype %s has no torch storage class", ErrUnpicklable, st.dtype)
	}
	p.saveGlobal("torch._utils", "_rebuild_tensor_v2")
	p.buf.WriteByte(opMark)
	// persistent id
	p.buf.WriteByte(opMark)
	p.saveConst("storage")
	p.saveGlobal("torch", cls)
	if st.memo >= 0 {
		p.get(st.memo)
	} else {
		p.saveString(st.key)
		st.memo = p.nextMemo
		p.put()
	}
	p.saveConst("cpu")
	p.saveInt(big.NewInt(st.numel))
	p.buf.WriteByte(opTuple)
	p.put()
	p.buf.WriteByte(opBinPersID)
	p.saveInt(big.NewInt(offset))
	size := make([]interface{}, len(shape))
	for i, s := range shape {
		size[i] = s
	}
	strd := make([]interface{}, len(stride))
	for i, s := range stride {
		strd[i] = int(s)
	}
	if err := p.saveTupleItems(size, nil); err != nil {
		return err
	}
	if err := p.saveTupleItems(strd, nil); err != nil {
		return err
	}
	if err := p.save(requiresGrad); err != nil {
		return err
	}
	p.saveGlobal("collections", "OrderedDict")
	p.buf.WriteByte(opEmptyTuple)
	p.buf.WriteByte(opReduce)
	p.put()
	p.buf.WriteByte(opTuple)
	p.put()
	p.buf.WriteByte(opReduce)
	if key != nil {
		p.remember(key)
	} else {
		p.put()
	}
	return nil
}

func (p *pickler) saveLazyTensor(t *Tensor) error {
	if t.Storage == nil {
		return fmt.Errorf("%w: tensor without storage", ErrUnpicklable)
	}
	return p.saveTensorCall(t, p.storageFor(t.Storage, nil), t.Offset, t.Shape, t.Stride, t.RequiresGrad)
}

func (p *pickler) saveDenseTensor(t *tensor.Tensor) error {
	if err := t.Validate(); err != nil {
		return fmt.Errorf("%w: %v", ErrUnpicklable, err)
	}
	stride := make([]int64, len(t.Shape))
	acc := int64(1)
	for i := len(t.Shape) - 1; i >= 0; i-- {
		stride[i] = acc
		acc *= int64(t.Shape[i])
	}
	return p.saveTensorCall(nil, p.storageFor(nil, t), 0, t.Shape, stride, false)
}
