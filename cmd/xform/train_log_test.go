package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// statFields splits "name value | name value" (end-of-epoch, valid) or "name=value, …"
// (mid-epoch) into names and values.
func statFields(s string, mid bool) (names, values []string) {
	sep, kv := " | ", " "
	if mid {
		sep, kv = ", ", "="
	}
	for _, p := range strings.Split(s, sep) {
		k, v, _ := strings.Cut(strings.TrimSpace(p), kv)
		names = append(names, k)
		values = append(values, v)
	}
	return names, values
}

// decimals is how a value is printed: digits after the point, or "g" for fields fairseq
// prints with {:g} (lr, best_loss), whose length varies.
func decimals(name, v string) string {
	if name == "lr" || strings.HasSuffix(name, "best_loss") {
		return "g"
	}
	if _, frac, ok := strings.Cut(v, "."); ok {
		return fmt.Sprint(len(frac))
	}
	return "0"
}

var (
	midLine   = regexp.MustCompile(`^\| epoch (\d{3}):  +(\d+) / (\d+) (.*)$`)
	validLine = regexp.MustCompile(`^\| epoch (\d{3}) \| valid on 'valid' subset \| (.*)$`)
	epochLine = regexp.MustCompile(`^\| epoch (\d{3}) \| (loss .*)$`)
)

type logShape struct{ names, formats []string }

// shapes collects the field names and value formats of each kind of line in a log.
func shapes(t *testing.T, log string) map[string]logShape {
	t.Helper()
	out := map[string]logShape{}
	add := func(kind, stats string, mid bool) {
		names, values := statFields(stats, mid)
		var f []string
		for i, n := range names {
			f = append(f, decimals(n, values[i]))
		}
		if strings.Contains(stats, "best_loss") {
			kind += "+best"
		}
		if _, ok := out[kind]; !ok {
			out[kind] = logShape{names, f}
		}
	}
	for _, l := range strings.Split(log, "\n") {
		switch {
		case midLine.MatchString(l):
			add("mid", midLine.FindStringSubmatch(l)[4], true)
		case validLine.MatchString(l):
			add("valid", validLine.FindStringSubmatch(l)[2], false)
		case epochLine.MatchString(l):
			add("epoch", epochLine.FindStringSubmatch(l)[2], false)
		}
	}
	return out
}

// --log-format simple prints fairseq's lines: the end-of-epoch and valid lines have the
// field names, order and number formats of the Clinic fork's own log
// (fixtures/clinic/runs/a_admin/train_main.log), and the mid-epoch lines the same fields
// as name=value pairs (clinic-spec §4.10).
func TestTrainSimpleLogMatchesClinicLog(t *testing.T) {
	ref, err := os.ReadFile(filepath.Join("..", "..", "fixtures", "clinic", "runs", "a_admin", "train_main.log"))
	if err != nil {
		t.Fatal(err)
	}
	want := shapes(t, string(ref))
	out, err := runXform(tinyTrainArgs(filepath.Join(t.TempDir(), "ck"), 3, "--save-interval-updates", "2")...)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	got := shapes(t, out)
	for _, c := range []struct{ ours, ref string }{{"epoch", "epoch"}, {"valid", "valid"}, {"valid+best", "valid+best"}, {"mid", "epoch"}} {
		g, w := got[c.ours], want[c.ref]
		if len(w.names) == 0 {
			t.Fatalf("no %s line in the reference log", c.ref)
		}
		if strings.Join(g.names, ",") != strings.Join(w.names, ",") {
			t.Errorf("%s line fields:\n got %v\nwant %v", c.ours, g.names, w.names)
		}
		if strings.Join(g.formats, ",") != strings.Join(w.formats, ",") {
			t.Errorf("%s line number formats (decimals per field):\n got %v\nwant %v", c.ours, g.formats, w.formats)
		}
	}
	if m := midLine.FindStringSubmatch(strings.Split(out[strings.Index(out, "| epoch 001:"):], "\n")[0]); m == nil || m[2] != "1" || m[3] != "14" {
		t.Errorf("first mid-epoch line: %v", m)
	}
}

// jsonObject decodes one JSON object keeping its key order.
func jsonObject(line string) (keys []string, vals map[string]any, err error) {
	dec := json.NewDecoder(strings.NewReader(line))
	dec.UseNumber()
	if _, err := dec.Token(); err != nil {
		return nil, nil, err
	}
	vals = map[string]any{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, nil, err
		}
		k := tok.(string)
		var v any
		if err := dec.Decode(&v); err != nil {
			return nil, nil, err
		}
		keys = append(keys, k)
		vals[k] = v
	}
	return keys, vals, nil
}

// --log-format json prints fairseq's json_progress_bar lines: mid-epoch {"epoch": int,
// "update": epochs done (3 decimals), stats…}, end of epoch {"epoch", "train_<stat>"…},
// validation {"epoch", "valid_<stat>"…}; every stat a string, in the simple format's order.
func TestTrainJSONLog(t *testing.T) {
	out, err := runXform(tinyTrainArgs(filepath.Join(t.TempDir(), "ck"), 3, "--log-format", "json", "--save-interval-updates", "2")...)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	simple, err := runXform(tinyTrainArgs(filepath.Join(t.TempDir(), "ck"), 3, "--save-interval-updates", "2")...)
	if err != nil {
		t.Fatal(err)
	}
	sh := shapes(t, simple)
	var mids, trains, valids int
	for _, l := range strings.Split(out, "\n") {
		if !strings.HasPrefix(l, "{") {
			if strings.HasPrefix(l, "| epoch") {
				t.Errorf("simple line in json mode: %s", l)
			}
			continue
		}
		keys, vals, err := jsonObject(l)
		if err != nil {
			t.Fatalf("%s: %v", l, err)
		}
		if keys[0] != "epoch" || vals["epoch"].(json.Number).String() != "1" {
			t.Errorf("%s: want \"epoch\": 1 first", l)
		}
		var want []string
		rest := keys[1:]
		switch {
		case len(rest) > 0 && rest[0] == "update":
			mids++
			want = sh["mid"].names
			if u := vals["update"].(json.Number).String(); mids == 1 && u != "0.071" { // 1 of 14 updates
				t.Errorf("first update fraction %s, want 0.071", u)
			}
			rest = rest[1:]
		case len(rest) > 0 && strings.HasPrefix(rest[0], "train_"):
			trains++
			for _, n := range sh["epoch"].names {
				want = append(want, "train_"+n)
			}
		default:
			valids++
			kind := "valid"
			if _, ok := vals["valid_best_loss"]; ok {
				kind = "valid+best"
			}
			for _, n := range sh[kind].names {
				want = append(want, "valid_"+n)
			}
		}
		if strings.Join(rest, ",") != strings.Join(want, ",") {
			t.Errorf("keys of %s:\n got %v\nwant %v", l, rest, want)
		}
		for _, k := range rest {
			if _, ok := vals[k].(string); !ok {
				t.Errorf("%s: %s is %T, fairseq writes stats as strings", l, k, vals[k])
			}
		}
	}
	if mids != 3 || trains != 1 || valids != 2 {
		t.Errorf("%d mid-epoch, %d end-of-epoch, %d valid lines; want 3, 1, 2:\n%s", mids, trains, valids, out)
	}
}
