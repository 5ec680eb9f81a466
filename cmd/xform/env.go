package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/xform-dev/xform/kernels/cuda"
)

// envReport is what xform env prints with --json.
type envReport struct {
	*cuda.Report
	CubinCache string `json:"cubin_cache"`
	LibDirEnv  string `json:"lib_dir_env"`
}

func newEnvCmd() *cobra.Command {
	var asJSON, dirs, bench bool
	c := &cobra.Command{
		Use:     "env",
		Aliases: []string{"doctor"},
		Short:   "Show whether a GPU can be used: driver, devices, CUDA libraries found",
		Long: `env looks for the NVIDIA driver (libcuda.so.1), the GPUs and the CUDA libraries
xform loads at run time (cuBLAS, cuBLASLt, NVRTC, versions 13 then 12), and says
why the GPU cannot be used when it cannot. Libraries are searched in
` + cuda.EnvLibDir + ` (colon-separated folders, searched first), LD_LIBRARY_PATH,
CUDA_HOME, /usr/local/cuda*, the nvidia/*/lib folders of Python site-packages
(pip's nvidia-* wheels, PyTorch) and the system library folders. Without a GPU it
says so and exits 0: the CPU backend needs none of this.`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			r := cuda.Probe(cuda.DefaultSearch())
			rep := envReport{Report: r, CubinCache: cuda.DefaultCacheDir(), LibDirEnv: cuda.EnvLibDir}
			if asJSON {
				if !dirs {
					rep.SearchDirs = nil
				}
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(rep)
			}
			printEnv(cmd.OutOrStdout(), rep, dirs)
			if bench && r.Usable {
				return benchGPU(cmd)
			}
			return nil
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print the report as JSON")
	c.Flags().BoolVar(&dirs, "dirs", false, "also list every folder searched for libraries")
	c.Flags().BoolVar(&bench, "bench", false, "also time matrix products on the GPU (fp32 as the backend runs them, bf16 on the tensor cores)")
	return c
}

func printEnv(w io.Writer, r envReport, dirs bool) {
	row := func(k, f string, a ...any) { fmt.Fprintf(w, "%-10s %s\n", k, fmt.Sprintf(f, a...)) }
	switch {
	case r.Driver.Path == "":
		row("driver", "not found: %s", r.Driver.Error)
	case r.Driver.Version == 0:
		row("driver", "%s: %s", r.Driver.Path, r.Driver.Error)
	default:
		row("driver", "%s (CUDA %s)", r.Driver.Path, cuda.VersionString(r.Driver.Version))
	}
	for _, d := range r.Devices {
		if d.Error != "" {
			row(fmt.Sprintf("device %d", d.Ordinal), "%s: %s", d.Name, d.Error)
			continue
		}
		row(fmt.Sprintf("device %d", d.Ordinal), "%s, compute capability %d.%d (%s), %d SMs, %.1f GiB, %.1f GiB free",
			d.Name, d.Major, d.Minor, d.Arch(), d.SMs, gib(d.TotalBytes), gib(d.FreeBytes))
	}
	versions := map[string]string{"cublas": r.CUBLAS, "nvrtc": r.NVRTC}
	for _, l := range r.Libraries {
		switch {
		case l.Path != "" && versions[l.Key] != "":
			row(l.Key, "%s (%s)", l.Path, versions[l.Key])
		case l.Path != "":
			row(l.Key, "%s", l.Path)
		default:
			row(l.Key, "missing: %s", l.Reason)
		}
		for _, s := range l.Skipped {
			row("", "skipped %s (newer than the driver)", s)
		}
	}
	row("cubins", "%s", r.CubinCache)
	if dirs {
		row("searched", "%s", strings.Join(r.SearchDirs, "\n           "))
	}
	if r.Usable {
		row("GPU", "usable: generate runs on cuda:0 by default (--device cpu to keep to the CPU)")
	} else {
		row("GPU", "not usable: %s", r.Problem)
		row("", "xform runs on the CPU; set %s to the folder of the CUDA libraries if they are installed elsewhere", cuda.EnvLibDir)
	}
}

func gib(n uint64) float64 { return float64(n) / (1 << 30) }

// benchGPU times a few GEMM shapes: a large square one (the ceiling) and the shapes of a
// 512-wide Transformer's projections at 8192 tokens.
func benchGPU(cmd *cobra.Command) error {
	start := time.Now()
	be, err := cuda.New(cmd.Context(), cuda.Options{})
	if err != nil {
		return err
	}
	defer be.Close()
	w := cmd.OutOrStdout()
	fmt.Fprintf(w, "%-10s %v (%d kernel programs compiled, the rest from the cache)\n", "startup", time.Since(start).Round(time.Millisecond), be.CompiledPrograms())
	for _, s := range []struct {
		m, n, k, iters int
		bf16           bool
	}{
		{4096, 4096, 4096, 10, false}, {8192, 8192, 8192, 20, true},
		{8192, 1536, 512, 50, false}, {8192, 1536, 512, 50, true},
		{8192, 2048, 512, 50, false}, {8192, 2048, 512, 50, true},
		{64, 512, 512, 200, false}, {64, 512, 512, 200, true},
	} {
		r, err := be.BenchGemm(cmd.Context(), s.m, s.n, s.k, s.bf16, s.iters)
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "%-10s %s\n", "gemm", r)
	}
	return nil
}
