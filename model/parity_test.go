package model_test

import (
	"context"
	"fmt"
	"math"
	"path/filepath"
	"testing"

	"github.com/xform-dev/xform/convert"
	"github.com/xform-dev/xform/internal/npy"
	"github.com/xform-dev/xform/kernels/cpu"
	"github.com/xform-dev/xform/model"
	"github.com/xform-dev/xform/tensor"
)

const fixtureRuns = "../fixtures/clinic/runs"

// parityCase is one reference dump: the checkpoint it came from and its folder.
type parityCase struct {
	name, ckpt, dump string
}

var parityCases = []parityCase{
	{"a_admin/last", "a_admin/ckpt/checkpoint_last.pt", "a_admin/dump_last"},
	{"a_admin/u1", "a_admin/ckpt_u1/checkpoint_last.pt", "a_admin/dump_u1"},
	{"b_postln/last", "b_postln/ckpt/checkpoint_last.pt", "b_postln/dump_last"},
	{"c_preln/last", "c_preln/ckpt/checkpoint_last.pt", "c_preln/dump_last"},
}

func readInts(t *testing.T, path string) ([]int32, []int) {
	t.Helper()
	a, err := npy.Read(path)
	if err != nil {
		t.Fatal(err)
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

func readF32(t *testing.T, path string) ([]float32, []int) {
	t.Helper()
	a, err := npy.Read(path)
	if err != nil {
		t.Fatal(err)
	}
	v, err := a.F32()
	if err != nil {
		t.Fatal(err)
	}
	return v, a.Shape
}

// timeMajor converts our batch-major [B, T, C] to fairseq's [T, B, C].
func timeMajor(x []float32, B, T, C int) []float32 {
	out := make([]float32, len(x))
	for b := 0; b < B; b++ {
		for t := 0; t < T; t++ {
			copy(out[(t*B+b)*C:(t*B+b+1)*C], x[(b*T+t)*C:(b*T+t+1)*C])
		}
	}
	return out
}

func maxAbs(a, b []float32) float64 {
	if len(a) != len(b) {
		return math.Inf(1)
	}
	var m float64
	for i := range a {
		d := math.Abs(float64(a[i]) - float64(b[i]))
		if math.IsNaN(d) {
			return math.Inf(1)
		}
		m = max(m, d)
	}
	return m
}

// runDump feeds the dump's batch through m and returns our tensors in the dump layouts.
func runDump(t *testing.T, m *model.Model, dump string) map[string][]float32 {
	t.Helper()
	be := cpu.New(0)
	r, err := model.NewRunner(m, be)
	if err != nil {
		t.Fatal(err)
	}
	src, ss := readInts(t, filepath.Join(dump, "batch/src_tokens.npy"))
	prev, ps := readInts(t, filepath.Join(dump, "batch/prev_output_tokens.npy"))
	B, S, T := ss[0], ss[1], ps[1]
	C := m.Config.EncoderEmbedDim
	tr := &model.Trace{Enabled: true}
	ctx := context.Background()
	enc, err := r.Encode(ctx, src, B, S, tr)
	if err != nil {
		t.Fatal(err)
	}
	encOut := make([]float32, B*S*C)
	be.Download(encOut, enc.Out)
	if _, err := r.Decode(ctx, enc, prev, T, tr); err != nil {
		t.Fatal(err)
	}
	got := map[string][]float32{
		"encoder_out":       timeMajor(encOut, B, S, C),
		"encoder_embedding": tr.EncoderEmbedding,
		"decoder_features":  tr.DecoderFeatures,
		"decoder_attn":      tr.DecoderAttn,
		"logits":            tr.Logits,
		"lprobs":            tr.LogProbs,
	}
	var states, inner []float32
	for _, s := range tr.EncoderStates {
		states = append(states, timeMajor(s, B, S, C)...)
	}
	for _, s := range tr.DecoderInner {
		inner = append(inner, timeMajor(s, B, T, C)...)
	}
	got["encoder_states"], got["decoder_inner_states"] = states, inner
	return got
}

// Tolerance of the fp32 parity: both sides compute in float32 with different
// summation orders (MKL vs gonum GEMM, torch vs our softmax/LayerNorm), and the
// fixture README measured the reference itself within 7.4e-6 of a float64 evaluation
// on logits up to ~9; 1e-5 absolute is a few float32 ulps at that magnitude.
const fp32Tol = 1e-5

// fp16Tol bounds a run whose weights were rounded to fp16 (relative error 2^-11 per
// weight) against the fp32 reference: with |logits| ≲ 10 that rounding moves logits by
// a few 1e-3; 2e-2 leaves room while still catching any layout or widening error (those
// give errors of order 1).
const fp16Tol = 2e-2

func TestParityFixtures(t *testing.T) {
	for _, pc := range parityCases {
		t.Run(pc.name, func(t *testing.T) {
			m, err := convert.LoadCheckpoint(filepath.Join(fixtureRuns, pc.ckpt))
			if err != nil {
				t.Fatal(err)
			}
			dump := filepath.Join(fixtureRuns, pc.dump)
			got := runDump(t, m, dump)
			for _, name := range []string{"encoder_embedding", "encoder_states", "encoder_out", "decoder_inner_states", "decoder_features", "decoder_attn", "logits", "lprobs"} {
				want, _ := readF32(t, filepath.Join(dump, "cpu_fp32", name+".npy"))
				d := maxAbs(got[name], want)
				t.Logf("%-22s max|Δ| = %.3g", name, d)
				if d > fp32Tol {
					t.Errorf("%s: max abs error %.3g > %g", name, d, fp32Tol)
				}
			}
		})
	}
}

func TestParityFixturesFP16(t *testing.T) {
	for _, pc := range parityCases {
		t.Run(pc.name, func(t *testing.T) {
			m, err := convert.LoadCheckpoint(filepath.Join(fixtureRuns, pc.ckpt))
			if err != nil {
				t.Fatal(err)
			}
			half := &model.Model{Config: m.Config, Params: map[string]*tensor.Tensor{}}
			for k, v := range m.Params {
				h, err := v.Convert(tensor.F16)
				if err != nil {
					t.Fatal(err)
				}
				half.Params[k] = h
			}
			dump := filepath.Join(fixtureRuns, pc.dump)
			got := runDump(t, half, dump)
			for _, name := range []string{"encoder_out", "logits", "lprobs"} {
				want, _ := readF32(t, filepath.Join(dump, "cpu_fp32", name+".npy"))
				d := maxAbs(got[name], want)
				t.Logf("fp16 weights: %-12s max|Δ| = %.3g", name, d)
				if d > fp16Tol {
					t.Errorf("%s: max abs error %.3g > %g", name, d, fp16Tol)
				}
			}
		})
	}
}

var _ = fmt.Sprint
