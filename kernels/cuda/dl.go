package cuda

import (
	"errors"
	"fmt"
	"unsafe"

	"github.com/ebitengine/purego"
)

// symbol binds one C entry point to a field holding its address.
type symbol struct {
	name string
	addr *uintptr
}

// dlopen loads a shared library globally, so libraries loaded later by soname (cuBLAS
// needing cuBLASLt) resolve to this copy rather than one the loader would search for.
func dlopen(path string) (uintptr, error) {
	h, err := purego.Dlopen(path, purego.RTLD_NOW|purego.RTLD_GLOBAL)
	if err != nil {
		return 0, err // the loader's message already names the file
	}
	return h, nil
}

// bind resolves every symbol of syms in library h; a missing one is an error naming it
// (an old library lacking a versioned entry point shows up here).
func bind(h uintptr, lib string, syms []symbol) error {
	var missing []string
	for _, s := range syms {
		a, err := purego.Dlsym(h, s.name)
		if err != nil || a == 0 {
			missing = append(missing, s.name)
			continue
		}
		*s.addr = a
	}
	if len(missing) > 0 {
		return fmt.Errorf("%s lacks %v", lib, missing)
	}
	return nil
}

// call invokes a C function taking integer and pointer arguments and returning a C
// int status. go:uintptrescapes keeps every pointer converted to uintptr in the call
// expression alive and on the heap until the call returns (as purego.SyscallN does).
//
//go:uintptrescapes
func call(fn uintptr, args ...uintptr) int32 {
	r, _, _ := purego.SyscallN(fn, args...)
	return int32(r)
}

// callPtr is call for functions returning a pointer.
//
//go:uintptrescapes
func callPtr(fn uintptr, args ...uintptr) uintptr {
	r, _, _ := purego.SyscallN(fn, args...)
	return r
}

// goString copies a NUL-terminated C string.
func goString(p *byte) string {
	if p == nil {
		return ""
	}
	n := 0
	for *(*byte)(unsafe.Add(unsafe.Pointer(p), n)) != 0 {
		n++
	}
	return string(unsafe.Slice(p, n))
}

// cstr returns a NUL-terminated copy of s for a const char* argument.
func cstr(s string) *byte {
	b := make([]byte, len(s)+1)
	copy(b, s)
	return &b[0]
}

// errNotLoaded is returned by calls into a library that failed to load.
var errNotLoaded = errors.New("cuda: library not loaded")
