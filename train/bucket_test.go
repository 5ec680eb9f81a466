package train_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os/exec"
	"slices"
	"sort"
	"testing"

	"github.com/xform-dev/xform/internal/pytest"

	"github.com/xform-dev/xform/generate"
	"github.com/xform-dev/xform/kernels/cpu"
	"github.com/xform-dev/xform/model"
	"github.com/xform-dev/xform/train"
	"github.com/xform-dev/xform/train/data"
)

// competitorBatching loads bucket_edges, bucket_batches, epoch_order and collate (and
// the module's constants) from tools/bench/torch_competitor.py without importing it,
// since the module imports torch at the top and CI has no torch, then answers each case
// of the JSON on stdin with the script's edges, batches, two epochs' orders and collated
// batches.
const competitorBatching = `
import ast, json, math, sys
import numpy as np
path = sys.argv[1]
tree = ast.parse(open(path).read(), path)
want = {'bucket_edges', 'bucket_batches', 'epoch_order', 'collate'}
body = [n for n in tree.body if isinstance(n, ast.Assign) or (isinstance(n, ast.FunctionDef) and n.name in want)]
missing = want - {n.name for n in body if isinstance(n, ast.FunctionDef)}
if missing:
    sys.exit('%s: no %s' % (path, sorted(missing)))
ns = {'np': np, 'math': math}
exec(compile(ast.Module(body=body, type_ignores=[]), path, 'exec'), ns)
out = []
for c in json.load(sys.stdin):
    src = [np.array(x, dtype=np.int64) for x in c['src']]
    tgt = [np.array(x, dtype=np.int64) for x in c['tgt']]
    edges = ns['bucket_edges'](src, tgt, c['k'])
    frozen = ns['bucket_batches'](src, tgt, c['max_tokens'], c['seed'], edges, c['mult'])
    coll = []
    for ids, L in frozen:
        s, p, t, _, _ = ns['collate'](ids, src, tgt, L)
        coll.append({'s': s.tolist(), 'p': p.tolist(), 't': t.tolist()})
    out.append({'edges': edges, 'batches': [[ids, L] for ids, L in frozen],
                'epochs': [[[ids, L] for ids, L in ns['epoch_order'](frozen, c['seed'], e)] for e in (1, 2)],
                'collated': coll})
json.dump(out, sys.stdout)
`

type bucketCase struct {
	name                string
	src, tgt            [][]int32
	k, maxTokens, mult  int
	seed                uint32
	srcLens, tgtLens    []int
	wantEdges           []int // hand-computed where given
	wantOversizeBatches bool  // some B_L·L > maxTokens (B_L held at mult)
	wantSomeTiedSrcLens bool  // equal source lengths side by side in a batch
}

// sentence returns l tokens (</s> included): ids 4..99, </s> last.
func sentence(r *rand.Rand, l int) []int32 {
	s := make([]int32, l)
	for i := range s[:l-1] {
		s[i] = int32(4 + r.IntN(96))
	}
	s[l-1] = data.EOS
	return s
}

// pairs makes n sentence pairs with the lengths lens draws.
func pairs(r *rand.Rand, n int, lens func() (int, int)) (src, tgt [][]int32) {
	for i := 0; i < n; i++ {
		a, b := lens()
		src, tgt = append(src, sentence(r, a)), append(tgt, sentence(r, b))
	}
	return src, tgt
}

func bucketCases() []bucketCase {
	r := rand.New(rand.NewPCG(11, 12))
	var cs []bucketCase
	add := func(c bucketCase) {
		for i := range c.src {
			c.srcLens, c.tgtLens = append(c.srcLens, len(c.src[i])), append(c.tgtLens, len(c.tgt[i]))
		}
		cs = append(cs, c)
	}
	uniform := func(lo, hi int) func() (int, int) {
		return func() (int, int) { return lo + r.IntN(hi-lo+1), lo + r.IntN(hi-lo+1) }
	}
	c := bucketCase{name: "uniform 3..103, 3 buckets", k: 3, maxTokens: 1024, mult: 8, seed: 1111}
	// The shortest pair (3) and the longest (103) are set so that the edges are known:
	// ceil(3 + 100/3) = 37, ceil(3 + 200/3) = 70, 103.
	c.src, c.tgt = pairs(r, 600, uniform(3, 103))
	c.src[0], c.tgt[0] = sentence(r, 3), sentence(r, 3)
	c.src[1], c.tgt[1] = sentence(r, 103), sentence(r, 2)
	c.wantEdges = []int{37, 70, 103}
	add(c)
	c = bucketCase{name: "small max tokens: B_L held at mult", k: 5, maxTokens: 300, mult: 8, seed: 7, wantOversizeBatches: true}
	c.src, c.tgt = pairs(r, 400, uniform(2, 60))
	add(c)
	c = bucketCase{name: "few lengths: repeated edges merged", k: 4, maxTokens: 64, mult: 8, seed: 3, wantSomeTiedSrcLens: true}
	c.src, c.tgt = pairs(r, 200, uniform(5, 7)) // edges ceil(5.5), ceil(6), ceil(6.5), 7 = {6, 7}
	c.wantEdges = []int{6, 7}
	add(c)
	c = bucketCase{name: "one length", k: 3, maxTokens: 100, mult: 8, seed: 5}
	c.src, c.tgt = pairs(r, 50, func() (int, int) { return 9, 9 })
	c.wantEdges = []int{9}
	add(c)
	c = bucketCase{name: "mult 1, one bucket, skewed", k: 1, maxTokens: 97, mult: 1, seed: 4000000000}
	c.src, c.tgt = pairs(r, 300, func() (int, int) { return 2 + int(r.ExpFloat64()*8), 2 + r.IntN(30) })
	add(c)
	c = bucketCase{name: "many buckets", k: 9, maxTokens: 2048, mult: 8, seed: 1}
	c.src, c.tgt = pairs(r, 1500, uniform(1, 120))
	add(c)
	return cs
}

func flatIDs(bs [][]int) string { return fmt.Sprint(bs) }

// The edges, batches, bucket shapes, epoch orders and padded batches equal the ones the
// competitor's own Python functions give on the same data: the comparison on the GPU
// machine is only like with like if xform steps on the same batches.
func TestBucketBatchesMatchCompetitor(t *testing.T) {
	py := pytest.Python(t, "numpy")
	cases := bucketCases()
	type pyCase struct {
		Src       [][]int32 `json:"src"`
		Tgt       [][]int32 `json:"tgt"`
		K         int       `json:"k"`
		MaxTokens int       `json:"max_tokens"`
		Seed      uint32    `json:"seed"`
		Mult      int       `json:"mult"`
	}
	var in []pyCase
	for _, c := range cases {
		in = append(in, pyCase{c.src, c.tgt, c.k, c.maxTokens, c.seed, c.mult})
	}
	body, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(py, "-c", competitorBatching, "../tools/bench/torch_competitor.py")
	cmd.Stdin = bytes.NewReader(body)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	raw, err := cmd.Output()
	if err != nil {
		t.Fatalf("python: %v\n%s", err, stderr.String())
	}
	var want []struct {
		Edges    []int      `json:"edges"`
		Batches  [][2]any   `json:"batches"`
		Epochs   [][][2]any `json:"epochs"`
		Collated []struct {
			S, P, T [][]int32
		} `json:"collated"`
	}
	if err := json.Unmarshal(raw, &want); err != nil {
		t.Fatalf("python output: %v", err)
	}
	split := func(bs [][2]any) (ids [][]int, lens []int) {
		for _, b := range bs {
			var row []int
			for _, v := range b[0].([]any) {
				row = append(row, int(v.(float64)))
			}
			ids, lens = append(ids, row), append(lens, int(b[1].(float64)))
		}
		return ids, lens
	}
	for ci, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			w := want[ci]
			edges, err := train.BucketEdges(c.srcLens, c.tgtLens, c.k)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(edges, w.Edges) || (c.wantEdges != nil && !slices.Equal(edges, c.wantEdges)) {
				t.Fatalf("edges %v, competitor %v, by hand %v", edges, w.Edges, c.wantEdges)
			}
			batches, lens, err := train.BucketBatches(c.srcLens, c.tgtLens, c.maxTokens, c.seed, edges, c.mult)
			if err != nil {
				t.Fatal(err)
			}
			wIDs, wLens := split(w.Batches)
			if flatIDs(batches) != flatIDs(wIDs) || !slices.Equal(lens, wLens) {
				t.Fatalf("%d batches (lengths %v), competitor %d (%v)", len(batches), lens, len(wIDs), wLens)
			}
			if len(batches) == 0 {
				t.Fatal("the case makes no batch: nothing compared")
			}
			oversize := false
			for i, b := range batches {
				oversize = oversize || len(b)*lens[i] > c.maxTokens
			}
			if oversize != c.wantOversizeBatches {
				t.Errorf("some batch over max tokens: %v, want %v", oversize, c.wantOversizeBatches)
			}
			// The same list through the split-level entry point xform train and bench use.
			sp := &generate.Split{Src: c.src, Tgt: c.tgt}
			cfg := train.BatchConfig{MaxTokens: c.maxTokens, Multiple: c.mult, Seed: c.seed, MaxSourcePos: 1024, MaxTargetPos: 1024, Buckets: c.k}
			viaSplit, dropped, err := train.Batches(sp, cfg)
			if err != nil || len(dropped) != 0 || flatIDs(viaSplit) != flatIDs(batches) {
				t.Fatalf("Batches with Buckets: %v, dropped %v; differs from BucketBatches: %v", err, dropped, flatIDs(viaSplit) != flatIDs(batches))
			}
			collate, err := cfg.Collator(sp)
			if err != nil {
				t.Fatal(err)
			}
			for e := 1; e <= 2; e++ {
				got := train.EpochOrder(batches, c.seed, e)
				wIDs, _ := split(w.Epochs[e-1])
				if flatIDs(got) != flatIDs(wIDs) {
					t.Fatalf("epoch %d order differs from the competitor's", e)
				}
			}
			tied := false
			for i, b := range batches {
				tb, err := collate(b)
				if err != nil {
					t.Fatal(err)
				}
				L := lens[i]
				if tb.B != len(b) || tb.S != L || tb.T != L || tb.Validate() != nil {
					t.Fatalf("batch %d: shape [%d, %d/%d], want [%d, %d]", i, tb.B, tb.S, tb.T, len(b), L)
				}
				// Row order may differ among equal source lengths (fairseq's torch-sort
				// ties vs the script's stable sort), so compare the rows as sets and the
				// row order by source length.
				wc := w.Collated[i]
				var gotRows, wantRows []string
				for r := 0; r < tb.B; r++ {
					gotRows = append(gotRows, fmt.Sprint(tb.Src[r*L:(r+1)*L], tb.Prev[r*L:(r+1)*L], tb.Target[r*L:(r+1)*L]))
					wantRows = append(wantRows, fmt.Sprint(wc.S[r], wc.P[r], wc.T[r]))
					if r > 0 && nonPadCount(tb.Src[r*L:(r+1)*L]) == nonPadCount(tb.Src[(r-1)*L:r*L]) {
						tied = true
					}
					if r > 0 && nonPadCount(tb.Src[r*L:(r+1)*L]) != nonPadCount(wc.S[r]) {
						t.Fatalf("batch %d row %d: source length %d, competitor %d", i, r, nonPadCount(tb.Src[r*L:(r+1)*L]), nonPadCount(wc.S[r]))
					}
				}
				sort.Strings(gotRows)
				sort.Strings(wantRows)
				if !slices.Equal(gotRows, wantRows) {
					t.Fatalf("batch %d: collated rows differ from the competitor's collate(ids, src, tgt, %d)", i, L)
				}
			}
			if c.wantSomeTiedSrcLens && !tied {
				t.Errorf("no equal source lengths side by side: the tie case is not exercised")
			}
		})
	}
}

func nonPadCount(ids []int32) int {
	n := 0
	for _, id := range ids {
		if id != data.Pad {
			n++
		}
	}
	return n
}

// Without Python: each batch has exactly B_L pairs of its bucket, no pair twice, and
// what a bucket leaves out is fewer than B_L pairs; pairs over the max positions are
// left out (an error unless skipped).
func TestBucketBatchesInvariants(t *testing.T) {
	for _, c := range bucketCases() {
		edges, err := train.BucketEdges(c.srcLens, c.tgtLens, c.k)
		if err != nil {
			t.Fatal(err)
		}
		batches, lens, err := train.BucketBatches(c.srcLens, c.tgtLens, c.maxTokens, c.seed, edges, c.mult)
		if err != nil {
			t.Fatal(err)
		}
		seen := map[int]bool{}
		per := map[int]int{}
		for i, b := range batches {
			L := lens[i]
			B := max(c.mult, c.maxTokens/L/c.mult*c.mult)
			if len(b) != B {
				t.Fatalf("%s: batch %d has %d pairs, want B_L %d", c.name, i, len(b), B)
			}
			k := slices.Index(edges, L)
			for _, p := range b {
				m := max(c.srcLens[p], c.tgtLens[p])
				if seen[p] || m > L || (k > 0 && m <= edges[k-1]) {
					t.Fatalf("%s: pair %d (length %d) twice or outside bucket %d", c.name, p, m, L)
				}
				seen[p] = true
			}
			per[L] += len(b)
		}
		for k, L := range edges {
			in := 0
			for p := range c.srcLens {
				m := max(c.srcLens[p], c.tgtLens[p])
				if m <= L && (k == 0 || m > edges[k-1]) {
					in++
				}
			}
			if B := max(c.mult, c.maxTokens/L/c.mult*c.mult); in-per[L] < 0 || in-per[L] >= B {
				t.Errorf("%s: bucket %d has %d pairs, %d batched (B_L %d)", c.name, L, in, per[L], B)
			}
		}
	}
	c := bucketCases()[0]
	sp := &generate.Split{Src: c.src, Tgt: c.tgt}
	cfg := train.BatchConfig{MaxTokens: 1024, Multiple: 8, Seed: 1, MaxSourcePos: 80, MaxTargetPos: 80, Buckets: 3}
	if _, _, err := train.Batches(sp, cfg); !errors.Is(err, train.ErrData) {
		t.Fatalf("over-long pairs not skipped: want ErrData, got %v", err)
	}
	cfg.SkipInvalidAll = true
	batches, dropped, err := train.Batches(sp, cfg)
	if err != nil || len(dropped) == 0 {
		t.Fatal(err, dropped)
	}
	collate, err := cfg.Collator(sp)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range batches {
		tb, err := collate(b)
		if err != nil {
			t.Fatal(err)
		}
		if tb.S > 80 || tb.T > 80 {
			t.Fatalf("shape %d over the max positions", tb.S)
		}
		for _, p := range b {
			if slices.Contains(dropped, p) {
				t.Fatalf("dropped pair %d batched", p)
			}
		}
	}
	for _, bad := range []func(*train.BatchConfig){
		func(c *train.BatchConfig) { c.MaxTokens, c.MaxSentences = 0, 64 },
		func(c *train.BatchConfig) { c.MaxSentences = 64 },
		func(c *train.BatchConfig) { c.MaxTokens = 1 << 30 }, // one batch would need more pairs than any bucket has
	} {
		cfg := train.BatchConfig{MaxTokens: 1024, Multiple: 8, Seed: 1, MaxSourcePos: 1024, MaxTargetPos: 1024, Buckets: 3}
		bad(&cfg)
		if _, _, err := train.Batches(sp, cfg); !errors.Is(err, train.ErrData) {
			t.Errorf("%+v: want ErrData, got %v", cfg, err)
		}
	}
	if _, err := train.BucketEdges([]int{3}, []int{4}, 0); !errors.Is(err, train.ErrData) {
		t.Errorf("0 buckets: want ErrData, got %v", err)
	}
	if _, _, err := train.CollateStatic([]int{0, 1}, sp, 5, 5); !errors.Is(err, train.ErrData) {
		t.Errorf("a batch longer than the static shape: want ErrData, got %v", err)
	}
}

// Padding a batch to its bucket's shape changes neither the loss nor the gradients on the
// CPU backend: the loss of a bucketed batch equals the loss of the same sentences
// collated as fairseq does, and the sum of their losses one sentence at a time.
//
// Tolerance 1e-5 relative: the pad positions add exact zeros (masked attention
// probabilities are 0; pad targets are skipped by the loss), but a different batch
// shape changes the blocking of the float32 GEMMs and the order of the loss sum, so the
// results differ by float32 rounding (~1e-7 relative per value, summed over a few
// hundred tokens), far below 1e-5 and far above what a leaked pad token would cost
// (a pad token's loss is ≈ log V ≈ 7 nats, ~1e-2 of these sums).
func TestBucketPaddingKeepsLoss(t *testing.T) {
	ctx := context.Background()
	sp := fixtureSplit(t, "train")
	m := tinyModel(t, sp)
	be := cpu.New(1)
	net, err := model.NewTrainNet(m, be)
	if err != nil {
		t.Fatal(err)
	}
	// Small batches (B_L = 64/L with multiple 1) so that many batches fall short of
	// their bucket's edge on one side or both.
	cfg := train.BatchConfig{MaxTokens: 64, Multiple: 1, Seed: 3, MaxSourcePos: 1024, MaxTargetPos: 1024, SkipInvalidAll: true, Buckets: 2}
	frozen, _, err := train.Batches(sp, cfg)
	if err != nil {
		t.Fatal(err)
	}
	collate, err := cfg.Collator(sp)
	if err != nil {
		t.Fatal(err)
	}
	// Per bucket, the batch with the most pad positions added by the static shape.
	type pick struct {
		ids         []int
		stat, plain *model.TrainBatch
	}
	most := map[int]pick{}
	for _, b := range frozen {
		stat, err := collate(b)
		if err != nil {
			t.Fatal(err)
		}
		plain, _ := train.Collate(b, sp)
		added := func(p pick) int { return p.stat.B*(p.stat.S+p.stat.T) - p.plain.B*(p.plain.S+p.plain.T) }
		if cur, ok := most[stat.S]; !ok || added(pick{b, stat, plain}) > added(cur) {
			most[stat.S] = pick{b, stat, plain}
		}
	}
	opt := model.StepOptions{LabelSmoothing: 0.1, Backward: true}
	step := func(b *model.TrainBatch) (model.StepResult, []float32) {
		net.ZeroGrad()
		res, err := net.Step(ctx, b, opt)
		if err != nil {
			t.Fatal(err)
		}
		var g []float32
		for _, p := range net.Params() {
			g = append(g, cpu.Data(p.G)...)
		}
		return res, g
	}
	rel := func(a, b float64) float64 { return math.Abs(a-b) / math.Max(math.Abs(b), 1e-30) }
	if len(most) != 2 {
		t.Fatalf("%d buckets, want 2", len(most))
	}
	for _, pk := range most {
		b, stat, plain := pk.ids, pk.stat, pk.plain
		if plain.S == stat.S && plain.T == stat.T {
			t.Fatalf("bucket %d: no batch is padded by the static shape; the test would prove nothing", stat.S)
		}
		rs, gs := step(stat)
		rp, gp := step(plain)
		var sumLoss, sumNLL float64
		sumTok := 0
		for _, i := range b {
			one, _ := train.Collate([]int{i}, sp)
			r1, _ := step(one)
			sumLoss, sumNLL, sumTok = sumLoss+r1.Loss, sumNLL+r1.NLL, sumTok+r1.NTokens
		}
		if rs.NTokens != rp.NTokens || rs.NTokens != sumTok || rs.NSentences != len(b) {
			t.Fatalf("bucket %d: tokens %d / %d / %d, sentences %d of %d", stat.S, rs.NTokens, rp.NTokens, sumTok, rs.NSentences, len(b))
		}
		for _, x := range []struct {
			what      string
			got, want float64
		}{{"loss vs fairseq collation", rs.Loss, rp.Loss}, {"nll vs fairseq collation", rs.NLL, rp.NLL},
			{"loss vs one sentence at a time", rs.Loss, sumLoss}, {"nll vs one sentence at a time", rs.NLL, sumNLL}} {
			if e := rel(x.got, x.want); e > 1e-5 {
				t.Errorf("bucket %d: %s: %.9g vs %.9g (rel %.2g)", stat.S, x.what, x.got, x.want, e)
			}
		}
		var num, den float64
		for i := range gs {
			d := float64(gs[i]) - float64(gp[i])
			num, den = num+d*d, den+float64(gp[i])*float64(gp[i])
		}
		if e := math.Sqrt(num / den); e > 1e-5 {
			t.Errorf("bucket %d: gradients differ from the fairseq collation's by %.2g of their norm", stat.S, e)
		}
		t.Logf("bucket %d: %d sentences, [%d, %d] padded to [%d, %d]; loss %.6f (fairseq collation %.6f, one by one %.6f)",
			stat.S, stat.B, plain.S, plain.T, stat.S, stat.T, rs.Loss, rp.Loss, sumLoss)
	}
}
