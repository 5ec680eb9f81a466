package fairseqpt

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"testing"

	"github.com/xform-dev/xform/tensor"
)

const torchDir = "../fixtures/torch/"

var torchDTypes = map[string]tensor.DType{
	"float32": tensor.F32, "float16": tensor.F16, "bfloat16": tensor.BF16, "float64": tensor.F64,
	"int64": tensor.I64, "int32": tensor.I32, "uint8": tensor.U8, "bool": tensor.Bool, "int8": tensor.I8,
}

// Files written by real torch.save (2.11) in both container formats: every dtype, views with
// offsets and strides, a tied storage, a 0-d and an empty tensor. Expected bytes come from torch.
func TestTorchWrittenFiles(t *testing.T) {
	var want map[string]struct {
		DType string `json:"dtype"`
		Shape []int  `json:"shape"`
		Hex   string `json:"hex"`
	}
	b, err := os.ReadFile(torchDir + "tensors_expected.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &want); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		file   string
		format Format
	}{{"tensors_zip.pt", FormatZip}, {"tensors_legacy.pt", FormatLegacy}} {
		t.Run(c.file, func(t *testing.T) {
			f, err := Open(torchDir + c.file)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if f.Format != c.format {
				t.Fatalf("format %s, want %s", f.Format, c.format)
			}
			tensors, _ := DictGet(f.Root, "tensors")
			es, ok := Entries(tensors)
			if !ok || len(es) != len(want) {
				t.Fatalf("tensors entry: %d entries, want %d", len(es), len(want))
			}
			for _, e := range es {
				w := want[e.Key]
				tt, ok := e.Value.(*Tensor)
				if !ok {
					t.Fatalf("%s is %T", e.Key, e.Value)
				}
				m, err := tt.Materialize()
				if err != nil {
					t.Fatalf("%s: %v", e.Key, err)
				}
				if m.DType != torchDTypes[w.DType] || !tensor.ShapeEqual(m.Shape, w.Shape) {
					t.Errorf("%s: %s %v, torch says %s %v", e.Key, m.DType, m.Shape, w.DType, w.Shape)
				}
				if got := hex.EncodeToString(m.Data); got != w.Hex {
					t.Errorf("%s: bytes %s, torch says %s", e.Key, got, w.Hex)
				}
			}
			a, _ := DictGet(tensors, "f32")
			tied, _ := DictGet(tensors, "tied")
			view, _ := DictGet(tensors, "row_view")
			if a.(*Tensor).Storage != tied.(*Tensor).Storage || a.(*Tensor).Storage != view.(*Tensor).Storage {
				t.Error("tensors sharing a torch storage must share one *Storage")
			}
			meta, _ := DictGet(f.Root, "meta")
			if n, _ := DictGet(meta, "n"); n != 3 {
				t.Errorf("meta.n = %v", n)
			}
		})
	}
}

// Every checkpoint in the Clinic fixtures opens, with the schema the fixture README records.
func TestClinicCheckpointsOpen(t *testing.T) {
	paths := []string{
		"../fixtures/clinic/runs/a_admin/ckpt/checkpoint_last.pt",
		"../fixtures/clinic/runs/a_admin/ckpt/checkpoint_12_300.pt",
		"../fixtures/clinic/runs/a_admin/ckpt_u1/checkpoint_last.pt",
		"../fixtures/clinic/runs/b_postln/ckpt/checkpoint_last.pt",
		"../fixtures/clinic/runs/b_postln/ckpt/checkpoint_12_300.pt",
		"../fixtures/clinic/runs/c_preln/ckpt/checkpoint_last.pt",
		"../fixtures/clinic/runs/c_preln/ckpt/checkpoint_12_300.pt",
		torchDir + "a_admin_legacy.pt",
		torchDir + "a_admin_fp16.pt",
	}
	for _, p := range paths {
		t.Run(p, func(t *testing.T) {
			ck, err := OpenCheckpoint(p)
			if err != nil {
				t.Fatal(err)
			}
			defer ck.Close()
			if ck.Generation != GenArgs {
				t.Errorf("generation %s, want args", ck.Generation)
			}
			if !ck.OptimizerState {
				t.Error("optimizer state not found")
			}
			if arch, _ := ck.Get("arch"); arch != "transformer_iwslt_de_en" {
				t.Errorf("arch %v", arch)
			}
			if len(ck.Config) != 126 {
				t.Errorf("args has %d fields, the README records 126", len(ck.Config))
			}
			enc, dec := ck.State[1].Tensor, (*Tensor)(nil)
			for _, nt := range ck.State {
				if nt.Name == "decoder.embed_tokens.weight" {
					dec = nt.Tensor
				}
			}
			if dec == nil || enc.Storage != dec.Storage {
				t.Error("shared embeddings must be one storage")
			}
		})
	}
}

func TestCfgCheckpoint(t *testing.T) {
	ck, err := OpenCheckpoint(torchDir + "b_postln_cfg.pt")
	if err != nil {
		t.Fatal(err)
	}
	defer ck.Close()
	if ck.Generation != GenCfg {
		t.Fatalf("generation %s", ck.Generation)
	}
	if a, _ := ck.Get("arch"); a != "transformer_iwslt_de_en" {
		t.Errorf("arch %v", a)
	}
	if sl, _ := ck.Get("source_lang"); sl != "src" {
		t.Errorf("source_lang %v", sl)
	}
}

type countingReaderAt struct {
	r io.ReaderAt
	n int64
}

func (c *countingReaderAt) ReadAt(p []byte, off int64) (int, error) {
	n, err := c.r.ReadAt(p, off)
	c.n += int64(n)
	return n, err
}

// Opening a legacy file reads its pickles, not its storages: a large checkpoint must not cost
// its size in memory or I/O before a tensor is asked for (it once cost 3x the file).
func TestLegacyOpenReadsOnlyThePickles(t *testing.T) {
	b, err := os.ReadFile(torchDir + "a_admin_legacy.pt")
	if err != nil {
		t.Fatal(err)
	}
	c := &countingReaderAt{r: bytes.NewReader(b)}
	if _, err := Read("a_admin_legacy.pt", c, int64(len(b))); err != nil {
		t.Fatal(err)
	}
	t.Logf("read %d of %d bytes to open", c.n, len(b))
	if c.n > int64(len(b))/2 {
		t.Errorf("opening read %d of %d bytes", c.n, len(b))
	}
}
