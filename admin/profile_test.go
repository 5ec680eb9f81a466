package admin

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Every profile file the Clinic fork wrote in the fixtures parses and is written back byte for byte.
func TestProfileFixturesRoundTrip(t *testing.T) {
	cases := []struct {
		path     string
		enc, dec int
	}{
		{"../fixtures/clinic/runs/a_admin/profile.ratio.init", 3, 3},
		{"../fixtures/clinic/perf/call1/admin_6l/profile.ratio.init", 6, 6},
		{"../fixtures/clinic/perf/call1/admin_18l/profile.ratio.init", 18, 18},
		{"../fixtures/clinic/perf/call2/admin_6l/profile.ratio.init", 6, 6},
	}
	for _, c := range cases {
		t.Run(c.path, func(t *testing.T) {
			want, err := os.ReadFile(c.path)
			if err != nil {
				t.Fatal(err)
			}
			p, err := ReadProfileFile(c.path, c.enc, c.dec)
			if err != nil {
				t.Fatal(err)
			}
			if p.Encoder[0] != 1 || p.Decoder[0] != 1 {
				t.Errorf("first value of each stack must be 1.0, got %v %v", p.Encoder[0], p.Decoder[0])
			}
			var buf bytes.Buffer
			if err := p.Write(&buf); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(buf.Bytes(), want) {
				t.Errorf("round trip differs:\n%s\nwant\n%s", buf.String(), want)
			}
			// Values computed afresh (no kept text) must print the same as the reference did.
			fresh := &Profile{Encoder: p.Encoder, Decoder: p.Decoder}
			buf.Reset()
			fresh.Write(&buf)
			if !bytes.Equal(buf.Bytes(), want) {
				t.Errorf("fresh formatting differs:\n%s\nwant\n%s", buf.String(), want)
			}
		})
	}
}

func TestProfileOldNameAndPlainFormat(t *testing.T) {
	dir := t.TempDir()
	src, _ := os.ReadFile("../fixtures/clinic/runs/a_admin/profile.ratio.init")
	var plain []string
	for _, l := range strings.Split(strings.TrimSpace(string(src)), "\n") {
		plain = append(plain, strings.Fields(l)[1])
	}
	p := filepath.Join(dir, "profile_ratio.init")
	os.WriteFile(p, []byte(strings.Join(plain, "\n")+"\n"), 0o644)
	got, err := ReadProfileFile(p, 3, 3)
	if err != nil {
		t.Fatal(err)
	}
	ref, _ := ParseProfile(bytes.NewReader(src), 3, 3)
	if got.Format != FormatPlain || len(got.Encoder) != 6 || got.Decoder[8] != ref.Decoder[8] {
		t.Fatalf("plain profile parsed as %+v", got)
	}
	var buf bytes.Buffer
	got.Write(&buf)
	if buf.String() != strings.Join(plain, "\n")+"\n" {
		t.Errorf("plain round trip differs: %q", buf.String())
	}
}

func TestProfileErrors(t *testing.T) {
	good, _ := os.ReadFile("../fixtures/clinic/runs/a_admin/profile.ratio.init")
	lines := strings.Split(strings.TrimSpace(string(good)), "\n")
	cases := []struct {
		name, text string
		enc, dec   int
		want       string
	}{
		{"wrong depth", string(good), 6, 6, "need 30"},
		{"too few lines", strings.Join(lines[:10], "\n"), 3, 3, "10 values"},
		{"wrong index", strings.Replace(string(good), "3 1.", "4 1.", 1), 3, 3, "line 3: index \"4\""},
		{"decoder index", strings.Join(append(append([]string{}, lines[:6]...), append([]string{"2 1.0"}, lines[7:]...)...), "\n"), 3, 3, "line 7: index \"2\", the decoder block expects 1"},
		{"not a number", strings.Replace(string(good), "1 1.0", "1 abc", 1), 3, 3, "line 1: value \"abc\""},
		{"zero", strings.Replace(string(good), "1 1.0", "1 0.0", 1), 3, 3, "not a positive"},
		{"three fields", "1 1.0 x\n", 3, 3, "line 1"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseProfile(strings.NewReader(c.text), c.enc, c.dec)
			if err == nil || !errors.Is(err, ErrProfile) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want one containing %q", err, c.want)
			}
		})
	}
}

func FuzzParseProfile(f *testing.F) {
	good, _ := os.ReadFile("../fixtures/clinic/runs/a_admin/profile.ratio.init")
	f.Add(good, 3, 3)
	f.Add([]byte("1.0\n2.5\n"), 1, 0)
	f.Fuzz(func(t *testing.T, b []byte, enc, dec int) {
		if enc < 0 || dec < 0 || enc > 200 || dec > 200 {
			return
		}
		p, err := ParseProfile(bytes.NewReader(b), enc, dec)
		if err != nil {
			return
		}
		var buf bytes.Buffer
		if err := p.Write(&buf); err != nil {
			t.Fatal(err)
		}
		q, err := ParseProfile(&buf, enc, dec)
		if err != nil {
			t.Fatalf("re-parse of written profile failed: %v", err)
		}
		for i := range p.Encoder {
			if p.Encoder[i] != q.Encoder[i] {
				t.Fatal("encoder values changed in round trip")
			}
		}
	})
}
