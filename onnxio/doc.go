// Package onnxio holds the ONNX protobuf types xform needs (generated from onnx.proto,
// a subset of the public ONNX IR with the same field numbers), a small graph builder,
// and a writer/reader that handles external data for models over protobuf's 2 GB limit.
// It knows nothing about Transformers.
package onnxio

//go:generate protoc --go_out=. --go_opt=paths=source_relative onnx.proto
