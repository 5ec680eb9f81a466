// Package plot reads fairseq training logs (xform's and fairseq's own, --log-format simple
// or json) and draws training curves as PNG with the standard library only.
package plot

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"
)

// Point is one value at an update count.
type Point struct {
	Update int
	Value  float64
}

// Log holds the series found in a training log.
type Log struct {
	// TrainInner are the mid-epoch lines (every --log-interval updates), TrainEpoch the
	// end-of-epoch lines; both hold the running training loss in bits.
	TrainInner, TrainEpoch []Point
	Valid                  []Point // validation loss
	LR                     []Point // learning rate after the update
}

// Train returns the training-loss series to draw: the mid-epoch points when the log has
// them (denser), else the end-of-epoch ones.
func (l *Log) Train() []Point {
	if len(l.TrainInner) > 0 {
		return l.TrainInner
	}
	return l.TrainEpoch
}

var (
	// "| epoch 001:     10 / 15 loss=8.041, …" and fairseq ≥0.10's "… | train_inner | epoch 001:  …"
	innerRe = regexp.MustCompile(`epoch \d+:\s+\d+ / \d+ (.*)$`)
	// "| epoch 001 | valid on 'valid' subset | loss 7.143 | …"
	validRe = regexp.MustCompile(`epoch \d+ \| valid on '[^']*' subset \| (.*)$`)
	// "| epoch 001 | loss 7.612 | …"
	epochRe = regexp.MustCompile(`epoch \d+ \| (loss .*)$`)
)

// ParseLog reads a fairseq-train or xform-train log. Lines that are not progress lines
// (the args Namespace, model printout, checkpoint messages) are skipped; a log with no
// progress line at all is an error.
func ParseLog(r io.Reader) (*Log, error) {
	l := &Log{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 16<<20) // the args line of a fairseq log is long
	n := 0
	for sc.Scan() {
		n++
		line := sc.Text()
		if i := strings.Index(line, "{\""); i >= 0 && strings.HasSuffix(strings.TrimSpace(line), "}") {
			if err := l.addJSON(line[i:]); err != nil {
				return nil, fmt.Errorf("plot: line %d: %w", n, err)
			}
			continue
		}
		switch {
		case innerRe.MatchString(line):
			l.add(&l.TrainInner, true, pairs(innerRe.FindStringSubmatch(line)[1], ", ", "="))
		case validRe.MatchString(line):
			st := pairs(validRe.FindStringSubmatch(line)[1], " | ", " ")
			if p, ok := point(st, "loss"); ok {
				l.Valid = append(l.Valid, p)
			}
		case epochRe.MatchString(line):
			l.add(&l.TrainEpoch, len(l.TrainInner) == 0, pairs(epochRe.FindStringSubmatch(line)[1], " | ", " "))
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("plot: %w", err)
	}
	if len(l.TrainInner)+len(l.TrainEpoch)+len(l.Valid) == 0 {
		return nil, fmt.Errorf("plot: no fairseq progress lines (| epoch …, or json) in the log")
	}
	return l, nil
}

// add appends a training line's loss to dst and, when withLR, its learning rate.
func (l *Log) add(dst *[]Point, withLR bool, st map[string]string) {
	if p, ok := point(st, "loss"); ok {
		*dst = append(*dst, p)
	}
	if withLR {
		if p, ok := point(st, "lr"); ok {
			l.LR = append(l.LR, p)
		}
	}
}

// addJSON reads a json_progress_bar line: mid-epoch lines have "update", end-of-epoch
// lines "train_*" keys and validation lines "<subset>_*" keys.
func (l *Log) addJSON(s string) error {
	var obj map[string]any
	if err := json.Unmarshal([]byte(s), &obj); err != nil {
		return err
	}
	st := map[string]string{}
	for k, v := range obj {
		st[k] = fmt.Sprint(v)
	}
	switch {
	case st["update"] != "" && st["loss"] != "":
		l.add(&l.TrainInner, true, st)
	case st["train_loss"] != "":
		l.add(&l.TrainEpoch, len(l.TrainInner) == 0, strip(st, "train_"))
	default:
		for k := range st {
			if p, ok := strings.CutSuffix(k, "_loss"); ok && !strings.Contains(p, "_") && p != "train" && st[p+"_num_updates"] != "" {
				if pt, ok := point(strip(st, p+"_"), "loss"); ok {
					l.Valid = append(l.Valid, pt)
				}
			}
		}
	}
	return nil
}

func strip(st map[string]string, prefix string) map[string]string {
	out := map[string]string{}
	for k, v := range st {
		if r, ok := strings.CutPrefix(k, prefix); ok {
			out[r] = v
		}
	}
	return out
}

func pairs(s, sep, kv string) map[string]string {
	out := map[string]string{}
	for _, p := range strings.Split(s, sep) {
		if k, v, ok := strings.Cut(strings.TrimSpace(p), kv); ok {
			out[k] = strings.TrimSpace(v)
		}
	}
	return out
}

func point(st map[string]string, key string) (Point, bool) {
	u, err1 := strconv.ParseFloat(st["num_updates"], 64)
	v, err2 := strconv.ParseFloat(st[key], 64)
	if err1 != nil || err2 != nil {
		return Point{}, false
	}
	return Point{Update: int(u), Value: v}, true
}
