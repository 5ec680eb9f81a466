// Package onnxrun runs xform's fairseq beam search (model.Search) on the ONNX graphs
// written by `xform export --onnx`, through ONNX Runtime. The runtime is linked only
// with the build tag onnxruntime (cgo, github.com/yalue/onnxruntime_go); without it
// Open returns ErrNotBuilt.
package onnxrun

import "errors"

// ErrNotBuilt is returned by Open in builds without the onnxruntime tag.
var ErrNotBuilt = errors.New("built without ONNX Runtime support; rebuild with -tags onnxruntime")

// Options configure Open.
type Options struct {
	// Lib is the ONNX Runtime shared library; empty means $XFORM_ONNXRUNTIME_LIB, else
	// the one shipped in the onnxruntime Python wheel (found through python3).
	Lib string
	// Threads is ONNX Runtime's intra-op thread count (0 = its default).
	Threads int
}
