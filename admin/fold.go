package admin

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"

	"github.com/xform-dev/xform/model"
	"github.com/xform-dev/xform/tensor"
)

// Folding Admin's ω into an ordinary Post-LN Transformer.
//
// The algebra. An Admin sub-layer computes y = LN(ω⊙x + f(x)), where x is the sub-layer's
// input (the previous LayerNorm's output, or the embedding output for the first sub-layer
// of a stack) and ω a per-channel vector. A plain Post-LN sub-layer computes
// y = LN(x̃ + f̃(x̃)). Take x̃ = ω⊙x, i.e. let the model carry the residual stream already
// multiplied by the ω of the sub-layer that will consume it. Then
//
//   - the residual term is x̃ itself: exact;
//   - every linear map that reads x must read x̃ instead: W·x + b = (W·diag(1/ω))·x̃ + b, so
//     the input columns of those projections are divided by ω (biases unchanged);
//   - x̃ must be produced by whatever produced x: a LayerNorm output γ⊙n + β becomes
//     (ω⊙γ)⊙n + ω⊙β, so that LayerNorm's γ and β are multiplied by ω.
//
// Who reads which state, per layer l (encoder N layers, decoder M layers):
//
//	encoder  x_l  → residual ω_attn[l], self-attn q, k, v        ← LN final[l-1] or the embedding
//	         a_l  → residual ω_ffn[l], fc1                        ← LN self_attn[l]
//	         x_N  → every decoder layer's encoder-attention k, v  ← LN final[N-1]: no ω, unscaled
//	decoder  g_l  → residual ω_self[l], self-attn q, k, v         ← LN final[l-1] or the embedding
//	         b_l  → residual ω_enc[l], encoder-attn q only        ← LN self_attn[l]
//	         c_l  → residual ω_ffn[l], fc1                        ← LN encoder_attn[l]
//	         g_M  → output projection                              ← LN final[M-1]: no ω, unscaled
//
// So the last LayerNorm of each stack keeps its weights: nothing downstream of it carries
// an ω, and the output projection needs no change. Self-attention keys and values cached
// during incremental decoding are computed from x̃ with the folded k, v weights, so they
// equal the unfolded ones.
//
// The embeddings. x_0 = s·E[tok] + P[pos] has no LayerNorm to absorb ω_attn[0]
// (encoder) or ω_self[0] (decoder). It is absorbed exactly by multiplying the columns of
// E and P by ω: that needs an embedding table of the stack's own (so
// --share-all-embeddings / a tied output projection are undone: the output projection
// keeps the original E) and learned positions (the fixed sinusoid table is materialised as
// a learned table, pad row zero, rows max_positions+pad+1, as fairseq's learned positions
// have). Where ω_0 is exactly 1 in every channel (a model at initialisation: profiling
// always gives the first sub-layer of a stack ω = 1) nothing changes.
//
// KeepArchitecture instead keeps sharing and sinusoids and approximates: with c the mean
// of ω_0, LN(ω_0⊙x + f(x)) ≈ LN(c·x + f(x)) = LN(c·(x + f(x)/c)), and LayerNorm is scale
// invariant up to its ε (LN(c·z) uses ε/c² in effect), so dividing that sub-layer's output
// projection (out_proj weight and bias) by c absorbs the mean exactly but for ε; the
// per-channel remainder ω_0/c − 1 is dropped, and that is the error reported.

// Sentinel errors of Fold.
var (
	ErrNotAdmin  = errors.New("not an Admin model: it has no ω to fold")
	ErrOmegaZero = errors.New("ω too close to zero to fold")
)

// DefaultMinOmega is the smallest |ω| Fold accepts: folding divides weights by ω, and a
// channel whose residual ω is ~0 carries no residual that LayerNorm scaling could rebuild.
const DefaultMinOmega = 1e-6

// FoldOptions control Fold.
type FoldOptions struct {
	// KeepArchitecture keeps shared embeddings and sinusoidal positions and approximates
	// the first sub-layer of each stack (see the package comment above Fold).
	KeepArchitecture bool
	// MinOmega is the smallest |ω| accepted; 0 means DefaultMinOmega.
	MinOmega float64
}

// FoldResult is the folded model and what the fold did.
type FoldResult struct {
	Model *model.Model
	// Changes lists architecture changes in words (empty when the architecture is kept).
	Changes []string
	// Approximations lists what is not exact (KeepArchitecture only), with the size of
	// the dropped per-channel ω remainder.
	Approximations []string
	// Scales to undo when comparing the folded model's hidden states with the original's:
	// the folded state = scale ⊙ original state (nil = unscaled).
	EncoderEmbedScale []float64   // encoder x_0 (embedding + positions)
	EncoderStateScale [][]float64 // output of encoder layer l
	DecoderInnerScale [][]float64 // decoder x_0, then output of each decoder layer
}

// Fold turns an Admin model into a plain Post-LN model (init "default", no ω) with the
// same outputs. m is not modified; unchanged parameters are shared with it.
func Fold(m *model.Model, opt FoldOptions) (*FoldResult, error) {
	c := m.Config
	if !c.Init.HasOmega() {
		return nil, fmt.Errorf("admin: fold: %w (init type %q; only %q/%q models carry ω)", ErrNotAdmin, c.Init, model.InitAdaptive, model.InitAdaptiveProfiling)
	}
	if err := m.Validate(); err != nil {
		return nil, fmt.Errorf("admin: fold: %w", err)
	}
	minOmega := opt.MinOmega
	if minOmega == 0 {
		minOmega = DefaultMinOmega
	}
	f := &folder{src: m, out: map[string][]float64{}, minOmega: minOmega}
	res := &FoldResult{}
	// Precision: everything is computed in float64 from the stored values and rounded
	// once. Half-precision parameters are widened to float32 for the whole model, since
	// a folded weight rounded back to fp16 would lose the exactness the fold is for.
	outDType := tensor.F32
	if t := m.Params[model.EncEmbed]; t.DType == tensor.F64 {
		outDType = tensor.F64
	}
	halves := false
	for _, t := range m.Params {
		if t.DType == tensor.F16 || t.DType == tensor.BF16 {
			halves = true
		}
	}
	if halves {
		res.Changes = append(res.Changes, "fp16/bf16 parameters are stored as float32 (a folded weight rounded to fp16 would not be exact)")
	}

	omega := f.omega
	N, M := c.EncoderLayers, c.DecoderLayers
	encOmega := func(l int) ([]float64, error) { return omega(model.EncLayer(l) + "self_attn_omega") }
	decOmega := func(l int) ([]float64, error) { return omega(model.DecLayer(l) + "self_attn_omega") }

	// Encoder layers.
	res.EncoderStateScale = make([][]float64, N)
	for l := 0; l < N; l++ {
		p := model.EncLayer(l)
		wa, err := encOmega(l)
		if err != nil {
			return nil, err
		}
		wf, err := omega(p + "ffn_omega")
		if err != nil {
			return nil, err
		}
		// With KeepArchitecture the embedding output is not scaled by the first ω, so the
		// first layer's projections keep reading the unscaled x_0.
		for _, x := range []string{"q", "k", "v"} {
			if l == 0 && opt.KeepArchitecture {
				break
			}
			if err := f.divCols(p+"self_attn."+x+"_proj.weight", wa); err != nil {
				return nil, err
			}
		}
		if err := f.scaleLN(p+"self_attn_layer_norm", wf); err != nil {
			return nil, err
		}
		if err := f.divCols(p+"fc1.weight", wf); err != nil {
			return nil, err
		}
		if l+1 < N {
			next, err := encOmega(l + 1)
			if err != nil {
				return nil, err
			}
			if err := f.scaleLN(p+"final_layer_norm", next); err != nil {
				return nil, err
			}
			res.EncoderStateScale[l] = next
		}
	}
	// Decoder layers.
	res.DecoderInnerScale = make([][]float64, M+1)
	for l := 0; l < M; l++ {
		p := model.DecLayer(l)
		ws, err := decOmega(l)
		if err != nil {
			return nil, err
		}
		we, err := omega(p + "encoder_attn_omega")
		if err != nil {
			return nil, err
		}
		wf, err := omega(p + "ffn_omega")
		if err != nil {
			return nil, err
		}
		for _, x := range []string{"q", "k", "v"} {
			if l == 0 && opt.KeepArchitecture {
				break
			}
			if err := f.divCols(p+"self_attn."+x+"_proj.weight", ws); err != nil {
				return nil, err
			}
		}
		if err := f.scaleLN(p+"self_attn_layer_norm", we); err != nil {
			return nil, err
		}
		if err := f.divCols(p+"encoder_attn.q_proj.weight", we); err != nil {
			return nil, err
		}
		if err := f.scaleLN(p+"encoder_attn_layer_norm", wf); err != nil {
			return nil, err
		}
		if err := f.divCols(p+"fc1.weight", wf); err != nil {
			return nil, err
		}
		if l+1 < M {
			next, err := decOmega(l + 1)
			if err != nil {
				return nil, err
			}
			if err := f.scaleLN(p+"final_layer_norm", next); err != nil {
				return nil, err
			}
			res.DecoderInnerScale[l+1] = next
		}
	}

	// The embeddings: the first sub-layer of each stack.
	cfg := c
	cfg.Init = model.InitDefault
	enc0, err := encOmega(0)
	if err != nil {
		return nil, err
	}
	dec0, err := decOmega(0)
	if err != nil {
		return nil, err
	}
	needEnc, needDec := !allOnes(enc0), !allOnes(dec0)
	params := map[string]*tensor.Tensor{}
	if opt.KeepArchitecture {
		for _, s := range []struct {
			need  bool
			name  string
			omega []float64
			layer string
		}{{needEnc, "encoder", enc0, model.EncLayer(0)}, {needDec, "decoder", dec0, model.DecLayer(0)}} {
			if !s.need {
				continue
			}
			mean, dev := meanDev(s.omega)
			if err := f.scaleVec(s.layer+"self_attn.out_proj.weight", 1/mean); err != nil {
				return nil, err
			}
			if err := f.scaleVec(s.layer+"self_attn.out_proj.bias", 1/mean); err != nil {
				return nil, err
			}
			res.Approximations = append(res.Approximations, fmt.Sprintf(
				"%s layer 0: the embedding output cannot absorb ω (shared embeddings / sinusoidal positions kept): "+
					"its mean %.6g is absorbed by the self-attention output projection, the per-channel remainder "+
					"(max |ω/mean − 1| = %.3g) is dropped", s.name, mean, dev))
		}
	} else {
		encE := m.Params[model.EncEmbed]
		decE := m.DecoderEmbedding()
		if (needEnc || needDec) && c.ShareAllEmbeddings {
			cfg.ShareAllEmbeddings = false
			res.Changes = append(res.Changes, "share_all_embeddings off: the encoder and decoder embeddings are separate tables now (each scaled by its stack's first ω)")
		}
		if needDec && c.TiedOutput() {
			cfg.ShareDecoderInputOutputEmbed = false
			params[model.OutProj] = decE // the output projection keeps the unscaled table
			res.Changes = append(res.Changes, "share_decoder_input_output_embed off: the output projection is a separate copy of the decoder embedding (decoder.embed_out)")
		} else if !cfg.ShareAllEmbeddings && c.ShareAllEmbeddings && c.TiedOutput() {
			// Only the encoder needed its own table; the decoder keeps E tied to the output.
			cfg.ShareDecoderInputOutputEmbed = true
		}
		if needEnc {
			if err := f.scaledCols(encE, enc0, model.EncEmbed); err != nil {
				return nil, err
			}
			res.EncoderEmbedScale = enc0
		}
		if !cfg.ShareAllEmbeddings {
			if needDec {
				if err := f.scaledCols(decE, dec0, model.DecEmbed); err != nil {
					return nil, err
				}
				res.DecoderInnerScale[0] = dec0
			} else {
				params[model.DecEmbed] = decE
			}
		}
		for _, s := range []struct {
			need    bool
			learned *bool
			name    string
			maxPos  int
			omega   []float64
			what    string
		}{
			{needEnc, &cfg.EncoderLearnedPos, model.EncPos, c.MaxSourcePositions, enc0, "encoder"},
			{needDec, &cfg.DecoderLearnedPos, model.DecPos, c.MaxTargetPositions, dec0, "decoder"},
		} {
			if !s.need {
				continue
			}
			var table []float64
			d := c.EncoderEmbedDim
			if *s.learned {
				v, err := f.get(s.name)
				if err != nil {
					return nil, err
				}
				table = append([]float64(nil), v...)
			} else {
				rows := s.maxPos + model.Pad + 1
				sin := model.Sinusoids(rows, d)
				table = make([]float64, len(sin))
				for i, x := range sin {
					table[i] = float64(x)
				}
				*s.learned = true
				res.Changes = append(res.Changes, fmt.Sprintf("%s_learned_pos on: the sinusoidal table (%d×%d) becomes a learned table scaled by ω", s.what, rows, d))
			}
			for i := range table {
				table[i] *= s.omega[i%d]
			}
			f.out[s.name] = table
			f.shape(s.name, []int{len(table) / d, d})
		}
	}

	// Assemble the folded model: folded tensors, then everything else that the new
	// config expects, minus ω.
	out := &model.Model{Config: cfg, Params: map[string]*tensor.Tensor{}}
	for _, p := range cfg.Expected() {
		if v, ok := f.out[p.Name]; ok {
			t, err := f.tensor(p.Name, v, outDType)
			if err != nil {
				return nil, err
			}
			out.Params[p.Name] = t
			continue
		}
		if t, ok := params[p.Name]; ok {
			out.Params[p.Name] = t
			continue
		}
		t, ok := m.Params[p.Name]
		if !ok {
			return nil, fmt.Errorf("admin: fold: internal error: no value for %s", p.Name)
		}
		out.Params[p.Name] = t
	}
	if halves {
		for name, t := range out.Params {
			if t.DType == tensor.F16 || t.DType == tensor.BF16 {
				w, err := t.F32()
				if err != nil {
					return nil, fmt.Errorf("admin: fold: %s: %w", name, err)
				}
				out.Params[name] = f32Tensor(t.Shape, w)
			}
		}
	}
	if err := out.Validate(); err != nil {
		return nil, fmt.Errorf("admin: fold: result: %w", err)
	}
	res.Model = out
	return res, nil
}

// folder holds the float64 working copies of the parameters being changed.
type folder struct {
	src      *model.Model
	out      map[string][]float64
	shapes   map[string][]int
	minOmega float64
}

func (f *folder) shape(name string, s []int) {
	if f.shapes == nil {
		f.shapes = map[string][]int{}
	}
	f.shapes[name] = s
}

// get returns the working copy of a parameter, widening the stored one on first use.
func (f *folder) get(name string) ([]float64, error) {
	if v, ok := f.out[name]; ok {
		return v, nil
	}
	t, ok := f.src.Params[name]
	if !ok {
		return nil, fmt.Errorf("admin: fold: missing parameter %s", name)
	}
	w, err := t.F32()
	if err != nil {
		return nil, fmt.Errorf("admin: fold: %s: %w", name, err)
	}
	v := make([]float64, len(w))
	for i, x := range w {
		v[i] = float64(x)
	}
	f.out[name] = v
	f.shape(name, t.Shape)
	return v, nil
}

func (f *folder) omega(name string) ([]float64, error) {
	t, ok := f.src.Params[name]
	if !ok {
		return nil, fmt.Errorf("admin: fold: missing ω %s", name)
	}
	w, err := t.F32()
	if err != nil {
		return nil, fmt.Errorf("admin: fold: %s: %w", name, err)
	}
	v := make([]float64, len(w))
	for i, x := range w {
		v[i] = float64(x)
		if math.IsNaN(v[i]) || math.IsInf(v[i], 0) {
			return nil, fmt.Errorf("admin: fold: %s[%d] = %v: %w", name, i, x, ErrOmegaZero)
		}
		if math.Abs(v[i]) < f.minOmega {
			return nil, fmt.Errorf("admin: fold: %s[%d] = %g (|ω| < %g): %w", name, i, x, f.minOmega, ErrOmegaZero)
		}
	}
	return v, nil
}

// divCols divides the input columns of a [out, in] weight by ω.
func (f *folder) divCols(name string, omega []float64) error {
	v, err := f.get(name)
	if err != nil {
		return err
	}
	in := len(omega)
	if len(v)%in != 0 {
		return fmt.Errorf("admin: fold: %s has %d elements, not a multiple of %d", name, len(v), in)
	}
	for i := range v {
		v[i] /= omega[i%in]
	}
	return nil
}

// scaleLN multiplies a LayerNorm's γ and β by ω.
func (f *folder) scaleLN(prefix string, omega []float64) error {
	for _, s := range []string{".weight", ".bias"} {
		v, err := f.get(prefix + s)
		if err != nil {
			return err
		}
		if len(v) != len(omega) {
			return fmt.Errorf("admin: fold: %s%s has %d elements, ω %d", prefix, s, len(v), len(omega))
		}
		for i := range v {
			v[i] *= omega[i]
		}
	}
	return nil
}

func (f *folder) scaleVec(name string, c float64) error {
	v, err := f.get(name)
	if err != nil {
		return err
	}
	for i := range v {
		v[i] *= c
	}
	return nil
}

// scaledCols stores t with its columns multiplied by ω as the working copy of name.
func (f *folder) scaledCols(t *tensor.Tensor, omega []float64, name string) error {
	w, err := t.F32()
	if err != nil {
		return fmt.Errorf("admin: fold: %s: %w", name, err)
	}
	d := len(omega)
	v := make([]float64, len(w))
	for i, x := range w {
		v[i] = float64(x) * omega[i%d]
	}
	f.out[name] = v
	f.shape(name, t.Shape)
	return nil
}

func (f *folder) tensor(name string, v []float64, dt tensor.DType) (*tensor.Tensor, error) {
	shape := f.shapes[name]
	out := &tensor.Tensor{DType: dt, Shape: append([]int(nil), shape...)}
	switch dt {
	case tensor.F64:
		out.Data = make([]byte, 8*len(v))
		for i, x := range v {
			binary.LittleEndian.PutUint64(out.Data[8*i:], math.Float64bits(x))
		}
	default:
		out.Data = make([]byte, 4*len(v))
		for i, x := range v {
			y := float32(x)
			if math.IsInf(float64(y), 0) || math.IsNaN(float64(y)) {
				return nil, fmt.Errorf("admin: fold: %s[%d] = %g does not fit float32 (ω too small): %w", name, i, x, ErrOmegaZero)
			}
			binary.LittleEndian.PutUint32(out.Data[4*i:], math.Float32bits(y))
		}
	}
	return out, nil
}

func f32Tensor(shape []int, v []float32) *tensor.Tensor {
	t := &tensor.Tensor{DType: tensor.F32, Shape: append([]int(nil), shape...), Data: make([]byte, 4*len(v))}
	for i, x := range v {
		binary.LittleEndian.PutUint32(t.Data[4*i:], math.Float32bits(x))
	}
	return t
}

func allOnes(v []float64) bool {
	for _, x := range v {
		if x != 1 {
			return false
		}
	}
	return true
}

// meanDev returns the mean of v and max |v/mean − 1|.
func meanDev(v []float64) (mean, dev float64) {
	for _, x := range v {
		mean += x
	}
	mean /= float64(len(v))
	for _, x := range v {
		dev = math.Max(dev, math.Abs(x/mean-1))
	}
	return mean, dev
}
