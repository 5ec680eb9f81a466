package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"slices"
	"testing"

	"github.com/xform-dev/xform/internal/pytest"

	"github.com/xform-dev/xform/model"
	"github.com/xform-dev/xform/train"
)

// competitorPlan loads the synthetic corpus and batching functions of
// tools/bench/torch_competitor.py without importing the module (it imports torch at the
// top; CI has numpy only) and prints the batches its compile modes step on: per bucket
// the first batch 3 times, then epoch 1, 2, … in order (the plan main() builds), each as
// [sorted ids, L, target tokens, source tokens, slots].
const competitorPlan = `
import ast, json, math, sys
import numpy as np
path, pairs, k, max_tokens, seed, n = sys.argv[1], *map(int, sys.argv[2:])
tree = ast.parse(open(path).read(), path)
want = {'mix', 'synth_lengths', 'synth_ranks', 'synth_corpus', 'bucket_edges', 'bucket_batches', 'epoch_order', 'collate'}
body = [x for x in tree.body if isinstance(x, ast.Assign) or (isinstance(x, ast.FunctionDef) and x.name in want)]
missing = want - {x.name for x in body if isinstance(x, ast.FunctionDef)}
if missing:
    sys.exit('%s: no %s' % (path, sorted(missing)))
ns = {'np': np, 'math': math}
exec(compile(ast.Module(body=body, type_ignores=[]), path, 'exec'), ns)
src, tgt, _ = ns['synth_corpus'](pairs, 1)
edges = ns['bucket_edges'](src, tgt, k)
frozen = ns['bucket_batches'](src, tgt, max_tokens, seed, edges)
plan = []
for L in edges:
    plan += [b for b in frozen if b[1] == L][:1] * 3
warm = len(plan)
epoch = 1
while len(plan) < warm + n:
    plan += ns['epoch_order'](frozen, seed, epoch)
    epoch += 1
out = []
for ids, L in plan[:warm + n]:
    s, p, t, sl, tl = ns['collate'](ids, src, tgt, L)
    out.append([sorted(ids), L, int(sum(tl)), int(sum(sl)), int(s.size + t.size)])
json.dump({'edges': edges, 'warm': warm, 'plan': out}, sys.stdout)
`

// xform bench --batching bucket steps on the competitor's compile-mode batches: the same
// bucket edges, the same shape warm-up, the same timed batches in the same order with the
// same shapes, token counts and padding slots.
func TestBucketPlanMatchesCompetitor(t *testing.T) {
	py := pytest.Python(t, "numpy")
	const pairs, buckets, maxTokens, seed, n = 3000, 3, 2048, 1111, 40
	cmd := exec.Command(py, "-c", competitorPlan, "../../tools/bench/torch_competitor.py",
		fmt.Sprint(pairs), fmt.Sprint(buckets), fmt.Sprint(maxTokens), fmt.Sprint(seed), fmt.Sprint(n))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	raw, err := cmd.Output()
	if err != nil {
		t.Fatalf("python: %v\n%s", err, stderr.String())
	}
	var want struct {
		Edges []int   `json:"edges"`
		Warm  int     `json:"warm"`
		Plan  [][]any `json:"plan"`
	}
	if err := json.Unmarshal(raw, &want); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	sp, err := Synthetic(ctx, DefaultSynth(pairs, 1))
	if err != nil {
		t.Fatal(err)
	}
	// The competitor has no max positions and always uses multiple 8: xform bench's
	// defaults (1024 positions, --required-batch-size-multiple 8) leave both unchanged.
	cfg := train.BatchConfig{MaxTokens: maxTokens, Multiple: 8, Seed: seed, MaxSourcePos: 1024, MaxTargetPos: 1024, SkipInvalidAll: true, Buckets: buckets}
	edges, err := train.SplitBucketEdges(sp, cfg)
	if err != nil {
		t.Fatal(err)
	}
	shapes, err := ShapeWarmup(ctx, sp, cfg, 3)
	if err != nil {
		t.Fatal(err)
	}
	timed, _, err := TrainBatches(ctx, sp, cfg, n)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(edges, want.Edges) || len(shapes) != want.Warm || len(want.Plan) != want.Warm+n {
		t.Fatalf("edges %v, %d warm-up batches; competitor %v, %d", edges, len(shapes), want.Edges, want.Warm)
	}
	index := pairIndex(sp.Src, sp.Tgt)
	all := append(append([]*model.TrainBatch(nil), shapes...), timed...)
	for i, b := range all {
		w := want.Plan[i]
		var ids []int
		for _, v := range w[0].([]any) {
			ids = append(ids, int(v.(float64)))
		}
		got := sentenceIDs(t, index, b)
		slices.Sort(got)
		L, tt, st, slots := int(w[1].(float64)), int(w[2].(float64)), int(w[3].(float64)), int(w[4].(float64))
		if !slices.Equal(got, ids) || b.S != L || b.T != L || b.NTokens != tt || countNonPad(b.Src) != st || b.B*(b.S+b.T) != slots {
			t.Fatalf("batch %d of the plan: [%d, %d/%d], %d target, %d source tokens; competitor L %d, %d, %d, %d slots (same pairs: %v)",
				i, b.B, b.S, b.T, b.NTokens, countNonPad(b.Src), L, tt, st, slots, slices.Equal(got, ids))
		}
	}
}

func pairKey(src, tgt []int32) string { return fmt.Sprint(src, tgt) }

// pairIndex maps each pair's tokens to its index (the synthetic corpus has no two equal
// pairs at these sizes; a duplicate would make a batch's ids come out wrong and fail the
// test, not pass it).
func pairIndex(src, tgt [][]int32) map[string]int {
	index := map[string]int{}
	for i := range src {
		index[pairKey(src[i], tgt[i])] = i
	}
	return index
}

// sentenceIDs recovers which pairs a collated batch holds from each row's unpadded
// source and target.
func sentenceIDs(t *testing.T, index map[string]int, b *model.TrainBatch) []int {
	t.Helper()
	var ids []int
	for r := 0; r < b.B; r++ {
		var s, g []int32
		for _, id := range b.Src[r*b.S : (r+1)*b.S] {
			if id != model.Pad {
				s = append(s, id)
			}
		}
		for _, id := range b.Target[r*b.T : (r+1)*b.T] {
			if id != model.Pad {
				g = append(g, id)
			}
		}
		i, ok := index[pairKey(s, g)]
		if !ok {
			t.Fatalf("row %d matches no pair of the split", r)
		}
		ids = append(ids, i)
	}
	return ids
}
