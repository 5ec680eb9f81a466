package fairseqpt

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/xform-dev/xform/internal/pytest"

	"github.com/nlpodyssey/gopickle/types"
)

const strictReader = "../tools/reference/strict_pt_reader.py"

type strictSummary struct {
	TopLevel []string `json:"top_level"`
	Globals  []string `json:"globals"`
	Tensors  map[string]struct {
		DType  string `json:"dtype"`
		Shape  []int  `json:"shape"`
		SHA256 string `json:"sha256"`
	} `json:"tensors"`
}

func runStrictReader(t *testing.T, path string, weightsOnly bool) (*strictSummary, error) {
	t.Helper()
	args := []string{strictReader, "--json", path}
	if weightsOnly {
		args = append(args, "--weights-only")
	}
	cmd := exec.Command(pytest.Python(t), args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%v: %s", err, stderr.String())
	}
	var s strictSummary
	if err := json.Unmarshal(out, &s); err != nil {
		return nil, err
	}
	return &s, nil
}

// tensorHashes walks a decoded tree the way strict_pt_reader.py does and hashes each
// tensor's elements.
func tensorHashes(t *testing.T, v interface{}) map[string]string {
	t.Helper()
	out := map[string]string{}
	join := func(p, k string) string {
		if p == "" {
			return k
		}
		return p + "/" + k
	}
	var walk func(v interface{}, path string)
	walk = func(v interface{}, path string) {
		switch x := v.(type) {
		case *Tensor:
			m, err := x.Materialize()
			if err != nil {
				t.Fatal(err)
			}
			h := sha256.Sum256(m.Data)
			out[path] = hex.EncodeToString(h[:])
		case *types.Dict, *types.OrderedDict:
			es, _ := Entries(x)
			for _, e := range es {
				walk(e.Value, join(path, e.Key))
			}
		case *types.List:
			for i, e := range *x {
				walk(e, fmt.Sprintf("%s/%d", path, i))
			}
		case *types.Tuple:
			for i, e := range *x {
				walk(e, fmt.Sprintf("%s/%d", path, i))
			}
		case *Object:
			if x.Attrs != nil {
				walk(x.Attrs, path)
			}
		}
	}
	walk(v, "")
	return out
}

// Every fixture, read and written back by Go, passes the strict standard-library reader
// (alignment, record order, CRCs, allowed globals, 'cpu' locations) and its tensors hash
// the same as the source's.
func TestStrictPythonReaderOnWrittenFiles(t *testing.T) {
	pytest.Python(t)
	dir := t.TempDir()
	for _, src := range writerFixtures {
		name := strings.ReplaceAll(strings.TrimPrefix(src, "../fixtures/"), "/", "_")
		t.Run(name, func(t *testing.T) {
			f, err := Open(src)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			out := filepath.Join(dir, name)
			if err := WriteFile(out, f.Root, WriteOptions{}); err != nil {
				t.Fatal(err)
			}
			s, err := runStrictReader(t, out, false)
			if err != nil {
				t.Fatalf("strict reader: %v", err)
			}
			want := tensorHashes(t, f.Root)
			if len(s.Tensors) != len(want) {
				t.Fatalf("python sees %d tensors, Go %d", len(s.Tensors), len(want))
			}
			for p, h := range want {
				if s.Tensors[p].SHA256 != h {
					t.Errorf("%s: python sha256 %s, Go %s", p, s.Tensors[p].SHA256, h)
				}
			}
		})
	}
}

// A state-dict-only file passes the weights-only mode; a file with an argparse.Namespace
// does not (as under torch ≥2.6's default weights_only=True).
func TestStrictPythonReaderWeightsOnly(t *testing.T) {
	pytest.Python(t)
	f, err := Open("../fixtures/clinic/runs/b_postln/ckpt/checkpoint_last.pt")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dir := t.TempDir()
	model, _ := DictGet(f.Root, "model")
	wo := types.NewDict()
	wo.Set("model", model)
	cases := []struct {
		name string
		root interface{}
		ok   bool
	}{{"weights.pt", wo, true}, {"full.pt", f.Root, false}}
	for _, c := range cases {
		p := filepath.Join(dir, c.name)
		if err := WriteFile(p, c.root, WriteOptions{}); err != nil {
			t.Fatal(err)
		}
		_, err := runStrictReader(t, p, true)
		if (err == nil) != c.ok {
			t.Errorf("%s under --weights-only: err = %v, want ok=%v", c.name, err, c.ok)
		}
	}
}
