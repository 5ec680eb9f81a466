package train_test

import (
	"archive/zip"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/xform-dev/xform/internal/npy"
	"github.com/xform-dev/xform/model"
	"github.com/xform-dev/xform/tensor"
)

// refDir is the reference training data made by tools/reference/train_parity.sh.
func refDir(t *testing.T) string {
	t.Helper()
	d := filepath.Join("..", "fixtures", "train")
	if _, err := os.Stat(filepath.Join(d, "meta.json")); err != nil {
		t.Skipf("no reference training data in %s (make it with tools/reference/train_parity.sh, see docs/train.md)", d)
	}
	return d
}

type npz map[string]*npy.Array

func readNPZ(t *testing.T, path string) npz {
	t.Helper()
	zr, err := zip.OpenReader(path)
	if err != nil {
		t.Fatal(err)
	}
	defer zr.Close()
	out := npz{}
	for _, f := range zr.File {
		rc, err := f.Open()
		if err != nil {
			t.Fatal(err)
		}
		a, err := npy.Decode(rc)
		rc.Close()
		if err != nil {
			t.Fatalf("%s: %s: %v", path, f.Name, err)
		}
		out[strings.TrimSuffix(f.Name, ".npy")] = a
	}
	return out
}

func (z npz) ints(t *testing.T, key string) ([]int32, []int) {
	t.Helper()
	a, ok := z[key]
	if !ok {
		t.Fatalf("npz has no %s", key)
	}
	v, err := a.Int()
	if err != nil {
		t.Fatal(err)
	}
	out := make([]int32, len(v))
	for i, x := range v {
		out[i] = int32(x)
	}
	return out, a.Shape
}

func (z npz) f32(t *testing.T, key string) ([]float32, []int) {
	t.Helper()
	a, ok := z[key]
	if !ok {
		t.Fatalf("npz has no %s", key)
	}
	v, err := a.F32()
	if err != nil {
		t.Fatal(err)
	}
	return v, a.Shape
}

// refBatch returns reference batch k of epoch 1.
func refBatch(t *testing.T, z npz, k int) (*model.TrainBatch, []int32) {
	src, ss := z.ints(t, fmt.Sprintf("b%d/src_tokens", k))
	prev, ps := z.ints(t, fmt.Sprintf("b%d/prev_output_tokens", k))
	tgt, _ := z.ints(t, fmt.Sprintf("b%d/target", k))
	ids, _ := z.ints(t, fmt.Sprintf("b%d/id", k))
	b := &model.TrainBatch{B: ss[0], S: ss[1], T: ps[1], Src: src, Prev: prev, Target: tgt}
	for _, x := range tgt {
		if x != model.Pad {
			b.NTokens++
		}
	}
	return b, ids
}

type refStep struct {
	Update     int     `json:"update"`
	LR         float64 `json:"lr"`
	Loss       float64 `json:"loss"`
	NLL        float64 `json:"nll_loss"`
	SampleSize int     `json:"sample_size"`
	NTokens    int     `json:"ntokens"`
	NSentences int     `json:"nsentences"`
	GNorm      float64 `json:"gnorm"`
	BatchIDs   []int   `json:"batch_ids"`
}

type refRun struct {
	Argv       []string         `json:"argv"`
	Init       string           `json:"init"`
	UpdateFreq int              `json:"update_freq"`
	Steps      []refStep        `json:"steps"`
	Params     map[string][]int `json:"params"`
}

type refMeta struct {
	Runs    map[string]refRun `json:"runs"`
	Profile struct {
		BatchIDs []int `json:"batch_ids"`
	} `json:"profile"`
}

func readMeta(t *testing.T, dir string) *refMeta {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "meta.json"))
	if err != nil {
		t.Fatal(err)
	}
	var m refMeta
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return &m
}

// arg returns the value after flag in argv ("" when absent); has reports a bare flag.
func arg(argv []string, flag string) string {
	for i, a := range argv {
		if a == flag && i+1 < len(argv) {
			return argv[i+1]
		}
	}
	return ""
}

func has(argv []string, flag string) bool {
	for _, a := range argv {
		if a == flag {
			return true
		}
	}
	return false
}

var layerRe = regexp.MustCompile(`^(encoder|decoder)\.layers\.(\d+)\.(.*)$`)

// canonicalParams maps a reference state (fairseq/Clinic names) onto canonical names:
// fused in_proj split into q/k/v, *_ratio_change to *_omega.
func canonicalParams(t *testing.T, z npz, prefix string, d int) map[string]*tensor.Tensor {
	t.Helper()
	out := map[string]*tensor.Tensor{}
	for key := range z {
		if !strings.HasPrefix(key, prefix) {
			continue
		}
		name := strings.TrimPrefix(key, prefix)
		v, shape := z.f32(t, key)
		m := layerRe.FindStringSubmatch(name)
		if m == nil {
			if name == "decoder.embed_out" {
				name = model.OutProj
			}
			out[name] = tensor.FromF32(shape, v)
			continue
		}
		stack, rest := m[1], m[3]
		p := stack + ".layers." + m[2] + "."
		switch {
		case strings.HasSuffix(rest, "in_proj_weight") || strings.HasSuffix(rest, "in_proj_bias"):
			attn := strings.TrimSuffix(strings.TrimSuffix(rest, "in_proj_weight"), "in_proj_bias")
			kind, size, shp := "weight", d*d, []int{d, d}
			if strings.HasSuffix(rest, "bias") {
				kind, size, shp = "bias", d, []int{d}
			}
			for i, x := range []string{"q", "k", "v"} {
				out[p+attn+x+"_proj."+kind] = tensor.FromF32(shp, v[i*size:(i+1)*size])
			}
		case rest == "attention_ratio_change" || rest == "self_ratio_change":
			out[p+"self_attn_omega"] = tensor.FromF32(shape, v)
		case rest == "encoder_ratio_change":
			out[p+"encoder_attn_omega"] = tensor.FromF32(shape, v)
		case rest == "fc_ratio_change":
			out[p+"ffn_omega"] = tensor.FromF32(shape, v)
		default:
			out[p+rest] = tensor.FromF32(shape, v)
		}
	}
	return out
}

// refConfig is the fixture recipe's model config for a run's argv.
func refConfig(argv []string) model.Config {
	c := model.Config{Arch: "transformer_iwslt_de_en", Init: model.Init(arg(argv, "--init-type")), EncoderLayers: 3, DecoderLayers: 3,
		EncoderEmbedDim: 32, DecoderEmbedDim: 32, EncoderFFNDim: 64, DecoderFFNDim: 64, EncoderHeads: 4, DecoderHeads: 4,
		EncoderNormalizeBefore: has(argv, "--encoder-normalize-before"), DecoderNormalizeBefore: has(argv, "--decoder-normalize-before"),
		ShareAllEmbeddings: true, Activation: "relu", MaxSourcePositions: 1024, MaxTargetPositions: 1024, SrcVocab: 128, TgtVocab: 128,
		SourceLang: "src", TargetLang: "tgt"}
	return c
}
