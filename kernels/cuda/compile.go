package cuda

import (
	"context"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
)

// The kernels, one .cu file per operation, and the header of shared conventions.
//
//go:embed *.cu xform.cuh
var sources embed.FS

const headerName = "xform.cuh"

// cacheVersion changes whenever the way cubins are built changes in a way the hash of
// sources and options would not see.
const cacheVersion = "xform-cubin-1"

// nvrtcOptions are the compile options for arch ("sm_90"). --fmad=false: see
// xform.cuh (parity with the CPU backend).
func nvrtcOptions(arch string) []string {
	return []string{"--gpu-architecture=" + arch, "--fmad=false", "--std=c++17", "-default-device"}
}

// DefaultCacheDir is $XDG_CACHE_HOME/xform/cubin (os.UserCacheDir's rule), or "" when
// no cache folder can be named.
func DefaultCacheDir() string {
	d, err := os.UserCacheDir()
	if err != nil {
		return ""
	}
	return filepath.Join(d, "xform", "cubin")
}

// cacheKey hashes everything that decides the cubin's bytes.
func cacheKey(nvrtcVersion, name, src, header string, opts []string) string {
	h := sha256.New()
	for _, s := range append([]string{cacheVersion, nvrtcVersion, name, src, header}, opts...) {
		fmt.Fprintf(h, "%d:%s\n", len(s), s)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// readCache returns the cached cubin for key, if any.
func readCache(dir, key string) ([]byte, bool) {
	if dir == "" {
		return nil, false
	}
	b, err := os.ReadFile(filepath.Join(dir, key+".cubin"))
	return b, err == nil && len(b) > 0
}

// writeCache stores a cubin atomically (temp file + rename), so a concurrent xform
// never reads half a file. A cache that cannot be written only costs a recompile.
func writeCache(dir, key string, cubin []byte) error {
	if dir == "" {
		return nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, key+".*.tmp")
	if err != nil {
		return err
	}
	_, werr := f.Write(cubin)
	cerr := f.Close()
	if werr != nil || cerr != nil {
		os.Remove(f.Name())
		return fmt.Errorf("write %s: %v %v", f.Name(), werr, cerr)
	}
	return os.Rename(f.Name(), filepath.Join(dir, key+".cubin"))
}

// program is one compiled .cu file.
type program struct {
	name   string
	cubin  []byte
	cached bool
}

// sourceNames lists the embedded .cu files in a fixed order.
func sourceNames() ([]string, error) {
	ents, err := sources.ReadDir(".")
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".cu") {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	return names, nil
}

// compileAll compiles every embedded program for arch, in parallel (NVRTC programs are
// independent), taking cubins from the cache when present.
func compileAll(ctx context.Context, n *nvrtc, arch, cacheDir string) ([]program, error) {
	names, err := sourceNames()
	if err != nil {
		return nil, err
	}
	header, err := sources.ReadFile(headerName)
	if err != nil {
		return nil, err
	}
	ver := n.versionString()
	opts := nvrtcOptions(arch)
	out := make([]program, len(names))
	errs := make([]error, len(names))
	var wg sync.WaitGroup
	for i, name := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if ctx.Err() != nil {
				errs[i] = ctx.Err()
				return
			}
			src, err := sources.ReadFile(name)
			if err != nil {
				errs[i] = err
				return
			}
			key := cacheKey(ver, name, string(src), string(header), opts)
			if b, ok := readCache(cacheDir, key); ok {
				out[i] = program{name: name, cubin: b, cached: true}
				return
			}
			b, err := n.compileCUBIN(name, string(src), map[string]string{headerName: string(header)}, opts)
			if err != nil {
				errs[i] = err
				return
			}
			_ = writeCache(cacheDir, key, b)
			out[i] = program{name: name, cubin: b}
		}()
	}
	wg.Wait()
	for _, e := range errs {
		if e != nil {
			return nil, e
		}
	}
	return out, nil
}

// pickArch returns the NVRTC target for a device of compute capability major.minor:
// its own SM when NVRTC knows it, else the newest known SM of the same major (cubins run
// on later minors of one major), else an error naming both.
func pickArch(major, minor int, supported []int) (string, error) {
	want := major*10 + minor
	best := -1
	for _, a := range supported {
		if a == want {
			return fmt.Sprintf("sm_%d", a), nil
		}
		if a/10 == major && a < want && a > best {
			best = a
		}
	}
	if best >= 0 || len(supported) == 0 {
		if best < 0 {
			best = want
		}
		return fmt.Sprintf("sm_%d", best), nil
	}
	return "", fmt.Errorf("cuda: this NVRTC cannot target sm_%d (it knows %v); use an NVRTC at least as new as the GPU", want, supported)
}
