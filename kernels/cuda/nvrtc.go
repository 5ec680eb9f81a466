package cuda

import (
	"fmt"
	"runtime"
	"unsafe"
)

// nvrtc holds the NVRTC entry points used.
type nvrtc struct {
	path                                    string
	version, errorString, create, compile   uintptr
	logSize, log, cubinSize, cubin, destroy uintptr
	numArchs, archs                         uintptr
}

func loadNVRTC(path string) (*nvrtc, error) {
	h, err := dlopen(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoLibrary, err)
	}
	n := &nvrtc{path: path}
	err = bind(h, path, []symbol{
		{"nvrtcVersion", &n.version}, {"nvrtcGetErrorString", &n.errorString},
		{"nvrtcCreateProgram", &n.create}, {"nvrtcCompileProgram", &n.compile},
		{"nvrtcGetProgramLogSize", &n.logSize}, {"nvrtcGetProgramLog", &n.log},
		{"nvrtcGetCUBINSize", &n.cubinSize}, {"nvrtcGetCUBIN", &n.cubin},
		{"nvrtcDestroyProgram", &n.destroy},
		{"nvrtcGetNumSupportedArchs", &n.numArchs}, {"nvrtcGetSupportedArchs", &n.archs},
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoLibrary, err)
	}
	return n, nil
}

func (n *nvrtc) check(op string, r int32) error {
	if r == 0 {
		return nil
	}
	name := cString(callPtr(n.errorString, uintptr(r)))
	return &Error{Lib: "nvrtc", Op: op, Code: int(r), Name: name}
}

func (n *nvrtc) versionString() string {
	var major, minor int32
	if call(n.version, uintptr(unsafe.Pointer(&major)), uintptr(unsafe.Pointer(&minor))) != 0 {
		return ""
	}
	return fmt.Sprintf("%d.%d", major, minor)
}

// supportedArchs lists the SM versions this NVRTC can target (90 for sm_90).
func (n *nvrtc) supportedArchs() ([]int, error) {
	var k int32
	if err := n.check("nvrtcGetNumSupportedArchs", call(n.numArchs, uintptr(unsafe.Pointer(&k)))); err != nil {
		return nil, err
	}
	if k <= 0 {
		return nil, nil
	}
	v := make([]int32, k)
	if err := n.check("nvrtcGetSupportedArchs", call(n.archs, uintptr(unsafe.Pointer(&v[0])))); err != nil {
		return nil, err
	}
	out := make([]int, k)
	for i, a := range v {
		out[i] = int(a)
	}
	return out, nil
}

// CompileError is a failed NVRTC compilation with the compiler's log.
type CompileError struct {
	Name string
	Err  error
	Log  string
}

func (e *CompileError) Error() string {
	return fmt.Sprintf("cuda: compiling %s: %v\n%s", e.Name, e.Err, e.Log)
}

func (e *CompileError) Unwrap() error { return e.Err }

// compileCUBIN compiles one program to a cubin. headers maps include names to their
// text (NVRTC resolves #include "name" against them without touching the disk).
func (n *nvrtc) compileCUBIN(name, src string, headers map[string]string, opts []string) ([]byte, error) {
	var hdrSrc, hdrName []*byte
	for k, v := range headers {
		hdrName = append(hdrName, cstr(k))
		hdrSrc = append(hdrSrc, cstr(v))
	}
	// A NULL entry ends nothing here (NVRTC takes the count); it only keeps &x[0] valid
	// when there are no headers.
	hdrSrc, hdrName = append(hdrSrc, nil), append(hdrName, nil)
	var prog uintptr
	if err := n.check("nvrtcCreateProgram", call(n.create, uintptr(unsafe.Pointer(&prog)),
		uintptr(unsafe.Pointer(cstr(src))), uintptr(unsafe.Pointer(cstr(name))), uintptr(len(hdrSrc)-1),
		uintptr(unsafe.Pointer(&hdrSrc[0])), uintptr(unsafe.Pointer(&hdrName[0])))); err != nil {
		return nil, err
	}
	runtime.KeepAlive(hdrSrc)
	runtime.KeepAlive(hdrName)
	defer call(n.destroy, uintptr(unsafe.Pointer(&prog)))

	copts := make([]*byte, len(opts), len(opts)+1)
	for i, o := range opts {
		copts[i] = cstr(o)
	}
	copts = append(copts, nil)
	cerr := n.check("nvrtcCompileProgram", call(n.compile, prog, uintptr(len(opts)), uintptr(unsafe.Pointer(&copts[0]))))
	runtime.KeepAlive(copts)
	log := n.programLog(prog)
	if cerr != nil {
		return nil, &CompileError{Name: name, Err: cerr, Log: log}
	}
	var size uint64
	if err := n.check("nvrtcGetCUBINSize", call(n.cubinSize, prog, uintptr(unsafe.Pointer(&size)))); err != nil {
		return nil, err
	}
	if size == 0 {
		return nil, fmt.Errorf("cuda: compiling %s: NVRTC returned no cubin (an architecture given as compute_XX yields PTX only)", name)
	}
	out := make([]byte, size)
	if err := n.check("nvrtcGetCUBIN", call(n.cubin, prog, uintptr(unsafe.Pointer(&out[0])))); err != nil {
		return nil, err
	}
	return out, nil
}

func (n *nvrtc) programLog(prog uintptr) string {
	var size uint64
	if call(n.logSize, prog, uintptr(unsafe.Pointer(&size))) != 0 || size <= 1 {
		return ""
	}
	b := make([]byte, size)
	if call(n.log, prog, uintptr(unsafe.Pointer(&b[0]))) != 0 {
		return ""
	}
	return string(b[:size-1])
}
