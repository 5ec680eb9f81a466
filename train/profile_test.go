package train_test

import (
	"bytes"
	"context"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/xform-dev/xform/admin"
	"github.com/xform-dev/xform/convert"
	"github.com/xform-dev/xform/kernels/cpu"
	"github.com/xform-dev/xform/train"
)

// Profiling ckpt_u1's weights (ω reset to 1) on the first batch of epoch 1 with dropout
// 0 writes the reference's dropout-0 profile file.
func TestProfileMatchesReference(t *testing.T) {
	dir := refDir(t)
	m, err := convert.LoadCheckpoint(filepath.Join("..", "fixtures", "clinic", "runs", "a_admin", "ckpt_u1", "checkpoint_last.pt"))
	if err != nil {
		t.Fatal(err)
	}
	sp := fixtureSplit(t, "train")
	batches, _, err := train.Batches(sp, recipeBatching())
	if err != nil {
		t.Fatal(err)
	}
	b, _ := train.Collate(train.EpochOrder(batches, 1111, 1)[0], sp)
	p, err := train.Profile(context.Background(), m, cpu.New(2), b, train.ProfileConfig{})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := p.Write(&buf); err != nil {
		t.Fatal(err)
	}
	wantText, err := os.ReadFile(filepath.Join(dir, "profile.ratio.init"))
	if err != nil {
		t.Fatal(err)
	}
	want, err := admin.ParseProfile(bytes.NewReader(wantText), 3, 3)
	if err != nil {
		t.Fatal(err)
	}
	got, err := admin.ParseProfile(bytes.NewReader(buf.Bytes()), 3, 3)
	if err != nil {
		t.Fatalf("our profile does not parse: %v\n%s", err, buf.String())
	}
	worst := 0.0
	for i := range want.Encoder {
		worst = max(worst, math.Abs(got.Encoder[i]-want.Encoder[i]))
	}
	for i := range want.Decoder {
		worst = max(worst, math.Abs(got.Decoder[i]-want.Decoder[i]))
	}
	t.Logf("max |Δω| %.3g\n%s", worst, buf.String())
	if worst > 1e-5 {
		t.Fatalf("profile differs by %.3g:\nours\n%sreference\n%s", worst, buf.String(), wantText)
	}
	// Same lines: indices and the first value of each stack byte for byte.
	gl, wl := strings.Split(buf.String(), "\n"), strings.Split(string(wantText), "\n")
	if len(gl) != len(wl) || gl[0] != wl[0] || gl[6] != wl[6] {
		t.Fatalf("profile layout differs:\n%s", buf.String())
	}
}
