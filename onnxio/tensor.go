package onnxio

import (
	"encoding/binary"
	"math"
	"sort"

	"google.golang.org/protobuf/proto"
)

// RawTensor returns a tensor holding raw little-endian bytes (ONNX raw_data layout).
func RawTensor(name string, dt TensorProto_DataType, dims []int64, raw []byte) *TensorProto {
	return &TensorProto{
		Name:     proto.String(name),
		DataType: proto.Int32(int32(dt)),
		Dims:     append([]int64{}, dims...),
		RawData:  raw,
	}
}

// Int64Tensor returns an INT64 tensor.
func Int64Tensor(name string, dims []int64, v []int64) *TensorProto {
	raw := make([]byte, 8*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint64(raw[8*i:], uint64(x))
	}
	return RawTensor(name, TensorProto_INT64, dims, raw)
}

// Float32Tensor returns a FLOAT tensor.
func Float32Tensor(name string, dims []int64, v []float32) *TensorProto {
	raw := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(raw[4*i:], math.Float32bits(x))
	}
	return RawTensor(name, TensorProto_FLOAT, dims, raw)
}

// ElemSize returns the byte width of a fixed-size element type, 0 for others.
func ElemSize(dt TensorProto_DataType) int {
	switch dt {
	case TensorProto_DOUBLE, TensorProto_INT64, TensorProto_UINT64, TensorProto_COMPLEX64:
		return 8
	case TensorProto_FLOAT, TensorProto_INT32, TensorProto_UINT32:
		return 4
	case TensorProto_FLOAT16, TensorProto_BFLOAT16, TensorProto_INT16, TensorProto_UINT16:
		return 2
	case TensorProto_INT8, TensorProto_UINT8, TensorProto_BOOL:
		return 1
	case TensorProto_COMPLEX128:
		return 16
	}
	return 0
}

func sortedKeys(m map[string]string) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}
