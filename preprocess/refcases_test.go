package preprocess

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/xform-dev/xform/train/data"
)

// Reference data-bins made by tools/reference/preprocess_refs.sh (the fork's
// own preprocess.py) from fixtures/preprocess/inputs.
const (
	refDir    = "../fixtures/preprocess/ref"
	inputsDir = "../fixtures/preprocess/inputs"
)

type refCase struct {
	name string
	opt  func(o *Options, tmp string)
}

func corpusA(o *Options) {
	o.SourceLang, o.TargetLang = "src", "tgt"
	o.TrainPref = inputsDir + "/a/train"
	o.ValidPref = inputsDir + "/a/valid," + inputsDir + "/a/valid2"
	o.TestPref = inputsDir + "/a/test"
}

func corpusB(o *Options) {
	o.SourceLang, o.TargetLang = "src", "tgt"
	o.TrainPref, o.ValidPref, o.TestPref = inputsDir+"/b/train", inputsDir+"/b/valid", inputsDir+"/b/test"
}

var refCases = []refCase{
	{"joined", func(o *Options, _ string) { corpusA(o); o.JoinedDictionary = true }},
	{"separate", func(o *Options, _ string) { corpusA(o) }},
	{"threshold", func(o *Options, _ string) { corpusA(o); o.ThresholdSrc, o.ThresholdTgt = 3, 2 }},
	{"nwords", func(o *Options, _ string) { corpusA(o); o.NWordsSrc, o.NWordsTgt = 21, 13 }},
	{"nopad", func(o *Options, _ string) { corpusA(o); o.NWordsSrc, o.PaddingFactor = 30, 1 }},
	{"workers2", func(o *Options, _ string) { corpusB(o) }},
	{"srcdict", func(o *Options, _ string) { corpusB(o); o.SrcDict = inputsDir + "/b/srcdict.txt" }},
	{"cached", func(o *Options, _ string) { corpusA(o); o.JoinedDictionary, o.DatasetImpl = true, data.ImplCached }},
	{"lazy", func(o *Options, _ string) { corpusA(o); o.JoinedDictionary, o.DatasetImpl = true, data.ImplLazy }},
	{"raw", func(o *Options, _ string) { corpusA(o); o.JoinedDictionary, o.DatasetImpl = true, data.ImplRaw }},
	{"onlysource", func(o *Options, _ string) {
		o.SourceLang, o.OnlySource = "src", true
		o.TrainPref, o.TestPref = inputsDir+"/a/train", inputsDir+"/a/test"
	}},
	{"bigvocab", func(o *Options, tmp string) {
		o.SourceLang, o.TargetLang = "src", "tgt"
		o.TrainPref, o.JoinedDictionary = genBig(tmp), true
	}},
}

// genBig writes the corpus of preprocess_ref_helper.py gen-big (same formula).
func genBig(dir string) string {
	var src, tgt bytes.Buffer
	for i := 0; i < 33000; i++ {
		fmt.Fprintf(&src, "b%05d b%05d\n", 2*i, 2*i+1)
		fmt.Fprintf(&tgt, "c%05d\n", i)
	}
	p := filepath.Join(dir, "big")
	if err := os.MkdirAll(p, 0o755); err != nil {
		panic(err)
	}
	os.WriteFile(filepath.Join(p, "train.src"), src.Bytes(), 0o644)
	os.WriteFile(filepath.Join(p, "train.tgt"), tgt.Bytes(), 0o644)
	return filepath.Join(p, "train")
}

var logPath = regexp.MustCompile(`\] (?:.*/)?([^/]+): `)

// reportLines keeps fairseq's "| " report lines, input paths cut to their
// base name and the destination dropped.
func reportLines(b []byte) []string {
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		l := sc.Text()
		if !strings.HasPrefix(l, "| ") {
			continue
		}
		if strings.HasPrefix(l, "| Wrote preprocessed data to ") {
			l = "| Wrote preprocessed data to"
		}
		out = append(out, logPath.ReplaceAllString(l, "] $1: "))
	}
	return out
}

func TestReferenceCases(t *testing.T) {
	if _, err := os.Stat(refDir); err != nil {
		t.Skipf("reference outputs not made yet (%v): run tools/reference/preprocess_refs.sh with OUT=fixtures/preprocess/ref", err)
	}
	for _, tc := range refCases {
		t.Run(tc.name, func(t *testing.T) {
			ref := filepath.Join(refDir, tc.name)
			if _, err := os.Stat(ref); err != nil {
				t.Skipf("no reference output: %v", err)
			}
			wantLog, err := os.ReadFile(filepath.Join(ref, "preprocess.log"))
			if err != nil {
				t.Fatal(err)
			}
			for _, par := range []struct{ workers, chunk int }{{1, 0}, {3, 997}} {
				tmp := t.TempDir()
				o := Defaults()
				tc.opt(&o, tmp)
				o.DestDir = filepath.Join(tmp, "out")
				o.Workers, o.chunkSize = par.workers, par.chunk
				var log bytes.Buffer
				o.Log = &log
				if err := Run(context.Background(), o); err != nil {
					t.Fatalf("workers=%d: %v", par.workers, err)
				}
				sameOutputs(t, o.DestDir, ref)
				got, want := reportLines(log.Bytes()), reportLines(wantLog)
				if strings.Join(got, "\n") != strings.Join(want, "\n") {
					t.Errorf("workers=%d: report\n%s\nwant\n%s", par.workers, strings.Join(got, "\n"), strings.Join(want, "\n"))
				}
			}
		})
	}
}

// sameOutputs compares every data file of the reference directory (not its
// logs) with ours, and checks we wrote nothing else.
func sameOutputs(t *testing.T, got, ref string) {
	t.Helper()
	skip := map[string]bool{"preprocess.log": true, "stderr.log": true, "args.txt": true}
	refEnts, err := os.ReadDir(ref)
	if err != nil {
		t.Fatal(err)
	}
	gotEnts, err := os.ReadDir(got)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{}
	for _, e := range refEnts {
		if !skip[e.Name()] {
			want[e.Name()] = true
		}
	}
	for _, e := range gotEnts {
		if !want[e.Name()] {
			t.Errorf("unexpected output %s", e.Name())
		}
	}
	sameBytes(t, got, ref, want)
}
