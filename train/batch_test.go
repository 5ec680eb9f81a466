package train_test

import (
	"errors"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/xform-dev/xform/generate"
	"github.com/xform-dev/xform/train"
)

func fixtureSplit(t *testing.T, subset string) *generate.Split {
	t.Helper()
	sp, err := generate.LoadSplit(filepath.Join("..", "fixtures", "clinic", "data-bin"), subset, "src", "tgt")
	if err != nil {
		t.Fatal(err)
	}
	return sp
}

func recipeBatching() train.BatchConfig {
	return train.BatchConfig{MaxTokens: 2048, Multiple: 8, Seed: 1111, MaxSourcePos: 1024, MaxTargetPos: 1024, SkipInvalidAll: true}
}

// The frozen batch list, the batch order of epochs 1 and 2 (with each batch's rows in
// collation order) and the first 20 collated batches equal the reference's.
func TestBatchesMatchReference(t *testing.T) {
	dir := refDir(t)
	z := readNPZ(t, dir+"/batches.npz")
	sp := fixtureSplit(t, "train")
	batches, dropped, err := train.Batches(sp, recipeBatching())
	if err != nil || len(dropped) != 0 {
		t.Fatal(err, dropped)
	}
	flat := func(bs [][]int) ([]int32, []int32) {
		var ids, sizes []int32
		for _, b := range bs {
			sizes = append(sizes, int32(len(b)))
			for _, i := range b {
				ids = append(ids, int32(i))
			}
		}
		return ids, sizes
	}
	ids, sizes := flat(batches)
	wantIDs, _ := z.ints(t, "frozen/ids")
	wantSizes, _ := z.ints(t, "frozen/sizes")
	if fmt.Sprint(ids) != fmt.Sprint(wantIDs) || fmt.Sprint(sizes) != fmt.Sprint(wantSizes) {
		t.Fatalf("frozen batches differ: sizes %v, reference %v", sizes, wantSizes)
	}
	for epoch := 1; epoch <= 2; epoch++ {
		var rows [][]int
		for _, b := range train.EpochOrder(batches, 1111, epoch) {
			_, order := train.Collate(b, sp)
			rows = append(rows, order)
		}
		ids, sizes := flat(rows)
		wantIDs, _ := z.ints(t, fmt.Sprintf("epoch%d/ids", epoch))
		wantSizes, _ := z.ints(t, fmt.Sprintf("epoch%d/sizes", epoch))
		if fmt.Sprint(ids) != fmt.Sprint(wantIDs) || fmt.Sprint(sizes) != fmt.Sprint(wantSizes) {
			t.Fatalf("epoch %d order differs", epoch)
		}
		if epoch != 1 {
			continue
		}
		for k := 0; k < 20; k++ {
			got, _ := train.Collate(train.EpochOrder(batches, 1111, 1)[k], sp)
			want, _ := refBatch(t, z, k)
			if fmt.Sprint(got.Src, got.Prev, got.Target, got.B, got.S, got.T, got.NTokens) !=
				fmt.Sprint(want.Src, want.Prev, want.Target, want.B, want.S, want.T, want.NTokens) {
				t.Fatalf("batch %d of epoch 1 differs from the reference's collation", k)
			}
		}
	}
}

func TestBatchesBadInput(t *testing.T) {
	sp := fixtureSplit(t, "train")
	longest := 0
	for i := range sp.Src {
		longest = max(longest, len(sp.Src[i]), len(sp.Tgt[i]))
	}
	cases := []struct {
		name string
		sp   *generate.Split
		cfg  func(*train.BatchConfig)
	}{
		{"max tokens below the longest sentence", sp, func(c *train.BatchConfig) { c.MaxTokens = longest - 1 }},
		{"empty split", &generate.Split{Src: [][]int32{}, Tgt: [][]int32{}}, func(*train.BatchConfig) {}},
		{"no target side", &generate.Split{Src: sp.Src}, func(*train.BatchConfig) {}},
		{"longer than max positions, not skipped", sp, func(c *train.BatchConfig) { c.MaxSourcePos, c.SkipInvalidAll = 5, false }},
		{"no batch size", sp, func(c *train.BatchConfig) { c.MaxTokens = 0 }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := recipeBatching()
			c.cfg(&cfg)
			_, _, err := train.Batches(c.sp, cfg)
			if !errors.Is(err, train.ErrData) {
				t.Fatalf("want ErrData, got %v", err)
			}
			t.Log(err)
		})
	}
}
