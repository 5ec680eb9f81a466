package preprocess

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/xform-dev/xform/train/data"
)

func writeFiles(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, body := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestBadInput(t *testing.T) {
	good := map[string]string{
		"c/train.src": "a b c\nb c\nc\n",
		"c/train.tgt": "x y\ny\nx x\n",
		"c/valid.src": "a\nb\n",
		"c/valid.tgt": "x\ny\n",
	}
	with := func(extra map[string]string) map[string]string {
		m := map[string]string{}
		for k, v := range good {
			m[k] = v
		}
		for k, v := range extra {
			m[k] = v
		}
		return m
	}
	for _, tc := range []struct {
		name    string
		files   map[string]string
		opt     func(o *Options, dir string)
		is      error    // errors.Is target, or nil
		mention []string // substrings the message must hold
		destOK  bool     // dest existed before (pre-made dict)
	}{
		{name: "missing train source", files: map[string]string{"c/train.tgt": "x\n"},
			is: os.ErrNotExist, mention: []string{"train.src"}},
		{name: "missing second valid prefix", files: good,
			opt: func(o *Options, dir string) { o.ValidPref += "," + filepath.Join(dir, "c/nope") },
			is:  os.ErrNotExist, mention: []string{"valid1 split", "nope.src"}},
		{name: "line counts differ", files: with(map[string]string{"c/valid.tgt": "x\ny\nz\n"}),
			is: ErrLineCount, mention: []string{"valid.src has 2 lines", "valid.tgt has 3"}},
		{name: "line counts differ by a lone CR", files: with(map[string]string{"c/valid.tgt": "x\ry\nz\n"}),
			is: ErrLineCount},
		{name: "srcdict missing", files: good,
			opt: func(o *Options, dir string) { o.SrcDict = filepath.Join(dir, "nodict.txt") },
			is:  os.ErrNotExist, mention: []string{"--srcdict", "nodict.txt"}},
		{name: "srcdict without count", files: with(map[string]string{"d.txt": "a 3\nb\n"}),
			opt: func(o *Options, dir string) { o.SrcDict = filepath.Join(dir, "d.txt") },
			is:  data.ErrFormat, mention: []string{"--srcdict", "d.txt", "line 2"}},
		{name: "srcdict count not a number", files: with(map[string]string{"d.txt": "a 3\nb 4x\n"}),
			opt: func(o *Options, dir string) { o.SrcDict = filepath.Join(dir, "d.txt") },
			is:  data.ErrFormat, mention: []string{"d.txt", "line 2", "4x"}},
		{name: "srcdict not UTF-8", files: with(map[string]string{"d.txt": "a 3\n\xff 4\n"}),
			opt: func(o *Options, dir string) { o.SrcDict = filepath.Join(dir, "d.txt") },
			is:  data.ErrNotUTF8, mention: []string{"d.txt", "line 2"}},
		{name: "train not UTF-8", files: with(map[string]string{"c/train.src": "a b\nb\nc \xc3\x28\n"}),
			is: data.ErrNotUTF8, mention: []string{"train.src: line 3", "byte 3"}},
		{name: "valid not UTF-8 after a CRLF", files: with(map[string]string{"c/valid.tgt": "x\r\n\xed\xa0\x80\n"}),
			is: data.ErrNotUTF8, mention: []string{"valid.tgt: line 2"}},
		{name: "existing different dictionary", files: with(map[string]string{"out/dict.src.txt": "zz 1\n"}),
			is: ErrExists, mention: []string{filepath.Join("out", "dict.src.txt"), "--force"}, destOK: true},
		{name: "destdir is a file", files: with(map[string]string{"out": "x"}), destOK: true},
		{name: "no source lang", files: good, opt: func(o *Options, _ string) { o.SourceLang = "" }, is: ErrUsage},
		{name: "no target lang", files: good, opt: func(o *Options, _ string) { o.TargetLang = "" }, is: ErrUsage},
		{name: "zero workers", files: good, opt: func(o *Options, _ string) { o.Workers = 0 }, is: ErrUsage},
		{name: "zero padding factor", files: good, opt: func(o *Options, _ string) { o.PaddingFactor = 0 }, is: ErrUsage},
		{name: "bad impl", files: good, opt: func(o *Options, _ string) { o.DatasetImpl = "mmapx" }, is: ErrUsage},
		{name: "joined with both dicts", files: good, opt: func(o *Options, dir string) {
			o.JoinedDictionary, o.SrcDict, o.TgtDict = true, "a", "b"
		}, is: ErrUsage},
		{name: "no trainpref to build from", files: good, opt: func(o *Options, _ string) { o.TrainPref = "" }, is: ErrUsage},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			dir := filepath.Join(root, "in")
			writeFiles(t, dir, tc.files)
			o := Defaults()
			o.SourceLang, o.TargetLang = "src", "tgt"
			o.TrainPref = filepath.Join(dir, "c/train")
			o.ValidPref = filepath.Join(dir, "c/valid")
			o.DestDir = filepath.Join(dir, "out")
			o.Workers = 2
			o.chunkSize = 3
			if tc.opt != nil {
				tc.opt(&o, dir)
			}
			err := Run(context.Background(), o)
			if err == nil {
				t.Fatal("no error")
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("error %q is not %v", err, tc.is)
			}
			for _, m := range tc.mention {
				if !strings.Contains(err.Error(), m) {
					t.Errorf("error %q does not mention %q", err, m)
				}
			}
			// Nothing partial: no destdir (unless it was there), no temp dir left.
			if _, err := os.Stat(o.DestDir); !tc.destOK && err == nil {
				t.Errorf("destdir %s created on error", o.DestDir)
			}
			ents, _ := os.ReadDir(dir)
			for _, e := range ents {
				if strings.Contains(e.Name(), "xform-tmp") {
					t.Errorf("temporary directory %s left behind", e.Name())
				}
			}
			if tc.destOK {
				if st, err := os.Stat(o.DestDir); err == nil && st.IsDir() {
					ents, _ := os.ReadDir(o.DestDir)
					if len(ents) != 1 {
						t.Errorf("destdir holds %d entries after a failed run, want the 1 it had", len(ents))
					}
				}
			}
		})
	}
}

// An identical dictionary already in --destdir is kept; a different one is
// replaced with --force.
func TestExistingDictionary(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"train.src": "a b a\n", "train.tgt": "x\n"})
	o := Defaults()
	o.SourceLang, o.TargetLang = "src", "tgt"
	o.TrainPref = filepath.Join(dir, "train")
	o.DestDir = filepath.Join(dir, "out")
	if err := Run(context.Background(), o); err != nil {
		t.Fatal(err)
	}
	if err := Run(context.Background(), o); err != nil {
		t.Fatalf("second identical run: %v", err)
	}
	writeFiles(t, dir, map[string]string{"train.src": "a b b b\n"})
	if err := Run(context.Background(), o); !errors.Is(err, ErrExists) {
		t.Fatalf("changed corpus without --force: %v", err)
	}
	o.Force = true
	var log bytes.Buffer
	o.Log = &log
	if err := Run(context.Background(), o); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(log.String(), "overwriting") {
		t.Errorf("no overwrite notice in %q", log.String())
	}
	d, err := data.LoadDictionary(filepath.Join(o.DestDir, "dict.src.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if d.Symbol(4) != "b" {
		t.Errorf("dictionary not replaced: first symbol %q", d.Symbol(4))
	}
}

func TestContextCanceled(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"train.src": strings.Repeat("a b c\n", 1000), "train.tgt": strings.Repeat("x\n", 1000)})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	o := Defaults()
	o.SourceLang, o.TargetLang = "src", "tgt"
	o.TrainPref = filepath.Join(dir, "train")
	o.DestDir = filepath.Join(dir, "out")
	o.Workers, o.chunkSize = 4, 64
	if err := Run(ctx, o); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if _, err := os.Stat(o.DestDir); err == nil {
		t.Error("destdir created by a canceled run")
	}
}

// A train file with \r line ends: xform counts every line (fairseq 0.8 may
// stop early) and says so in the log.
func TestCarriageReturnInTrain(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"train.src": "a b\nb c\rc d\r\nd\n", "train.tgt": "x\ny\nz\nw\n"})
	o := Defaults()
	o.SourceLang, o.TargetLang = "src", "tgt"
	o.TrainPref = filepath.Join(dir, "train")
	o.DestDir = filepath.Join(dir, "out")
	var log bytes.Buffer
	o.Log = &log
	o.Workers, o.chunkSize = 2, 4
	if err := Run(context.Background(), o); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(log.String(), "train.src: line 2 ends in \\r") {
		t.Errorf("no warning for line 2 in:\n%s", log.String())
	}
	d, err := data.LoadDictionary(filepath.Join(o.DestDir, "dict.src.txt"))
	if err != nil {
		t.Fatal(err)
	}
	for sym, want := range map[string]int64{"b": 2, "c": 2, "d": 2, "a": 1} {
		if got := d.Count(d.Index(sym)); got != want {
			t.Errorf("count(%s) = %d, want %d", sym, got, want)
		}
	}
}
