package cuda

import (
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// EnvLibDir names the variable that overrides the library search: a colon-separated
// list of folders looked at before any other place.
const EnvLibDir = "XFORM_CUDA_LIB_DIR"

// Library is one shared library the backend loads, by its versioned sonames, newest
// first. CUDA 13 libraries need a CUDA 13 driver, so Find skips majors the driver
// cannot run.
type Library struct {
	Key   string   // short name used in reports: "cublas", "cublasLt", "nvrtc"
	Names []string // sonames, newest first
	Major []int    // CUDA major of each name (parallel to Names)
}

// The toolkit libraries, searched as .so.13 then .so.12.
var (
	libCublas   = Library{Key: "cublas", Names: []string{"libcublas.so.13", "libcublas.so.12"}, Major: []int{13, 12}}
	libCublasLt = Library{Key: "cublasLt", Names: []string{"libcublasLt.so.13", "libcublasLt.so.12"}, Major: []int{13, 12}}
	libNVRTC    = Library{Key: "nvrtc", Names: []string{"libnvrtc.so.13", "libnvrtc.so.12"}, Major: []int{13, 12}}
)

// Search describes where libraries are looked for. The zero value is not useful; use
// DefaultSearch. Tests set Root to a fake file-system layout.
type Search struct {
	// Root is prefixed to every absolute folder below ("" for the real file system).
	Root string
	// Getenv reads the environment (os.Getenv by default).
	Getenv func(string) string
}

// DefaultSearch searches the real file system with the process environment.
func DefaultSearch() Search { return Search{Getenv: os.Getenv} }

// Dirs returns the folders searched, in order, without duplicates:
//  1. XFORM_CUDA_LIB_DIR (the user's explicit choice wins);
//  2. LD_LIBRARY_PATH (what the dynamic loader would also use);
//  3. CUDA_HOME / CUDA_PATH, /usr/local/cuda, /usr/local/cuda-* (newest first), both
//     lib64 and targets/*/lib;
//  4. the nvidia/*/lib folders of Python site-packages (pip's nvidia-cublas etc.,
//     PyTorch's nvidia/cu13/lib), in virtualenvs, conda, user and system Pythons;
//  5. the system library folders and the driver container mount /usr/local/nvidia.
func (s Search) Dirs() []string {
	getenv := s.getenv
	var out []string
	seen := map[string]bool{}
	add := func(dirs ...string) {
		for _, d := range dirs {
			if d == "" || seen[d] {
				continue
			}
			seen[d] = true
			out = append(out, d)
		}
	}
	abs := func(p string) string { return filepath.Join(s.Root, p) }
	glob := func(pattern string) []string {
		m, _ := filepath.Glob(abs(pattern))
		// Newest version first: reverse lexical order puts cuda-13.0 before cuda-12.8
		// and python3.12 before python3.10 (good enough for one-digit-major names).
		sort.Sort(sort.Reverse(sort.StringSlice(m)))
		return m
	}
	add(s.OverrideDirs()...)
	add(s.splitList(getenv("LD_LIBRARY_PATH"))...)

	var cudaRoots []string
	for _, v := range []string{"CUDA_HOME", "CUDA_PATH"} {
		if p := getenv(v); p != "" {
			cudaRoots = append(cudaRoots, abs(p))
		}
	}
	cudaRoots = append(cudaRoots, abs("/usr/local/cuda"))
	cudaRoots = append(cudaRoots, glob("/usr/local/cuda-*")...)
	for _, r := range cudaRoots {
		add(filepath.Join(r, "lib64"))
		m, _ := filepath.Glob(filepath.Join(r, "targets", "*", "lib"))
		add(m...)
	}

	var sites []string
	for _, v := range []string{"VIRTUAL_ENV", "CONDA_PREFIX"} {
		if p := getenv(v); p != "" {
			sites = append(sites, globAbs(filepath.Join(abs(p), "lib", "python3*", "site-packages"))...)
		}
	}
	if home := getenv("HOME"); home != "" {
		sites = append(sites, globAbs(filepath.Join(abs(home), ".local", "lib", "python3*", "site-packages"))...)
	}
	for _, p := range []string{
		"/usr/local/lib/python3*/dist-packages", "/usr/local/lib/python3*/site-packages",
		"/usr/lib/python3/dist-packages", "/usr/lib/python3*/site-packages",
		"/usr/lib64/python3*/site-packages", "/opt/*/.venv/lib/python3*/site-packages",
		"/opt/conda/lib/python3*/site-packages",
	} {
		sites = append(sites, glob(p)...)
	}
	for _, site := range sites {
		// nvidia/cu13/lib holds every CUDA 13 library in one folder (PyTorch ≥ 2.9);
		// CUDA 12 wheels use one folder per library (nvidia/cublas/lib, ...).
		add(filepath.Join(site, "nvidia", "cu13", "lib"))
		m := globAbs(filepath.Join(site, "nvidia", "*", "lib"))
		add(m...)
	}

	add(abs("/usr/local/nvidia/lib64"), abs("/usr/local/nvidia/lib"),
		abs("/usr/lib/x86_64-linux-gnu"), abs("/usr/lib/aarch64-linux-gnu"),
		abs("/usr/lib64"), abs("/usr/lib"), abs("/usr/local/lib"), abs("/usr/lib/wsl/lib"))
	return out
}

func (s Search) getenv(k string) string {
	if s.Getenv == nil {
		return os.Getenv(k)
	}
	return s.Getenv(k)
}

// OverrideDirs returns the folders named by XFORM_CUDA_LIB_DIR (under Root).
func (s Search) OverrideDirs() []string { return s.splitList(s.getenv(EnvLibDir)) }

func (s Search) splitList(v string) []string {
	var r []string
	for _, p := range strings.Split(v, ":") {
		if p = strings.TrimSpace(p); p != "" {
			r = append(r, filepath.Join(s.Root, p))
		}
	}
	return r
}

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir()
}

// globAbs globs an already-rooted pattern, newest name first.
func globAbs(pattern string) []string {
	m, _ := filepath.Glob(pattern)
	sort.Sort(sort.Reverse(sort.StringSlice(m)))
	return m
}

// Found is where a library was found, or why not.
type Found struct {
	Key   string `json:"key"`
	Path  string `json:"path,omitempty"`
	Major int    `json:"major,omitempty"`
	// Skipped lists files found but not usable (a CUDA major newer than the driver).
	Skipped []string `json:"skipped,omitempty"`
	// Reason says why nothing usable was found (empty when Path is set).
	Reason string `json:"reason,omitempty"`
}

// Find looks for lib in dirs, taking the newest soname whose CUDA major the driver can
// run (maxMajor ≤ 0 means no limit). Only regular files or links to them count.
func Find(lib Library, dirs []string, maxMajor int) Found {
	f := Found{Key: lib.Key}
	for i, name := range lib.Names {
		for _, d := range dirs {
			p := filepath.Join(d, name)
			if !fileExists(p) {
				continue
			}
			if maxMajor > 0 && lib.Major[i] > maxMajor {
				f.Skipped = append(f.Skipped, p)
				continue
			}
			f.Path, f.Major = p, lib.Major[i]
			return f
		}
	}
	switch {
	case len(f.Skipped) > 0:
		f.Reason = "only libraries newer than the driver supports were found (update the driver, or point " + EnvLibDir + " at CUDA " + strconv.Itoa(maxMajor) + " libraries)"
	default:
		f.Reason = "none of " + strings.Join(lib.Names, ", ") + " in " + strconv.Itoa(len(dirs)) + " searched folders (set " + EnvLibDir + ")"
	}
	return f
}

// siblings returns files in the folder of path whose names start with prefix, so that
// libraries loaded by path also find their helpers (libnvrtc-builtins) there.
func siblings(path, prefix string) []string {
	m, _ := filepath.Glob(filepath.Join(filepath.Dir(path), prefix+"*"))
	sort.Sort(sort.Reverse(sort.StringSlice(m)))
	return m
}
