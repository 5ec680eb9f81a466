package onnxio

import (
	"fmt"
	"strconv"

	"google.golang.org/protobuf/proto"
)

// Dim is one dimension of a declared input/output shape: a fixed size or a symbolic name.
type Dim struct {
	Value int64
	Param string
}

// Fixed is a dimension of known size.
func Fixed(v int64) Dim { return Dim{Value: v} }

// Dyn is a dynamic dimension named by a dim_param.
func Dyn(name string) Dim { return Dim{Param: name} }

// ValueInfo returns a tensor value description with the given element type and shape.
func ValueInfo(name string, elem TensorProto_DataType, dims ...Dim) *ValueInfoProto {
	shape := &TensorShapeProto{}
	for _, d := range dims {
		if d.Param != "" {
			shape.Dim = append(shape.Dim, &TensorShapeProto_Dimension{Value: &TensorShapeProto_Dimension_DimParam{DimParam: d.Param}})
		} else {
			shape.Dim = append(shape.Dim, &TensorShapeProto_Dimension{Value: &TensorShapeProto_Dimension_DimValue{DimValue: d.Value}})
		}
	}
	return &ValueInfoProto{
		Name: proto.String(name),
		Type: &TypeProto{Value: &TypeProto_TensorType{TensorType: &TypeProto_Tensor{
			ElemType: proto.Int32(int32(elem)),
			Shape:    shape,
		}}},
	}
}

// Graph builds a GraphProto. Node output names are generated from a prefix and a counter,
// so that two graphs built with different prefixes can be nested (If branches) without
// name clashes, which ONNX forbids across scopes.
type Graph struct {
	Proto  *GraphProto
	prefix string
	n      int
	// inits owns the initializers: this graph's, or an enclosing graph's when the graph is
	// a subgraph whose weights live in the outer scope (branches of If share weights).
	inits     *Graph
	initIndex map[string]*TensorProto
}

// NewGraph starts an empty graph; generated names start with prefix.
func NewGraph(name, prefix string) *Graph {
	g := &Graph{Proto: &GraphProto{Name: proto.String(name)}, prefix: prefix, initIndex: map[string]*TensorProto{}}
	g.inits = g
	return g
}

// NewSubgraph starts a graph whose initializers are added to outer instead of itself.
func NewSubgraph(name, prefix string, outer *Graph) *Graph {
	g := NewGraph(name, prefix)
	g.inits = outer.inits
	return g
}

// Input declares a graph input and returns its name.
func (g *Graph) Input(name string, elem TensorProto_DataType, dims ...Dim) string {
	g.Proto.Input = append(g.Proto.Input, ValueInfo(name, elem, dims...))
	return name
}

// Output declares a graph output. The value must be produced under exactly this name.
func (g *Graph) Output(name string, elem TensorProto_DataType, dims ...Dim) {
	g.Proto.Output = append(g.Proto.Output, ValueInfo(name, elem, dims...))
}

// Initializer adds t (named) to the owning graph and returns its name. Adding the same name
// twice keeps the first tensor when both are identical, and panics otherwise: two different
// tensors under one name is a bug in the caller, not a user error.
func (g *Graph) Initializer(t *TensorProto) string {
	owner := g.inits
	name := t.GetName()
	if old, ok := owner.initIndex[name]; ok {
		if !proto.Equal(old, t) {
			panic(fmt.Sprintf("onnxio: two different initializers named %q", name))
		}
		return name
	}
	owner.initIndex[name] = t
	owner.Proto.Initializer = append(owner.Proto.Initializer, t)
	return name
}

// HasInitializer reports whether the owning graph already holds an initializer called name.
func (g *Graph) HasInitializer(name string) bool {
	_, ok := g.inits.initIndex[name]
	return ok
}

// fresh returns a new unique value name.
func (g *Graph) fresh(op string) string {
	g.n++
	return g.prefix + op + "_" + strconv.Itoa(g.n)
}

// NodeOut adds a node whose outputs have the given names and returns them.
func (g *Graph) NodeOut(op string, inputs, outputs []string, attrs ...*AttributeProto) []string {
	g.n++
	g.Proto.Node = append(g.Proto.Node, &NodeProto{
		OpType:    proto.String(op),
		Name:      proto.String(g.prefix + op + "_n" + strconv.Itoa(g.n)),
		Input:     inputs,
		Output:    outputs,
		Attribute: attrs,
	})
	return outputs
}

// Node adds a node with nOut generated output names and returns them.
func (g *Graph) Node(op string, inputs []string, nOut int, attrs ...*AttributeProto) []string {
	outs := make([]string, nOut)
	for i := range outs {
		outs[i] = g.fresh(op)
	}
	return g.NodeOut(op, inputs, outs, attrs...)
}

// Op adds a single-output node and returns its output name.
func (g *Graph) Op(op string, inputs []string, attrs ...*AttributeProto) string {
	return g.Node(op, inputs, 1, attrs...)[0]
}

// AttrInt is an INT attribute.
func AttrInt(name string, v int64) *AttributeProto {
	return &AttributeProto{Name: proto.String(name), Type: AttributeType_INT.Enum(), I: proto.Int64(v)}
}

// AttrInts is an INTS attribute.
func AttrInts(name string, v ...int64) *AttributeProto {
	return &AttributeProto{Name: proto.String(name), Type: AttributeType_INTS.Enum(), Ints: v}
}

// AttrFloat is a FLOAT attribute.
func AttrFloat(name string, v float32) *AttributeProto {
	return &AttributeProto{Name: proto.String(name), Type: AttributeType_FLOAT.Enum(), F: proto.Float32(v)}
}

// AttrString is a STRING attribute.
func AttrString(name, v string) *AttributeProto {
	return &AttributeProto{Name: proto.String(name), Type: AttributeType_STRING.Enum(), S: []byte(v)}
}

// AttrTensor is a TENSOR attribute.
func AttrTensor(name string, t *TensorProto) *AttributeProto {
	return &AttributeProto{Name: proto.String(name), Type: AttributeType_TENSOR.Enum(), T: t}
}

// AttrGraph is a GRAPH attribute (If branches).
func AttrGraph(name string, g *GraphProto) *AttributeProto {
	return &AttributeProto{Name: proto.String(name), Type: AttributeType_GRAPH.Enum(), G: g}
}

// OpsetIR returns the IR version that onnx pairs with an ai.onnx opset (onnx docs/Versioning.md),
// so that a model is not stamped newer than the oldest runtime able to run its opset.
func OpsetIR(opset int) (int64, error) {
	switch {
	case opset >= 7 && opset <= 18:
		return 8, nil // IR 8 readers accept every opset up to 18
	case opset <= 20 && opset >= 19:
		return 9, nil
	case opset <= 22 && opset >= 21:
		return 10, nil
	case opset <= 24 && opset >= 23:
		return 11, nil
	}
	return 0, fmt.Errorf("onnxio: no IR version known for opset %d", opset)
}

// NewModel wraps a graph into a ModelProto importing ai.onnx at opset.
func NewModel(g *GraphProto, opset int, producer, version string, meta map[string]string) (*ModelProto, error) {
	ir, err := OpsetIR(opset)
	if err != nil {
		return nil, err
	}
	m := &ModelProto{
		IrVersion:       proto.Int64(ir),
		OpsetImport:     []*OperatorSetIdProto{{Domain: proto.String(""), Version: proto.Int64(int64(opset))}},
		ProducerName:    proto.String(producer),
		ProducerVersion: proto.String(version),
		Graph:           g,
	}
	for _, k := range sortedKeys(meta) {
		m.MetadataProps = append(m.MetadataProps, &StringStringEntryProto{Key: proto.String(k), Value: proto.String(meta[k])})
	}
	return m, nil
}
