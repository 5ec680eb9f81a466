package cuda

import (
	"fmt"
	"path/filepath"
	"strings"
	"unsafe"
)

// libs are the toolkit libraries, loaded by full path from what Find returned.
type libs struct {
	blas  *cublas
	nvrtc *nvrtc
}

// loadLibs opens cuBLASLt, cuBLAS and NVRTC. cuBLASLt is opened first and globally so
// that cuBLAS's own dependency on it resolves to this file even when its folder is not
// on the loader's path; NVRTC's builtins library is preloaded from its folder for the
// same reason.
func loadLibs(found []Found) (*libs, error) {
	paths := map[string]string{}
	for _, f := range found {
		if f.Path == "" {
			return nil, fmt.Errorf("%w: %s: %s", ErrNoLibrary, f.Key, f.Reason)
		}
		paths[f.Key] = f.Path
	}
	if _, err := dlopen(paths["cublasLt"]); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoLibrary, err)
	}
	b, err := loadCublas(paths["cublas"])
	if err != nil {
		return nil, err
	}
	for _, p := range siblings(paths["nvrtc"], "libnvrtc-builtins.so") {
		if !strings.HasSuffix(p, ".alt") && filepath.Base(p) != "" {
			if _, err := dlopen(p); err == nil {
				break
			}
		}
	}
	n, err := loadNVRTC(paths["nvrtc"])
	if err != nil {
		return nil, err
	}
	return &libs{blas: b, nvrtc: n}, nil
}

// cString reads a static C string returned by value from a C function.
func cString(p uintptr) string {
	return goString(*(**byte)(unsafe.Pointer(&p)))
}
