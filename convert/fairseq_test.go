package convert

import (
	"bytes"
	"encoding/json"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/xform-dev/xform/fairseqpt"
	"github.com/xform-dev/xform/internal/npy"
	"github.com/xform-dev/xform/model"
	"github.com/xform-dev/xform/tensor"
)

const clinic = "../fixtures/clinic/runs/"

// Parameter values checked against the reference: the Clinic fork's dump of
// encoder_embedding = sqrt(C)·E[src_tokens] must equal sqrt(C)·(our embedding rows). The
// scale is a power of two's square root, so compare with a float32-rounding tolerance only.
func TestImportedEmbeddingsMatchReferenceDump(t *testing.T) {
	for _, c := range []struct{ ckpt, dump string }{
		{"a_admin/ckpt/checkpoint_last.pt", "a_admin/dump_last"},
		{"a_admin/ckpt_u1/checkpoint_last.pt", "a_admin/dump_u1"},
		{"b_postln/ckpt/checkpoint_last.pt", "b_postln/dump_last"},
		{"c_preln/ckpt/checkpoint_last.pt", "c_preln/dump_last"},
	} {
		t.Run(c.ckpt, func(t *testing.T) {
			m, err := LoadCheckpoint(clinic + c.ckpt)
			if err != nil {
				t.Fatal(err)
			}
			src, err := npy.Read(clinic + c.dump + "/batch/src_tokens.npy")
			if err != nil {
				t.Fatal(err)
			}
			ids, _ := src.Int()
			ref, err := npy.Read(clinic + c.dump + "/cpu_fp32/encoder_embedding.npy")
			if err != nil {
				t.Fatal(err)
			}
			want, _ := ref.F32()
			emb, _ := m.Params[model.EncEmbed].F32()
			d := m.Config.EncoderEmbedDim
			scale := float32(math.Sqrt(float64(d)))
			maxErr := 0.0
			for i, id := range ids {
				for j := 0; j < d; j++ {
					got := scale * emb[int(id)*d+j]
					maxErr = math.Max(maxErr, math.Abs(float64(got-want[i*d+j])))
				}
			}
			t.Logf("max |Δ| of sqrt(C)·E[src] vs reference encoder_embedding: %.3g", maxErr)
			if maxErr > 1e-6 {
				t.Errorf("embedding rows differ from the reference dump by %g", maxErr)
			}
		})
	}
}

type ckptSummary struct {
	TopLevelKeys []string `json:"top_level_keys"`
	ModelState   map[string]struct {
		Shape []int  `json:"shape"`
		DType string `json:"dtype"`
	} `json:"model_state"`
	Args        map[string]interface{} `json:"args"`
	RatioParams map[string]struct {
		First, Min, Max float64
	} `json:"ratio_params"`
	TopLevel struct {
		OptimizerHistory []struct {
			NumUpdates    int    `json:"num_updates"`
			OptimizerName string `json:"optimizer_name"`
		} `json:"optimizer_history"`
		ExtraState struct {
			TrainIterator struct {
				Epoch int `json:"epoch"`
			} `json:"train_iterator"`
			ValLoss float64 `json:"val_loss"`
			Best    float64 `json:"best"`
		} `json:"extra_state"`
	} `json:"top_level"`
}

var clinicToCanonicalOmega = map[string]string{
	"attention_ratio_change": "self_attn_omega", "fc_ratio_change": "ffn_omega",
	"self_ratio_change": "self_attn_omega", "encoder_ratio_change": "encoder_attn_omega",
}

// inspect's report agrees with what the reference's own torch.load recorded in ckpt_summary.json.
func TestInspectAgreesWithReferenceSummary(t *testing.T) {
	for _, c := range []struct{ ckpt, summary string }{
		{"a_admin/ckpt/checkpoint_last.pt", "a_admin/dump_last"},
		{"a_admin/ckpt_u1/checkpoint_last.pt", "a_admin/dump_u1"},
		{"b_postln/ckpt/checkpoint_last.pt", "b_postln/dump_last"},
		{"c_preln/ckpt/checkpoint_last.pt", "c_preln/dump_last"},
	} {
		t.Run(c.ckpt, func(t *testing.T) {
			var s ckptSummary
			b, _ := os.ReadFile(clinic + c.summary + "/ckpt_summary.json")
			if err := json.Unmarshal(b, &s); err != nil {
				t.Fatal(err)
			}
			r, err := Inspect(clinic + c.ckpt)
			if err != nil {
				t.Fatal(err)
			}
			// round-trip through JSON as `inspect --json` prints it
			jb, _ := json.Marshal(r)
			var got Report
			if err := json.Unmarshal(jb, &got); err != nil {
				t.Fatal(err)
			}
			if strings.Join(got.TopLevelKeys, ",") != strings.Join(s.TopLevelKeys, ",") {
				t.Errorf("top-level keys %v, reference %v", got.TopLevelKeys, s.TopLevelKeys)
			}
			if len(got.State) != len(s.ModelState) {
				t.Errorf("%d state entries, reference %d", len(got.State), len(s.ModelState))
			}
			for _, e := range got.State {
				w, ok := s.ModelState[e.Name]
				if !ok {
					t.Errorf("state entry %s not in the reference", e.Name)
					continue
				}
				if !tensorShapeEq(e.Shape, w.Shape) || "torch."+torchName(e.DType) != w.DType {
					t.Errorf("%s: %v %s, reference %v %s", e.Name, e.Shape, e.DType, w.Shape, w.DType)
				}
			}
			if len(got.Args) != len(s.Args) {
				t.Errorf("%d args, reference %d", len(got.Args), len(s.Args))
			}
			for k, v := range s.Args {
				gb, _ := json.Marshal(got.Args[k])
				wb, _ := json.Marshal(v)
				if string(gb) != string(wb) {
					t.Errorf("args.%s = %s, reference %s", k, gb, wb)
				}
			}
			h := s.TopLevel.OptimizerHistory[len(s.TopLevel.OptimizerHistory)-1]
			if got.Progress.Updates != h.NumUpdates || got.Progress.OptimizerName != h.OptimizerName ||
				got.Progress.Epoch != s.TopLevel.ExtraState.TrainIterator.Epoch ||
				*got.Progress.ValLoss != s.TopLevel.ExtraState.ValLoss || *got.Progress.BestLoss != s.TopLevel.ExtraState.Best {
				t.Errorf("progress %+v, reference %+v / %+v", got.Progress, h, s.TopLevel.ExtraState)
			}
			if len(got.Omega) != len(s.RatioParams) {
				t.Fatalf("%d ω vectors, reference %d", len(got.Omega), len(s.RatioParams))
			}
			for name, w := range s.RatioParams {
				parts := strings.Split(name, ".")
				canon := strings.Join(parts[:3], ".") + "." + clinicToCanonicalOmega[parts[3]]
				found := false
				for _, o := range got.Omega {
					if o.Name == canon {
						found = true
						if o.First != w.First || o.Min != w.Min || o.Max != w.Max {
							t.Errorf("%s: first/min/max %v/%v/%v, reference %v/%v/%v", canon, o.First, o.Min, o.Max, w.First, w.Min, w.Max)
						}
					}
				}
				if !found {
					t.Errorf("ω %s (%s) not reported", canon, name)
				}
			}
		})
	}
}

func tensorShapeEq(a, b []int) bool { return tensor.ShapeEqual(a, b) }

func torchName(d tensor.DType) string {
	return map[tensor.DType]string{tensor.F32: "float32", tensor.F16: "float16", tensor.BF16: "bfloat16"}[d]
}

// The same weights in every container torch writes: zip (fixture), legacy (re-saved by torch),
// fp16 (kept as fp16 bits, equal to torch's .half()), and the fairseq 0.12 cfg layout with
// split q/k/v names.
func TestSameModelAcrossFormats(t *testing.T) {
	ref, err := LoadCheckpoint(clinic + "a_admin/ckpt/checkpoint_last.pt")
	if err != nil {
		t.Fatal(err)
	}
	legacy, err := LoadCheckpoint("../fixtures/torch/a_admin_legacy.pt")
	if err != nil {
		t.Fatal(err)
	}
	assertSameModel(t, ref, legacy)

	half, err := LoadCheckpoint("../fixtures/torch/a_admin_fp16.pt")
	if err != nil {
		t.Fatal(err)
	}
	for name, rt := range ref.Params {
		ht := half.Params[name]
		if ht.DType != tensor.F16 {
			t.Fatalf("%s: dtype %s, want F16 kept", name, ht.DType)
		}
		want, _ := rt.Convert(tensor.F16) // round-to-nearest-even, as torch's .half()
		if !bytes.Equal(ht.Data, want.Data) {
			t.Errorf("%s: fp16 bits differ from torch's .half() of the fp32 checkpoint", name)
		}
	}

	post, err := LoadCheckpoint(clinic + "b_postln/ckpt/checkpoint_last.pt")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := LoadCheckpoint("../fixtures/torch/b_postln_cfg.pt")
	if err != nil {
		t.Fatal(err)
	}
	assertSameModel(t, post, cfg)

	// The same in a pickled omegaconf DictConfig (fairseq masters of 2020-10…2021-03),
	// made by tools/reference/make_dictconfig_ckpt.py with the real omegaconf.
	dc, err := Import("../fixtures/torch/b_postln_dictconfig.pt")
	if err != nil {
		t.Fatal(err)
	}
	defer dc.Close()
	if dc.Checkpoint.Generation != fairseqpt.GenDictConfig {
		t.Errorf("generation %s", dc.Checkpoint.Generation)
	}
	assertSameModel(t, post, dc.Model)
}

func assertSameModel(t *testing.T, a, b *model.Model) {
	t.Helper()
	if a.Config != b.Config {
		t.Errorf("configs differ:\n%+v\n%+v", a.Config, b.Config)
	}
	if len(a.Params) != len(b.Params) {
		t.Fatalf("%d vs %d parameters", len(a.Params), len(b.Params))
	}
	for name, at := range a.Params {
		bt := b.Params[name]
		if bt == nil || bt.DType != at.DType || !bytes.Equal(at.Data, bt.Data) {
			t.Errorf("%s differs", name)
		}
	}
}

func TestImportErrors(t *testing.T) {
	dir := t.TempDir()
	// Rewrite args fields through a copy: unknown arch and a shape mismatch.
	ck, err := fairseqpt.OpenCheckpoint(clinic + "b_postln/ckpt/checkpoint_last.pt")
	if err != nil {
		t.Fatal(err)
	}
	defer ck.Close()
	setCfg := func(key string, v interface{}) *fairseqpt.Checkpoint {
		c := *ck
		c.Config = append([]fairseqpt.Entry(nil), ck.Config...)
		for i := range c.Config {
			if c.Config[i].Key == key {
				c.Config[i].Value = v
			}
		}
		return &c
	}
	if _, _, err := FromFairseq(setCfg("arch", "lstm_wiseman_iwslt_de_en")); !errors.Is(err, ErrUnknownArch) || !strings.Contains(err.Error(), "lstm_wiseman_iwslt_de_en") {
		t.Errorf("unknown arch: %v", err)
	}
	if _, _, err := FromFairseq(setCfg("encoder_ffn_embed_dim", 128)); !errors.Is(err, ErrStateDict) || !strings.Contains(err.Error(), "fc1.weight") {
		t.Errorf("shape mismatch: %v", err)
	}
	if _, _, err := FromFairseq(setCfg("encoder_layers", 2)); !errors.Is(err, ErrStateDict) || !strings.Contains(err.Error(), "unexpected parameters") {
		t.Errorf("extra layer: %v", err)
	}
	// An empty directory and a directory of two checkpoints.
	if _, err := Import(dir); err == nil || !strings.Contains(err.Error(), "no checkpoint") {
		t.Errorf("empty dir: %v", err)
	}
	b, _ := os.ReadFile(clinic + "b_postln/ckpt/checkpoint_last.pt")
	os.WriteFile(filepath.Join(dir, "a.pt"), b, 0o644)
	os.WriteFile(filepath.Join(dir, "b.pt"), b, 0o644)
	if _, err := Import(dir); err == nil || !strings.Contains(err.Error(), "2 checkpoints") {
		t.Errorf("two checkpoints: %v", err)
	}
}

// An imported directory loads back to the same model and is a valid safetensors file.
func TestSaveDirRoundTrip(t *testing.T) {
	im, err := Import(clinic + "a_admin/ckpt/checkpoint_last.pt")
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	out := filepath.Join(t.TempDir(), "m")
	if err := SaveDir(out, im.Model, SaveDirOptions{Profile: clinic + "a_admin/profile.ratio.init"}); err != nil {
		t.Fatal(err)
	}
	back, err := Import(out)
	if err != nil {
		t.Fatal(err)
	}
	assertSameModel(t, im.Model, back.Model)
	if back.Profile == "" {
		t.Error("profile not kept")
	}
	if err := SaveDir(out, im.Model, SaveDirOptions{}); !errors.Is(err, os.ErrExist) {
		t.Errorf("existing dir without Force: %v", err)
	}
	ents, _ := os.ReadDir(filepath.Dir(out))
	if len(ents) != 1 {
		t.Errorf("temporary files left behind: %v", ents)
	}
}
