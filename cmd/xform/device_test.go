package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"math"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/xform-dev/xform/kernels/cuda"
)

// runCLI2 runs the CLI with stdout and stderr kept apart.
func runCLI2(args ...string) (stdout, stderr string, err error) {
	root := newRootCmd()
	var o, e bytes.Buffer
	root.SetOut(&o)
	root.SetErr(&e)
	root.SetArgs(args)
	err = root.Execute()
	return o.String(), e.String(), err
}

func TestEnvCommand(t *testing.T) {
	for _, name := range []string{"env", "doctor"} {
		out, _, err := runCLI2(name)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !strings.Contains(out, "GPU") || !strings.Contains(out, "nvrtc") {
			t.Errorf("%s output lacks the GPU verdict or the library rows:\n%s", name, out)
		}
	}
	out, _, err := runCLI2("env", "--json", "--dirs")
	if err != nil {
		t.Fatal(err)
	}
	var rep struct {
		Usable     bool              `json:"usable"`
		Problem    string            `json:"problem"`
		Libraries  []json.RawMessage `json:"libraries"`
		SearchDirs []string          `json:"search_dirs"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("env --json is not JSON: %v\n%s", err, out)
	}
	if len(rep.Libraries) != 3 || len(rep.SearchDirs) == 0 || rep.Usable == (rep.Problem != "") {
		t.Errorf("report incomplete: %+v", rep)
	}
}

var genFixture = []string{"generate", fx + "clinic/data-bin", "--path", fx + "clinic/runs/b_postln/ckpt/checkpoint_last.pt", "--batch-size", "128", "--beam", "2", "--quiet"}

func TestDeviceFlagErrors(t *testing.T) {
	_, _, err := runCLI2(append(genFixture, "--device", "tpu")...)
	if exitCode(err) != exitUsage {
		t.Errorf("--device tpu: %v (exit %d), want a usage error", err, exitCode(err))
	}
	if cuda.Probe(cuda.DefaultSearch()).Usable {
		return
	}
	// No GPU here: an explicit cuda is an error, the default falls back with one note.
	if _, _, err := runCLI2(append(genFixture, "--device", "cuda")...); err == nil || !strings.Contains(err.Error(), "--device cuda") {
		t.Errorf("--device cuda without a GPU: %v", err)
	}
	out, stderr, err := runCLI2(genFixture...)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Count(stderr, "running on the CPU") != 1 || !strings.Contains(out, "BLEU4") {
		t.Errorf("fallback: stderr %q, stdout %q", stderr, out)
	}
	if _, stderr, _ := runCLI2(append(genFixture, "--device", "cpu")...); strings.Contains(stderr, "running on the CPU") {
		t.Errorf("--device cpu still notes the fallback: %q", stderr)
	}
}

type hyp struct {
	score float64
	text  string
	pos   []float64
}

func parseHyps(t *testing.T, s string) map[string]hyp {
	t.Helper()
	m := map[string]hyp{}
	sc := bufio.NewScanner(strings.NewReader(s))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		f := strings.Split(sc.Text(), "\t")
		switch {
		case strings.HasPrefix(f[0], "H-") && len(f) == 3:
			v, _ := strconv.ParseFloat(f[1], 64)
			h := m[f[0][2:]]
			h.score, h.text = v, f[2]
			m[f[0][2:]] = h
		case strings.HasPrefix(f[0], "P-") && len(f) == 2:
			h := m[f[0][2:]]
			for _, x := range strings.Fields(f[1]) {
				v, _ := strconv.ParseFloat(x, 64)
				h.pos = append(h.pos, v)
			}
			m[f[0][2:]] = h
		}
	}
	return m
}

// TestGenerateCUDAMatchesCPU runs xform generate on every fixture model with the GPU
// and with the CPU backend: the hypotheses must be identical and the scores within
// 1e-4 (what the reference's own GPU and CPU outputs differ by; the output has 4
// decimals). It also compares with the reference's GPU output, gen_beamN.txt.
func TestGenerateCUDAMatchesCPU(t *testing.T) {
	if r := cuda.Probe(cuda.DefaultSearch()); !r.Usable {
		if os.Getenv("XFORM_CUDA_REQUIRE") == "1" {
			t.Fatalf("XFORM_CUDA_REQUIRE=1 but no GPU: %s", r.Problem)
		}
		t.Skipf("no usable GPU: %s", r.Problem)
	}
	for _, run := range []string{"a_admin", "b_postln", "c_preln"} {
		for _, beam := range []string{"4", "1"} {
			t.Run(run+"/beam"+beam, func(t *testing.T) {
				args := []string{"generate", fx + "clinic/data-bin", "--path", fx + "clinic/runs/" + run + "/ckpt/checkpoint_last.pt", "--batch-size", "128", "--beam", beam}
				outs := map[string]string{}
				for _, dev := range []string{"cpu", "cuda"} {
					start := time.Now()
					out, stderr, err := runCLI2(append(args, "--device", dev)...)
					if err != nil {
						t.Fatalf("--device %s: %v\n%s", dev, err, stderr)
					}
					t.Logf("--device %s: %v", dev, time.Since(start).Round(time.Millisecond))
					outs[dev] = out
				}
				cpuH, gpuH := parseHyps(t, outs["cpu"]), parseHyps(t, outs["cuda"])
				ref, _ := os.ReadFile(fx + "clinic/runs/" + run + "/gen_beam" + beam + ".txt")
				refH := parseHyps(t, string(ref))
				if len(cpuH) == 0 || len(cpuH) != len(gpuH) {
					t.Fatalf("%d CPU hypotheses, %d GPU", len(cpuH), len(gpuH))
				}
				same, sameRef := 0, 0
				var dScore, dPos float64
				for id, c := range cpuH {
					g := gpuH[id]
					if refH[id].text == g.text {
						sameRef++
					}
					if g.text != c.text {
						t.Errorf("H-%s differs:\n cpu  %s\n cuda %s", id, c.text, g.text)
						continue
					}
					same++
					dScore = max(dScore, math.Abs(g.score-c.score))
					for i := range c.pos {
						dPos = max(dPos, math.Abs(g.pos[i]-c.pos[i]))
					}
				}
				t.Logf("%d/%d hypotheses identical to the CPU backend's (%d/%d to the reference's GPU output); max |Δscore| %.2g, max |ΔP| %.2g",
					same, len(cpuH), sameRef, len(cpuH), dScore, dPos)
				if dScore > 1e-4 || dPos > 1.01e-4 {
					t.Errorf("scores differ by %.3g / %.3g", dScore, dPos)
				}
			})
		}
	}
}

// TestTrainingGPUFlags: the training commands offer the GPU step's switches, each
// described in --help.
func TestTrainingGPUFlags(t *testing.T) {
	for _, cmd := range []string{"train", "bench"} {
		out, _, err := runCLI2(cmd, "--help")
		if err != nil {
			t.Fatalf("%s --help: %v", cmd, err)
		}
		for _, flag := range []string{"--cuda-graphs", "--cuda-autotune", "--cuda-defer-dw"} {
			if !strings.Contains(out, flag) {
				t.Errorf("xform %s --help does not list %s", cmd, flag)
			}
		}
	}
}
