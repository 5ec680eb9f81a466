package cuda

import (
	"strings"
	"testing"
	"unsafe"
)

// TestLaunchExLayout checks the Go mirrors of cuda.h's CUlaunchConfig and
// CUlaunchAttribute against the C layout on 64-bit hosts (the driver reads them as C
// structs).
func TestLaunchExLayout(t *testing.T) {
	var c cuLaunchConfig
	var a cuLaunchAttr
	for _, tc := range []struct {
		what      string
		got, want uintptr
	}{
		{"sizeof(CUlaunchConfig)", unsafe.Sizeof(c), 56},
		{"offsetof(CUlaunchConfig, sharedMemBytes)", unsafe.Offsetof(c.shared), 24},
		{"offsetof(CUlaunchConfig, hStream)", unsafe.Offsetof(c.stream), 32},
		{"offsetof(CUlaunchConfig, attrs)", unsafe.Offsetof(c.attrs), 40},
		{"offsetof(CUlaunchConfig, numAttrs)", unsafe.Offsetof(c.numAttrs), 48},
		{"sizeof(CUlaunchAttribute)", unsafe.Sizeof(a), 72},
		{"offsetof(CUlaunchAttribute, value)", unsafe.Offsetof(a.val), 8},
	} {
		if tc.got != tc.want {
			t.Errorf("%s = %d, want %d", tc.what, tc.got, tc.want)
		}
	}
	l := newPDLLaunch()
	if l.cfg.attrs != &l.attr || l.cfg.numAttrs != 1 || l.attr.id != 6 || l.attr.val[0] != 1 {
		t.Errorf("newPDLLaunch: %+v", l)
	}
}

// TestEveryKernelOpensWithPDLEntry: every kernel of the embedded sources must begin with
// XF_PDL_ENTRY, since XFORM_CUDA_PDL launches every production kernel with
// programmatic serialization (a kernel without the wait could run against its
// predecessor).
func TestEveryKernelOpensWithPDLEntry(t *testing.T) {
	entries, err := sources.ReadDir(".")
	if err != nil {
		t.Fatal(err)
	}
	kernels := 0
	for _, e := range entries {
		b, err := sources.ReadFile(e.Name())
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range kernelBodies(string(b)) {
			kernels++
			if !k.opensWithPDL {
				t.Errorf("%s: kernel %s does not open with XF_PDL_ENTRY()", e.Name(), k.name)
			}
		}
	}
	if kernels < 100 {
		t.Errorf("found %d kernel definitions in the embedded sources; the scan is broken", kernels)
	}
}

// kernelDef is one kernel definition found by kernelBodies.
type kernelDef struct {
	name         string
	opensWithPDL bool
}

// kernelBodies finds the definitions (not the declarations) of extern "C" __global__
// functions in CUDA source text: after the marker, parenthesised groups
// (__launch_bounds__'s, then the parameters) up to the first '{' or ';'.
func kernelBodies(src string) []kernelDef {
	const marker = `extern "C" __global__`
	var defs []kernelDef
	for i := 0; ; {
		j := strings.Index(src[i:], marker)
		if j < 0 {
			return defs
		}
		pos := i + j + len(marker)
		name, end := "", -1
		for pos < len(src) {
			open := strings.IndexAny(src[pos:], "({;")
			if open < 0 {
				return defs
			}
			pos += open
			if src[pos] != '(' {
				end = pos
				break
			}
			fields := strings.Fields(strings.NewReplacer("*", " ", "\\", " ").Replace(src[i+j+len(marker) : pos]))
			if len(fields) > 0 {
				name = fields[len(fields)-1]
			}
			depth := 0
			for ; pos < len(src); pos++ {
				if src[pos] == '(' {
					depth++
				} else if src[pos] == ')' {
					depth--
					if depth == 0 {
						pos++
						break
					}
				}
			}
		}
		if end < 0 {
			return defs
		}
		if src[end] == '{' {
			rest := strings.TrimLeft(src[end+1:], " \t\r\n\\")
			defs = append(defs, kernelDef{name: name, opensWithPDL: strings.HasPrefix(rest, "XF_PDL_ENTRY();")})
		}
		i = end + 1
	}
}

// TestKernelBodies checks the scan on the forms the sources use.
func TestKernelBodies(t *testing.T) {
	src := `extern "C" __global__ void __launch_bounds__(512, 2)
    decl(int a, float* b);
extern "C" __global__ void __launch_bounds__(512, 2) decl(int a, float* b) { XF_PDL_ENTRY();
}
extern "C" __global__ void plain(const int* p) {
    return;
}
#define K(N) extern "C" __global__ void k##N(int n) { XF_PDL_ENTRY(); \
    f<N>(n); }
`
	got := kernelBodies(src)
	want := []kernelDef{{"decl", true}, {"plain", false}, {"k##N", true}}
	if len(got) != len(want) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("definition %d: got %+v, want %+v", i, got[i], want[i])
		}
	}
}
