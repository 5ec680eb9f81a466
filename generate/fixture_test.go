package generate

import (
	"bufio"
	"bytes"
	"context"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/xform-dev/xform/convert"
	"github.com/xform-dev/xform/kernels/cpu"
	"github.com/xform-dev/xform/model"
)

const fixtures = "../fixtures/clinic"

// genLines are the S/T/H/P lines of a fairseq-generate output in file order, plus its
// summary lines.
type genOutput struct {
	order []string // sentence ids in S- order
	hyp   map[string]string
	score map[string]float64
	pos   map[string][]float64
	src   map[string]string
	tgt   map[string]string
	bleu  string
	ntoks string
}

func parseGen(t *testing.T, text []byte) *genOutput {
	t.Helper()
	g := &genOutput{hyp: map[string]string{}, score: map[string]float64{}, pos: map[string][]float64{}, src: map[string]string{}, tgt: map[string]string{}}
	sc := bufio.NewScanner(bytes.NewReader(text))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		f := strings.Split(line, "\t")
		switch {
		case strings.HasPrefix(line, "S-"):
			id := strings.TrimPrefix(f[0], "S-")
			g.order = append(g.order, id)
			g.src[id] = f[1]
		case strings.HasPrefix(line, "T-"):
			g.tgt[strings.TrimPrefix(f[0], "T-")] = f[1]
		case strings.HasPrefix(line, "H-"):
			id := strings.TrimPrefix(f[0], "H-")
			v, err := strconv.ParseFloat(f[1], 64)
			if err != nil {
				t.Fatalf("bad H line %q", line)
			}
			g.score[id], g.hyp[id] = v, f[2]
		case strings.HasPrefix(line, "P-"):
			id := strings.TrimPrefix(f[0], "P-")
			for _, x := range strings.Fields(f[1]) {
				v, _ := strconv.ParseFloat(x, 64)
				g.pos[id] = append(g.pos[id], v)
			}
		case strings.HasPrefix(line, "| Generate"):
			g.bleu = line
		case strings.HasPrefix(line, "| Translated"):
			g.ntoks = strings.SplitN(line, " in ", 2)[0]
		}
	}
	return g
}

func loadRunner(t testing.TB, run string, opts ...cpu.Option) *model.Runner {
	t.Helper()
	m, err := convert.LoadCheckpoint(filepath.Join(fixtures, "runs", run, "ckpt/checkpoint_last.pt"))
	if err != nil {
		t.Fatal(err)
	}
	r, err := model.NewRunner(m, cpu.New(0, opts...))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestGenerateMatchesFairseq runs beam 4 and beam 1 on the fixture test set with
// batch size 128 and compares with the reference's --cpu outputs: identical sentence
// order, hypotheses and BLEU line; scores and positional scores within 1e-4 (the
// reference prints P- with 4 decimals; GPU and CPU references differ by up to 1e-4).
func TestGenerateMatchesFairseq(t *testing.T) {
	sp, err := LoadSplit(filepath.Join(fixtures, "data-bin"), "test", "src", "tgt")
	if err != nil {
		t.Fatal(err)
	}
	for _, run := range []string{"a_admin", "b_postln", "c_preln"} {
		r := loadRunner(t, run)
		for _, beam := range []int{4, 1} {
			t.Run(run+"/beam"+strconv.Itoa(beam), func(t *testing.T) {
				ref, err := os.ReadFile(filepath.Join(fixtures, "runs", run, "gen_beam"+strconv.Itoa(beam)+"_cpu.txt"))
				if err != nil {
					t.Fatal(err)
				}
				want := parseGen(t, ref)
				opt := Options{Subset: "test", Search: model.DefaultBeamOptions(), BatchSize: 128, RequiredBatchSizeMultiple: 8, Seed: 1}
				opt.Search.Beam = beam
				var out bytes.Buffer
				res, err := Run(context.Background(), r, sp, opt, &out, &out)
				if err != nil {
					t.Fatal(err)
				}
				Summary(&out, res, "test", beam)
				got := parseGen(t, out.Bytes())
				if strings.Join(got.order, ",") != strings.Join(want.order, ",") {
					t.Errorf("sentence order differs:\n got %v\nwant %v", got.order, want.order)
				}
				var maxScore, maxPos float64
				mismatch := 0
				for _, id := range want.order {
					if got.src[id] != want.src[id] || got.tgt[id] != want.tgt[id] {
						t.Errorf("S/T-%s differ", id)
					}
					if got.hyp[id] != want.hyp[id] {
						mismatch++
						t.Errorf("H-%s:\n got %s\nwant %s", id, got.hyp[id], want.hyp[id])
						continue
					}
					maxScore = max(maxScore, math.Abs(got.score[id]-want.score[id]))
					for i := range want.pos[id] {
						maxPos = max(maxPos, math.Abs(got.pos[id][i]-want.pos[id][i]))
					}
				}
				t.Logf("%d/%d hypotheses identical; max |Δscore| = %.2g, max |ΔP| = %.2g", len(want.order)-mismatch, len(want.order), maxScore, maxPos)
				if maxScore > 1e-4 || maxPos > 1.01e-4 {
					t.Errorf("scores differ: %.3g / %.3g", maxScore, maxPos)
				}
				if got.bleu != want.bleu {
					t.Errorf("BLEU line:\n got %s\nwant %s", got.bleu, want.bleu)
				}
				if got.ntoks != want.ntoks {
					t.Errorf("summary:\n got %s\nwant %s", got.ntoks, want.ntoks)
				}
			})
		}
	}
}
