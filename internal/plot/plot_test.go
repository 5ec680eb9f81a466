package plot

import (
	"bytes"
	"image/color"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The Clinic fork's own log: 39 end-of-epoch lines (log-interval 50 > 26 updates per
// epoch, so no mid-epoch lines), 42 validations (one per epoch, the update-300 save and
// the final one), the learning rate of each epoch line.
func TestParseClinicLog(t *testing.T) {
	f, err := os.Open(filepath.Join("..", "..", "fixtures", "clinic", "runs", "a_admin", "train_main.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	l, err := ParseLog(f)
	if err != nil {
		t.Fatal(err)
	}
	if len(l.TrainInner) != 0 || len(l.TrainEpoch) != 39 || len(l.Valid) != 42 || len(l.LR) != 39 {
		t.Fatalf("%d inner, %d epoch, %d valid, %d lr points", len(l.TrainInner), len(l.TrainEpoch), len(l.Valid), len(l.LR))
	}
	for _, c := range []struct {
		name string
		got  Point
		want Point
	}{
		{"first train", l.TrainEpoch[0], Point{26, 7.612}},
		{"first valid", l.Valid[0], Point{26, 7.143}},
		{"first lr", l.LR[0], Point{26, 0.000780074}},
		{"valid at the update-300 save", l.Valid[11], Point{300, 4.596}},
		{"last valid", l.Valid[41], Point{1000, 2.876}},
	} {
		if c.got != c.want {
			t.Errorf("%s: %+v, want %+v", c.name, c.got, c.want)
		}
	}
}

// xform's and fairseq's formats: simple mid-epoch lines, json lines (xform and fairseq
// 0.8 print the object alone; fairseq ≥0.10 behind a logging prefix), and fairseq
// ≥0.10's simple lines with their prefix.
func TestParseLogFormats(t *testing.T) {
	cases := []struct {
		name                    string
		log                     string
		inner, epoch, valid, lr int
		first                   Point
	}{
		{"simple", `| epoch 001:      1 / 14 loss=7.633, nll_loss=7.614, ppl=195.92, wps=56133, ups=15, wpb=3805.000, bsz=200.000, num_updates=1, lr=0.00030009, gnorm=0.858, clip=0.000, oom=0.000, wall=0, train_wall=0
| epoch 001:      2 / 14 loss=7.683, nll_loss=7.671, ppl=203.78, wps=59310, ups=15, wpb=3859.500, bsz=220.000, num_updates=2, lr=0.00060008, gnorm=0.866, clip=0.000, oom=0.000, wall=0, train_wall=0
| epoch 001 | loss 7.683 | nll_loss 7.671 | ppl 203.78 | wps 41861 | ups 11 | wpb 3859.500 | bsz 220.000 | num_updates 2 | lr 0.00060008 | gnorm 0.866 | clip 0.000 | oom 0.000 | wall 0 | train_wall 0
| epoch 001 | valid on 'valid' subset | loss 7.692 | nll_loss 7.678 | ppl 204.84 | num_updates 2
| saved checkpoint ck/checkpoint1.pt (epoch 1 @ 2 updates) (writing took 0.0044 seconds)`, 2, 1, 1, 2, Point{1, 7.633}},
		{"json", `{"epoch": 1, "update": 0.071, "loss": "7.633", "nll_loss": "7.614", "ppl": "195.92", "num_updates": "1", "lr": "0.00030009"}
{"epoch": 1, "train_loss": "7.683", "train_nll_loss": "7.671", "train_num_updates": "2", "train_lr": "0.00060008"}
{"epoch": 1, "valid_loss": "7.692", "valid_nll_loss": "7.678", "valid_ppl": "204.84", "valid_num_updates": "2", "valid_best_loss": "7.6"}`, 1, 1, 1, 1, Point{1, 7.633}},
		{"fairseq 0.12 simple", `2021-03-01 10:00:00 | INFO | train_inner | epoch 001:    100 / 1102 loss=9.2, nll_loss=8.9, ppl=477.1, wps=30000, ups=3, wpb=9000, bsz=300, num_updates=100, lr=1.25e-05, gnorm=1.9, train_wall=30, wall=40
2021-03-01 10:05:00 | INFO | valid | epoch 001 | valid on 'valid' subset | loss 8.3 | nll_loss 7.9 | ppl 238.9 | wps 90000 | wpb 8000 | bsz 300 | num_updates 1102`, 1, 0, 1, 1, Point{100, 9.2}},
		{"fairseq 0.12 json", `2021-03-01 10:00:00 | INFO | train_inner | {"epoch": 1, "update": 0.091, "loss": "9.2", "num_updates": "100", "lr": "1.25e-05"}
2021-03-01 10:05:00 | INFO | valid | {"epoch": 1, "valid_loss": "8.3", "valid_nll_loss": "7.9", "valid_num_updates": "1102"}`, 1, 0, 1, 1, Point{100, 9.2}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			l, err := ParseLog(strings.NewReader(c.log))
			if err != nil {
				t.Fatal(err)
			}
			if len(l.TrainInner) != c.inner || len(l.TrainEpoch) != c.epoch || len(l.Valid) != c.valid || len(l.LR) != c.lr {
				t.Fatalf("%d inner, %d epoch, %d valid, %d lr; want %d %d %d %d", len(l.TrainInner), len(l.TrainEpoch), len(l.Valid), len(l.LR),
					c.inner, c.epoch, c.valid, c.lr)
			}
			if l.Train()[0] != c.first {
				t.Errorf("first train point %+v, want %+v", l.Train()[0], c.first)
			}
		})
	}
	if _, err := ParseLog(strings.NewReader("Namespace(seed=1)\nnothing here\n")); err == nil {
		t.Error("a log without progress lines parsed")
	}
}

// Render draws every panel: axes in ink, each series in its colour, white elsewhere.
func TestRender(t *testing.T) {
	l := &Log{TrainEpoch: []Point{{26, 7.6}, {52, 6.6}, {78, 5.9}}, Valid: []Point{{26, 7.1}, {52, 6.2}}, LR: []Point{{26, 7.8e-4}, {52, 1.6e-3}}}
	om := Panel{Title: "omega", Series: []Series{{Name: "E0 SA", Points: []Point{{0, 1}, {300, 1.2}}, Color: Palette[3], Label: true}}}
	img := Render(Figure(l, om), 600, 200)
	if b := img.Bounds(); b.Dx() != 600 || b.Dy() != 600 {
		t.Fatalf("size %v", b)
	}
	for i, c := range []color.RGBA{Palette[0], Palette[1], Palette[2], Palette[3]} {
		found := false
		for y := 0; y < 600 && !found; y++ {
			for x := 0; x < 600; x++ {
				if img.RGBAAt(x, y) == c {
					found = true
					break
				}
			}
		}
		if !found {
			t.Errorf("series colour %d not drawn", i)
		}
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	if _, err := png.Decode(&buf); err != nil {
		t.Fatal(err)
	}
}

func TestTicks(t *testing.T) {
	cases := []struct {
		lo, hi float64
		want   string
	}{
		{0, 1000, "0 200 400 600 800 1000"},
		{2.7, 7.7, "2 3 4 5 6 7 8"},
		{7.8e-4, 3e-3, "0.0005 0.001 0.0015 0.002 0.0025 0.003"},
	}
	for _, c := range cases {
		tk := ticks(c.lo, c.hi, 6)
		var s []string
		for _, v := range tk {
			s = append(s, tickLabel(v, tk))
		}
		if got := strings.Join(s, " "); got != c.want {
			t.Errorf("ticks(%g, %g) = %s, want %s", c.lo, c.hi, got, c.want)
		}
	}
}
