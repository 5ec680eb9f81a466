package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const fx = "../../fixtures/"

func runCLI(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := newRootCmd()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.Execute()
	return out.String(), err
}

// Every bad input gives one clear error naming the file, a non-zero exit and no output directory.
func TestImportBadInput(t *testing.T) {
	dir := t.TempDir()
	good, _ := os.ReadFile(fx + "clinic/runs/b_postln/ckpt/checkpoint_last.pt")
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, b, 0o644)
		return p
	}
	wrongProfile := write("profile.ratio.init", []byte("1 1.0\n2 1.5\n"))
	cases := []struct {
		name string
		args func(out string) []string
		want string
		code int
	}{
		{"missing file", func(o string) []string { return []string{"import", filepath.Join(dir, "nope.pt"), "-o", o} }, "no such file", 1},
		{"truncated", func(o string) []string { return []string{"import", write("trunc.pt", good[:len(good)/3]), "-o", o} }, "truncated", 1},
		{"not a checkpoint", func(o string) []string { return []string{"import", write("text.pt", []byte("hello")), "-o", o} }, "not a torch checkpoint", 1},
		{"wrong profile count", func(o string) []string {
			return []string{"import", fx + "clinic/runs/a_admin/ckpt/checkpoint_last.pt", "-o", o, "--profile", wrongProfile}
		}, "2 values", 1},
		{"profile for a non-Admin model", func(o string) []string {
			return []string{"import", fx + "clinic/runs/b_postln/ckpt/checkpoint_last.pt", "-o", o, "--profile", fx + "clinic/runs/a_admin/profile.ratio.init"}
		}, "not an Admin model", 1},
		{"no -o", func(o string) []string {
			return []string{"import", fx + "clinic/runs/b_postln/ckpt/checkpoint_last.pt"}
		}, "-o DIR is required", 2},
		{"two args", func(o string) []string { return []string{"inspect", "a", "b"} }, "accepts 1 arg", 2},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out := filepath.Join(dir, "out-"+strings.ReplaceAll(c.name, " ", "_"))
			_, err := runCLI(t, c.args(out)...)
			if err == nil {
				t.Fatal("no error")
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q does not mention %q", err, c.want)
			}
			if got := exitCode(err); got != c.code {
				t.Errorf("exit code %d, want %d", got, c.code)
			}
			if _, err := os.Stat(out); err == nil {
				t.Error("output directory left behind")
			}
			ents, _ := os.ReadDir(dir)
			for _, e := range ents {
				if strings.Contains(e.Name(), ".tmp-") {
					t.Errorf("temporary %s left behind", e.Name())
				}
			}
		})
	}
}

func TestInspectJSONAndDemo(t *testing.T) {
	out, err := runCLI(t, "inspect", "--json", fx+"torch/a_admin_fp16.pt")
	if err != nil {
		t.Fatal(err)
	}
	var r struct {
		DTypes []string `json:"dtypes"`
		Config struct {
			Init string `json:"init_type"`
		} `json:"config"`
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatal(err)
	}
	if strings.Join(r.DTypes, ",") != "F16" || r.Config.Init != "adaptive" {
		t.Errorf("fp16 Admin checkpoint reported as %+v", r)
	}
	if testing.Short() {
		return
	}
	if out, err := runCLI(t, "demo"); err != nil || !strings.Contains(out, "all steps passed") {
		t.Fatalf("demo: %v\n%s", err, out)
	}
}

// translate streams its input in --buffer-size chunks; ids continue across chunks and the
// hypotheses equal fairseq-generate's on the same sentences.
func TestTranslateStreamsInChunks(t *testing.T) {
	src, err := os.ReadFile(fx + "clinic/corpus/test.src")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.SplitN(string(src), "\n", 8)[:7]
	in := strings.Join(lines, "\n") + "\n"
	run := func(buf string) string {
		root := newRootCmd()
		var out bytes.Buffer
		root.SetOut(&out)
		root.SetErr(&bytes.Buffer{})
		root.SetIn(strings.NewReader(in))
		root.SetArgs([]string{"translate", fx + "clinic/data-bin", "--path", fx + "clinic/runs/a_admin/ckpt/checkpoint_last.pt",
			"--beam", "4", "--buffer-size", buf, "--device", "cpu"})
		if err := root.Execute(); err != nil {
			t.Fatal(err)
		}
		return out.String()
	}
	small, big := run("3"), run("512")
	if small != big {
		t.Fatalf("--buffer-size 3 and 512 differ:\n%s\n---\n%s", small, big)
	}
	ref, _ := os.ReadFile(fx + "clinic/runs/a_admin/gen_beam4_cpu.txt")
	want := map[string]string{}
	for _, l := range strings.Split(string(ref), "\n") {
		if f := strings.Split(l, "\t"); len(f) == 3 && strings.HasPrefix(f[0], "H-") {
			want[f[0]] = f[2]
		}
	}
	n := 0
	for _, l := range strings.Split(small, "\n") {
		if f := strings.Split(l, "\t"); len(f) == 3 && strings.HasPrefix(f[0], "H-") {
			n++
			if want[f[0]] != f[2] {
				t.Errorf("%s: %q, fairseq-generate %q", f[0], f[2], want[f[0]])
			}
		}
	}
	if n != 7 {
		t.Errorf("%d hypotheses, want 7", n)
	}
}
