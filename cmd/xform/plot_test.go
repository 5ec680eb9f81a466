package main

import (
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// xform plot draws the Clinic's own log with ω over its checkpoints, and xform's json and
// simple logs, into PNGs of the requested size; bad input exits with an error.
func TestPlotCommand(t *testing.T) {
	tmp := t.TempDir()
	run := filepath.Join("..", "..", "fixtures", "clinic", "runs", "a_admin")
	ours := map[string]string{}
	for _, format := range []string{"simple", "json"} {
		out, err := runXform(tinyTrainArgs(filepath.Join(tmp, "ck-"+format), 3, "--log-format", format)...)
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		ours[format] = filepath.Join(tmp, format+".log")
		if err := os.WriteFile(ours[format], []byte(out), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cases := []struct {
		name   string
		args   []string
		panels int
		want   string
	}{
		{"clinic log and checkpoints", []string{filepath.Join(run, "train_main.log"), "--checkpoints",
			filepath.Join(run, "ckpt", "checkpoint*.pt") + "," + filepath.Join(run, "ckpt_u1", "checkpoint_last.pt")}, 3,
			"39 train, 42 valid, 39 lr points, ω of 3 checkpoints"},
		{"checkpoints as arguments", []string{filepath.Join(run, "train_main.log"), filepath.Join(run, "ckpt", "checkpoint_12_300.pt"),
			filepath.Join(run, "ckpt", "checkpoint_last.pt")}, 3, "ω of 2 checkpoints"},
		{"xform simple log", []string{ours["simple"]}, 2, "3 train, 1 valid, 3 lr points"},
		{"xform json log", []string{ours["json"]}, 2, "3 train, 1 valid, 3 lr points"},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			png1 := filepath.Join(tmp, strings.ReplaceAll(c.name, " ", "_")+".png")
			out, err := runXform(append(append([]string{"plot"}, c.args...), "-o", png1, "--width", "800", "--panel-height", "250")...)
			if err != nil || !strings.Contains(out, c.want) {
				t.Fatalf("%v\n%s", err, out)
			}
			f, err := os.Open(png1)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			img, err := png.Decode(f)
			if err != nil {
				t.Fatal(err)
			}
			if b := img.Bounds(); b.Dx() != 800 || b.Dy() != 250*c.panels {
				t.Errorf("case %d: image %v, want 800×%d", i, b, 250*c.panels)
			}
		})
	}
	for _, bad := range [][]string{
		{"plot", filepath.Join(run, "commands.txt"), "-o", filepath.Join(tmp, "x.png")},
		{"plot", filepath.Join(run, "train_main.log")},
		{"plot", filepath.Join(run, "train_main.log"), "--checkpoints", filepath.Join(tmp, "none*.pt"), "-o", filepath.Join(tmp, "y.png")},
	} {
		if out, err := runXform(bad...); err == nil {
			t.Errorf("%v: no error\n%s", bad, out)
		}
	}
}
