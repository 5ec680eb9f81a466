package cuda

import (
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// fakeTree creates empty files under root (their paths given relative to root).
func fakeTree(t *testing.T, root string, files ...string) {
	t.Helper()
	for _, f := range files {
		p := filepath.Join(root, f)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func envOf(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestFind(t *testing.T) {
	for _, tc := range []struct {
		name     string
		files    []string
		env      map[string]string
		lib      Library
		maxMajor int
		want     string // path relative to root, "" for not found
		skipped  int
	}{
		{
			name:  "toolkit targets folder",
			files: []string{"usr/local/cuda-13.0/targets/x86_64-linux/lib/libcublas.so.13"},
			lib:   libCublas, want: "usr/local/cuda-13.0/targets/x86_64-linux/lib/libcublas.so.13",
		},
		{
			name:  "toolkit lib64",
			files: []string{"usr/local/cuda/lib64/libnvrtc.so.12"},
			lib:   libNVRTC, want: "usr/local/cuda/lib64/libnvrtc.so.12",
		},
		{
			name:  "pytorch cu13 wheel folder",
			files: []string{"usr/local/lib/python3.12/dist-packages/nvidia/cu13/lib/libnvrtc.so.13"},
			lib:   libNVRTC, want: "usr/local/lib/python3.12/dist-packages/nvidia/cu13/lib/libnvrtc.so.13",
		},
		{
			name:  "cuda 12 wheel per-library folder in a virtualenv",
			files: []string{"venv/lib/python3.11/site-packages/nvidia/cublas/lib/libcublasLt.so.12"},
			env:   map[string]string{"VIRTUAL_ENV": "/venv"},
			lib:   libCublasLt, want: "venv/lib/python3.11/site-packages/nvidia/cublas/lib/libcublasLt.so.12",
		},
		{
			name:  "override wins over the toolkit",
			files: []string{"usr/local/cuda/lib64/libcublas.so.13", "opt/mine/libcublas.so.13"},
			env:   map[string]string{EnvLibDir: "/nowhere:/opt/mine"},
			lib:   libCublas, want: "opt/mine/libcublas.so.13",
		},
		{
			name:  "newer soname preferred",
			files: []string{"usr/lib/x86_64-linux-gnu/libcublas.so.12", "usr/local/cuda/lib64/libcublas.so.13"},
			lib:   libCublas, want: "usr/local/cuda/lib64/libcublas.so.13",
		},
		{
			name:  "driver too old for 13: take 12",
			files: []string{"usr/local/cuda/lib64/libcublas.so.13", "usr/lib/x86_64-linux-gnu/libcublas.so.12"},
			lib:   libCublas, maxMajor: 12, want: "usr/lib/x86_64-linux-gnu/libcublas.so.12", skipped: 1,
		},
		{
			name:  "driver too old and only 13 present",
			files: []string{"usr/local/cuda/lib64/libcublas.so.13"},
			lib:   libCublas, maxMajor: 12, skipped: 1,
		},
		{
			name: "nothing", lib: libNVRTC,
		},
		{
			name:  "a folder named like the library is not it",
			files: []string{"usr/local/cuda/lib64/libnvrtc.so.13/x"},
			lib:   libNVRTC,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			fakeTree(t, root, tc.files...)
			s := Search{Root: root, Getenv: envOf(tc.env)}
			f := Find(tc.lib, s.Dirs(), tc.maxMajor)
			want := ""
			if tc.want != "" {
				want = filepath.Join(root, tc.want)
			}
			if f.Path != want {
				t.Fatalf("path %q, want %q (reason %q)", f.Path, want, f.Reason)
			}
			if len(f.Skipped) != tc.skipped {
				t.Errorf("skipped %v, want %d", f.Skipped, tc.skipped)
			}
			if want == "" && f.Reason == "" {
				t.Error("no reason given for a missing library")
			}
			if want == "" && tc.skipped == 0 && !strings.Contains(f.Reason, EnvLibDir) {
				t.Errorf("reason %q does not mention %s", f.Reason, EnvLibDir)
			}
		})
	}
}

func TestDirsOrder(t *testing.T) {
	root := t.TempDir()
	fakeTree(t, root, "usr/local/cuda-12.8/targets/x86_64-linux/lib/x", "usr/local/cuda-13.0/targets/x86_64-linux/lib/x")
	s := Search{Root: root, Getenv: envOf(map[string]string{EnvLibDir: "/a:/b", "LD_LIBRARY_PATH": "/c"})}
	d := s.Dirs()
	rel := make([]string, len(d))
	for i, p := range d {
		rel[i] = strings.TrimPrefix(p, root)
	}
	idx := func(p string) int {
		for i, r := range rel {
			if r == p {
				return i
			}
		}
		t.Fatalf("%s not searched: %v", p, rel)
		return -1
	}
	if !(idx("/a") < idx("/b") && idx("/b") < idx("/c") && idx("/c") < idx("/usr/local/cuda-13.0/targets/x86_64-linux/lib") &&
		idx("/usr/local/cuda-13.0/targets/x86_64-linux/lib") < idx("/usr/local/cuda-12.8/targets/x86_64-linux/lib") &&
		idx("/usr/local/cuda-12.8/targets/x86_64-linux/lib") < idx("/usr/lib/x86_64-linux-gnu")) {
		t.Errorf("search order wrong: %v", rel)
	}
	seen := map[string]bool{}
	for _, p := range d {
		if seen[p] {
			t.Errorf("%s searched twice", p)
		}
		seen[p] = true
	}
}

// TestProbeNoDriver runs the probe over a fake layout whose libcuda.so.1 is not a
// library: the report must say so, list what it found, and not be usable.
func TestProbeNoDriver(t *testing.T) {
	for _, tc := range []struct {
		name  string
		files []string
	}{
		{"nothing installed", nil},
		{"broken driver file, toolkit present", []string{"usr/lib/x86_64-linux-gnu/libcuda.so.1",
			"usr/local/cuda/lib64/libcublas.so.13", "usr/local/cuda/lib64/libcublasLt.so.13", "usr/local/cuda/lib64/libnvrtc.so.13"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			fakeTree(t, root, tc.files...)
			r := Probe(Search{Root: root, Getenv: envOf(nil)})
			if r.Usable || r.Err == nil || r.Problem == "" {
				t.Fatalf("usable=%v err=%v problem=%q", r.Usable, r.Err, r.Problem)
			}
			if !errors.Is(r.Err, ErrNoDriver) {
				t.Errorf("error %v does not wrap ErrNoDriver", r.Err)
			}
			if r.Driver.Error == "" || len(r.Libraries) != 3 {
				t.Errorf("report incomplete: %+v", r)
			}
			if len(tc.files) > 0 {
				for _, l := range r.Libraries {
					if l.Path == "" {
						t.Errorf("%s not found in the fake toolkit: %s", l.Key, l.Reason)
					}
				}
			}
		})
	}
}

func TestPickArch(t *testing.T) {
	for _, tc := range []struct {
		major, minor int
		supported    []int
		want         string
		err          bool
	}{
		{9, 0, []int{75, 80, 86, 89, 90, 100, 120}, "sm_90", false},
		{8, 7, []int{75, 80, 86, 89, 90}, "sm_86", false},
		{12, 1, []int{75, 80, 90}, "", true},
		{9, 0, nil, "sm_90", false},
	} {
		got, err := pickArch(tc.major, tc.minor, tc.supported)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("pickArch(%d.%d, %v) = %q, %v; want %q, err %v", tc.major, tc.minor, tc.supported, got, err, tc.want, tc.err)
		}
	}
}

func TestSizeClass(t *testing.T) {
	for _, n := range []uint64{0, 1, 511, 512, 513, 1 << 20, 1<<20 + 1, 3 << 20, 1<<30 + 7} {
		c := sizeClass(n)
		if c < n || (n > 1<<20 && float64(c) > float64(n)*1.125+1) || sizeClass(c) != c {
			t.Errorf("sizeClass(%d) = %d", n, c)
		}
	}
}

func TestCache(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "cubin")
	k1 := cacheKey("13.0", "a.cu", "src", "hdr", nvrtcOptions("sm_90"))
	if k1 == cacheKey("13.0", "a.cu", "src", "hdr", nvrtcOptions("sm_80")) ||
		k1 == cacheKey("13.1", "a.cu", "src", "hdr", nvrtcOptions("sm_90")) ||
		k1 == cacheKey("13.0", "a.cu", "src2", "hdr", nvrtcOptions("sm_90")) {
		t.Fatal("cache key ignores an input")
	}
	if _, ok := readCache(dir, k1); ok {
		t.Fatal("empty cache hit")
	}
	if err := writeCache(dir, k1, []byte("cubin")); err != nil {
		t.Fatal(err)
	}
	b, ok := readCache(dir, k1)
	if !ok || string(b) != "cubin" {
		t.Fatalf("read back %q %v", b, ok)
	}
	t.Setenv("XDG_CACHE_HOME", "/x")
	if got := DefaultCacheDir(); got != "/x/xform/cubin" {
		t.Errorf("DefaultCacheDir = %q", got)
	}
}

func TestSourcesEmbedded(t *testing.T) {
	names, err := sourceNames()
	if err != nil || len(names) < 6 {
		t.Fatalf("embedded sources %v, %v", names, err)
	}
	var fns functions
	all := ""
	for _, n := range names {
		b, _ := sources.ReadFile(n)
		all += string(b)
		if !strings.HasPrefix(string(b), "// "+n+" — ") {
			t.Errorf("%s does not start with its convention comment", n)
		}
	}
	for name := range fns.table() {
		// A kernel may carry launch bounds between void and its name.
		if !regexp.MustCompile(`extern "C" __global__ void (__launch_bounds__\([^)]*\)\s+)?` + name + `\(`).MatchString(all) {
			t.Errorf("kernel %s is not defined in any .cu file", name)
		}
	}
}

// TestNewWithoutGPU checks that New fails with a reason a caller can test for when the
// machine has no usable GPU (CI); on a GPU machine it is skipped.
func TestNewWithoutGPU(t *testing.T) {
	r := Probe(DefaultSearch())
	if r.Usable {
		t.Skip("a GPU is usable here")
	}
	_, err := New(t.Context(), Options{})
	if err == nil {
		t.Fatal("New succeeded although Probe says the GPU is unusable: " + r.Problem)
	}
	if !errors.Is(err, ErrNoDriver) && !errors.Is(err, ErrNoDevice) && !errors.Is(err, ErrOldDriver) && !errors.Is(err, ErrNoLibrary) {
		t.Errorf("error %v wraps no known reason", err)
	}
}
