package convert

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/xform-dev/xform/internal/pytest"

	"github.com/xform-dev/xform/admin"
	"github.com/xform-dev/xform/model"
	"github.com/xform-dev/xform/onnxio"
	"google.golang.org/protobuf/proto"
)

// onnxVariants are the model options the export must get right; each is checked for
// structure here and numerically (against a float64 numpy forward) in TestONNXRuntime.
func onnxVariants() []struct {
	name string
	cfg  model.Config
	opt  ONNXOptions
} {
	base := tinyConfig()
	admin := base
	admin.Init = model.InitAdaptive
	preln := base
	preln.EncoderNormalizeBefore, preln.DecoderNormalizeBefore = true, true
	untied := base
	untied.ShareAllEmbeddings, untied.ShareDecoderInputOutputEmbed = false, false
	untied.SrcVocab, untied.TgtVocab = 36, 44
	sharedIO := base
	sharedIO.ShareAllEmbeddings = false
	sharedIO.TgtVocab = 44
	gelu := base
	gelu.Activation = "gelu"
	gelu.EncoderLearnedPos, gelu.DecoderLearnedPos = true, true
	deep := base
	deep.Init = model.InitDeepNet
	deep.Activation = "gelu_accurate"
	return []struct {
		name string
		cfg  model.Config
		opt  ONNXOptions
	}{
		{"postln", base, ONNXOptions{}},
		{"postln_fp16", base, ONNXOptions{FP16: true}},
		{"admin_keep_omega", admin, ONNXOptions{KeepOmega: true}},
		{"admin_fp16", admin, ONNXOptions{KeepOmega: true, FP16: true}},
		{"preln", preln, ONNXOptions{}},
		{"untied", untied, ONNXOptions{}},
		{"shared_decoder_io", sharedIO, ONNXOptions{}},
		{"gelu_learned_pos", gelu, ONNXOptions{}},
		{"deepnet", deep, ONNXOptions{}},
		{"opset21", base, ONNXOptions{Opset: 21}},
	}
}

func ioNames(vs []*onnxio.ValueInfoProto) []string {
	var out []string
	for _, v := range vs {
		out = append(out, v.GetName())
	}
	return out
}

func dimString(v *onnxio.ValueInfoProto) string {
	var s []string
	for _, d := range v.GetType().GetTensorType().GetShape().GetDim() {
		if p := d.GetDimParam(); p != "" {
			s = append(s, p)
		} else {
			s = append(s, fmt.Sprint(d.GetDimValue()))
		}
	}
	return strings.Join(s, ",")
}

func TestONNXStructure(t *testing.T) {
	for _, v := range onnxVariants() {
		t.Run(v.name, func(t *testing.T) {
			m := randomModel(t, v.cfg, 3)
			files, err := BuildONNX(m, v.opt)
			if err != nil {
				t.Fatal(err)
			}
			wantDT := int32(onnxio.TensorProto_FLOAT)
			if v.opt.FP16 {
				wantDT = int32(onnxio.TensorProto_FLOAT16)
			}
			L := v.cfg.DecoderLayers
			var pastIn, presSelf, presAll []string
			for i := 0; i < L; i++ {
				for _, kind := range []string{"decoder", "encoder"} {
					for _, kv := range []string{"key", "value"} {
						pastIn = append(pastIn, fmt.Sprintf("past_key_values.%d.%s.%s", i, kind, kv))
						presAll = append(presAll, fmt.Sprintf("present.%d.%s.%s", i, kind, kv))
						if kind == "decoder" {
							presSelf = append(presSelf, fmt.Sprintf("present.%d.%s.%s", i, kind, kv))
						}
					}
				}
			}
			sorted := func(s []string) string { c := append([]string(nil), s...); sortStrings(c); return strings.Join(c, " ") }
			cases := []struct {
				file    string
				in, out []string
			}{
				{ONNXEncoder, []string{"input_ids", "attention_mask"}, []string{"last_hidden_state"}},
				{ONNXDecoder, []string{"input_ids", "encoder_attention_mask", "encoder_hidden_states"}, append([]string{"logits"}, presAll...)},
				{ONNXDecoderWithPast, append([]string{"input_ids", "encoder_attention_mask"}, pastIn...), append([]string{"logits"}, presSelf...)},
				{ONNXDecoderMerged, append(append([]string{"input_ids", "encoder_attention_mask", "encoder_hidden_states"}, pastIn...), "use_cache_branch"), append([]string{"logits"}, presAll...)},
			}
			for _, c := range cases {
				mp := files[c.file]
				g := mp.Graph
				if got := sorted(ioNames(g.Input)); got != sorted(c.in) {
					t.Errorf("%s inputs:\n got %s\nwant %s", c.file, got, sorted(c.in))
				}
				if got := sorted(ioNames(g.Output)); got != sorted(c.out) {
					t.Errorf("%s outputs:\n got %s\nwant %s", c.file, got, sorted(c.out))
				}
				if mp.GetOpsetImport()[0].GetVersion() != int64(v.opt.opset()) {
					t.Errorf("%s opset %d", c.file, mp.GetOpsetImport()[0].GetVersion())
				}
				for _, vi := range append(append([]*onnxio.ValueInfoProto{}, g.Input...), g.Output...) {
					et := vi.GetType().GetTensorType().GetElemType()
					switch n := vi.GetName(); {
					case n == "input_ids" || strings.HasSuffix(n, "attention_mask"):
						if et != int32(onnxio.TensorProto_INT64) {
							t.Errorf("%s %s elem type %d, want int64", c.file, n, et)
						}
					case n == "use_cache_branch":
						if et != int32(onnxio.TensorProto_BOOL) {
							t.Errorf("%s %s elem type %d, want bool", c.file, n, et)
						}
					default:
						if et != wantDT {
							t.Errorf("%s %s elem type %d, want %d", c.file, n, et, wantDT)
						}
					}
					if n := vi.GetName(); strings.Contains(n, "decoder.key") && !strings.HasPrefix(dimString(vi), "batch_size,") {
						t.Errorf("%s %s dims %s: want dynamic batch first", c.file, n, dimString(vi))
					}
				}
				// Initializers are never graph inputs (ORT would treat them as overridable).
				inits := map[string]bool{}
				for _, in := range g.Initializer {
					inits[in.GetName()] = true
				}
				for _, in := range g.Input {
					if inits[in.GetName()] {
						t.Errorf("%s: initializer %s listed as input", c.file, in.GetName())
					}
				}
			}
			// decoder_with_past: no cross-attention K/V projections and no Identity copies.
			for _, n := range files[ONNXDecoderWithPast].Graph.Node {
				if n.GetOpType() == "Identity" {
					t.Errorf("decoder_with_past has an Identity node %s", n.GetName())
				}
				for _, in := range n.Input {
					if strings.Contains(in, "encoder_attn.k_proj") || strings.Contains(in, "encoder_attn.v_proj") {
						t.Errorf("decoder_with_past recomputes cross K/V (%s)", in)
					}
				}
			}
			// merged: one If, every weight in the outer graph, none inside the branches.
			mg := files[ONNXDecoderMerged].Graph
			if len(mg.Node) != 1 || mg.Node[0].GetOpType() != "If" {
				t.Fatalf("merged graph: want a single If node, have %d nodes", len(mg.Node))
			}
			for _, a := range mg.Node[0].Attribute {
				if n := len(a.GetG().GetInitializer()); n != 0 {
					t.Errorf("branch %s holds %d initializers", a.GetName(), n)
				}
			}
			// A tied embedding is stored once (shared by Gather and the output Gemm).
			if v.cfg.TiedOutput() {
				for _, in := range files[ONNXDecoder].Graph.Initializer {
					if strings.Contains(in.GetName(), "output_projection") {
						t.Errorf("tied model stores an output projection %s", in.GetName())
					}
				}
			}
			// ω appears exactly when the model has it.
			hasOmega := false
			for _, in := range files[ONNXEncoder].Graph.Initializer {
				hasOmega = hasOmega || strings.HasSuffix(in.GetName(), "_omega")
			}
			if hasOmega != v.cfg.Init.HasOmega() {
				t.Errorf("ω initializers present = %v, model has ω = %v", hasOmega, v.cfg.Init.HasOmega())
			}
		})
	}
}

func sortStrings(s []string) {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
}

func TestONNXUnsupported(t *testing.T) {
	admin := tinyConfig()
	admin.Init = model.InitAdaptive
	cases := []struct {
		name string
		cfg  model.Config
		opt  ONNXOptions
		want string
	}{
		{"opset16", tinyConfig(), ONNXOptions{Opset: 16}, "LayerNormalization"},
		{"opset99", tinyConfig(), ONNXOptions{Opset: 99}, "opset 99"},
		{"admin_unfolded", admin, ONNXOptions{}, "ω"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := BuildONNX(randomModel(t, c.cfg, 1), c.opt)
			if !errors.Is(err, ErrONNXUnsupported) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want ErrONNXUnsupported mentioning %q", err, c.want)
			}
		})
	}
}

// TestONNXExternalData forces the >2 GB path on a tiny model and reads it back.
func TestONNXExternalData(t *testing.T) {
	m := randomModel(t, tinyConfig(), 5)
	dir := t.TempDir()
	if err := ExportONNX(m, dir, ONNXOptions{ExternalAbove: 1}); err != nil {
		t.Fatal(err)
	}
	want, err := BuildONNX(m, ONNXOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for name, w := range want {
		if _, err := os.Stat(filepath.Join(dir, name+"_data")); err != nil {
			t.Errorf("%s: no side file: %v", name, err)
		}
		got, err := onnxio.Load(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if !proto.Equal(got, w) {
			t.Errorf("%s: external-data round trip differs", name)
		}
	}
}

func TestSinusoidTable(t *testing.T) {
	// clinic-spec §2.2 test vector, d=8, pad=1.
	want := [][]float32{
		{0, 0, 0, 0, 1, 1, 1, 1},
		{0, 0, 0, 0, 0, 0, 0, 0},
		{0.9092974, 0.0926985, 0.0043089, 0.0002000, -0.4161468, 0.9956942, 0.9999907, 1.0},
		{0.1411200, 0.1387981, 0.0064633, 0.0003000, -0.9899925, 0.9903207, 0.9999791, 0.99999994},
		{-0.7568025, 0.1845987, 0.0086176, 0.0004000, -0.6536436, 0.9828140, 0.9999629, 0.99999994},
	}
	v, _ := sinusoidTable(5, 8, 1).F32()
	for r, row := range want {
		for j, x := range row {
			if d := v[r*8+j] - x; d > 1e-6 || d < -1e-6 {
				t.Errorf("row %d col %d: %v, want %v", r, j, v[r*8+j], x)
			}
		}
	}
}

// pythonONNX returns python3 when it can import onnx and onnxruntime (pytest.Python).
func pythonONNX(t *testing.T) string {
	t.Helper()
	return pytest.Python(t, "numpy", "onnx", "onnxruntime")
}

func runCheck(t *testing.T, py string, args ...string) {
	t.Helper()
	runScript(t, py, "../tools/onnx/check_onnx.py", args...)
}

func runScript(t *testing.T, py, script string, args ...string) {
	t.Helper()
	cmd := exec.Command(py, append([]string{script}, args...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %v: %v\n%s", script, args, err, out.String())
	}
	if testing.Verbose() {
		t.Logf("%s", out.String())
	}
}

// TestONNXRuntime runs every variant in onnxruntime against a float64 numpy forward
// written from the formulas, and every fixture run against the reference's own dumps.
func TestONNXRuntime(t *testing.T) {
	py := pythonONNX(t)
	for _, v := range onnxVariants() {
		t.Run(v.name, func(t *testing.T) {
			t.Parallel()
			m := randomModel(t, v.cfg, 11)
			dir := t.TempDir()
			exp, params := filepath.Join(dir, "onnx"), filepath.Join(dir, "params")
			if err := os.Mkdir(exp, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := ExportONNX(m, exp, v.opt); err != nil {
				t.Fatal(err)
			}
			dumpParams(t, m, params)
			runCheck(t, py, exp, "--params", params)
		})
	}
	type fixtureCase struct {
		run        string
		fp16, fold bool
	}
	var fixtures []fixtureCase
	for _, run := range []string{"a_admin", "b_postln", "c_preln"} {
		fixtures = append(fixtures, fixtureCase{run, false, false}, fixtureCase{run, true, false})
	}
	// The export's default for Admin: ω folded (exactly) into plain Post-LN weights.
	fixtures = append(fixtures, fixtureCase{"a_admin", false, true})
	for _, fc := range fixtures {
		run, fp16 := fc.run, fc.fp16
		{
			name := run
			if fp16 {
				name += "_fp16"
			}
			if fc.fold {
				name += "_folded"
			}
			t.Run("fixture_"+name, func(t *testing.T) {
				t.Parallel()
				runDir := filepath.Join("..", "fixtures", "clinic", "runs", run)
				m, err := LoadCheckpoint(filepath.Join(runDir, "ckpt", "checkpoint_last.pt"))
				if err != nil {
					t.Fatal(err)
				}
				if fc.fold {
					res, err := admin.Fold(m, admin.FoldOptions{})
					if err != nil {
						t.Fatal(err)
					}
					m = res.Model
				}
				exp := t.TempDir()
				if err := ExportONNX(m, exp, ONNXOptions{FP16: fp16, KeepOmega: !fc.fold}); err != nil {
					t.Fatal(err)
				}
				runCheck(t, py, exp, "--dump", filepath.Join(runDir, "dump_last"))
				if !fp16 {
					// Beam search over ORT alone must reproduce fairseq-generate's hypotheses
					// (fp16 is excluded: its rounding flips near-tied candidates).
					runScript(t, py, "../examples/onnx_translate.py", exp, "--data-bin", "../fixtures/clinic/data-bin",
						"--beam", "4", "--quiet", "--check", filepath.Join(runDir, "gen_beam4_cpu.txt"))
				}
			})
		}
	}
}
