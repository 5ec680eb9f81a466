package train

import (
	"fmt"
	"math"
	"math/rand/v2"

	"github.com/xform-dev/xform/model"
	"github.com/xform-dev/xform/tensor"
)

// ArchDefaults fills the dimensions of a fairseq 0.8 Transformer architecture into c
// (fields already set, i.e. non-zero, win, as fairseq's getattr defaults do) and
// returns the architecture's dropout defaults.
func ArchDefaults(arch string, c *model.Config) (dropout, attn, act float64, err error) {
	type dims struct {
		d, ffn, heads, layers int
		drop, attn, act       float64
		pre                   bool
	}
	table := map[string]dims{
		"transformer":                       {512, 2048, 8, 6, 0.1, 0, 0, false},
		"transformer_iwslt_de_en":           {512, 1024, 4, 6, 0.1, 0, 0, false},
		"transformer_wmt_en_de":             {512, 2048, 8, 6, 0.1, 0, 0, false},
		"transformer_vaswani_wmt_en_de_big": {1024, 4096, 16, 6, 0.3, 0, 0, false},
		"transformer_vaswani_wmt_en_fr_big": {1024, 4096, 16, 6, 0.1, 0, 0, false},
		"transformer_wmt_en_de_big":         {1024, 4096, 16, 6, 0.3, 0.1, 0, false},
		"transformer_wmt_en_de_big_t2t":     {1024, 4096, 16, 6, 0.3, 0.1, 0.1, true},
	}
	a, ok := table[arch]
	if !ok {
		return 0, 0, 0, fmt.Errorf("unknown --arch %q", arch)
	}
	set := func(p *int, v int) {
		if *p == 0 {
			*p = v
		}
	}
	c.Arch = arch
	set(&c.EncoderEmbedDim, a.d)
	set(&c.EncoderFFNDim, a.ffn)
	set(&c.EncoderHeads, a.heads)
	set(&c.EncoderLayers, a.layers)
	set(&c.DecoderEmbedDim, c.EncoderEmbedDim)
	set(&c.DecoderFFNDim, c.EncoderFFNDim)
	set(&c.DecoderHeads, a.heads)
	set(&c.DecoderLayers, a.layers)
	set(&c.MaxSourcePositions, 1024)
	set(&c.MaxTargetPositions, 1024)
	if a.pre {
		c.EncoderNormalizeBefore, c.DecoderNormalizeBefore = true, true
	}
	if c.Activation == "" {
		c.Activation = "relu"
	}
	return a.drop, a.attn, a.act, nil
}

// InitModel initialises a model as the Clinic fork does for its init type (clinic-spec
// §2.7, §1.6), with Go's RNG (the values cannot equal torch's): embeddings N(0, d^-½)
// with a zero pad row, xavier-uniform projections (q|k|v as one [3d, d] matrix, as the
// fused in_proj), zero biases, LayerNorms 1/0, ω = 1 (Admin: the profile sets it);
// DeepNet: xavier-normal with gain β on v, out_proj, fc1, fc2 and separate q/k/v.
func InitModel(c model.Config, seed uint64) (*model.Model, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	r := rand.New(rand.NewPCG(seed, 0x786f726d))
	m := &model.Model{Config: c, Params: map[string]*tensor.Tensor{}}
	d := c.EncoderEmbedDim
	normal := func(shape []int, std float64, padRow bool) *tensor.Tensor {
		v := make([]float32, tensor.Numel(shape))
		for i := range v {
			v[i] = float32(r.NormFloat64() * std)
		}
		if padRow {
			clear(v[model.Pad*shape[1] : (model.Pad+1)*shape[1]])
		}
		return tensor.FromF32(shape, v)
	}
	uniform := func(n int, bound float64) []float32 {
		v := make([]float32, n)
		for i := range v {
			v[i] = float32((2*r.Float64() - 1) * bound)
		}
		return v
	}
	xavier := func(out, in int) *tensor.Tensor {
		return tensor.FromF32([]int{out, in}, uniform(out*in, math.Sqrt(6/float64(out+in))))
	}
	betaEnc, betaDec := 1.0, 1.0
	if c.Init == model.InitDeepNet {
		n, mm := float64(c.EncoderLayers), float64(c.DecoderLayers)
		betaEnc = 0.87 * math.Pow(n*n*n*n*mm, -1.0/16)
		betaDec = math.Pow(12*mm, -0.25)
	}
	fill := func(shape []int, x float32) *tensor.Tensor {
		v := make([]float32, tensor.Numel(shape))
		for i := range v {
			v[i] = x
		}
		return tensor.FromF32(shape, v)
	}
	for _, p := range c.Expected() {
		name, shape := p.Name, p.Shape
		beta := betaEnc
		if len(name) > 7 && name[:7] == "decoder" {
			beta = betaDec
		}
		switch {
		case name == model.EncEmbed || name == model.DecEmbed || name == model.EncPos || name == model.DecPos:
			m.Params[name] = normal(shape, math.Pow(float64(d), -0.5), true)
		case name == model.OutProj:
			m.Params[name] = normal(shape, math.Pow(float64(shape[1]), -0.5), false)
		case isOmega(name):
			m.Params[name] = fill(shape, 1)
		case hasSuffix(name, "layer_norm.weight"):
			m.Params[name] = fill(shape, 1)
		case hasSuffix(name, ".bias"):
			m.Params[name] = fill(shape, 0)
		case c.Init == model.InitDeepNet:
			gain := beta
			if hasSuffix(name, "q_proj.weight") || hasSuffix(name, "k_proj.weight") {
				gain = 1
			}
			m.Params[name] = normal(shape, gain*math.Sqrt(2/float64(shape[0]+shape[1])), false)
		case hasSuffix(name, "q_proj.weight"):
			// One xavier bound over the fused [3d, d] in_proj, split into q, k, v.
			pre := name[:len(name)-len("q_proj.weight")]
			all := uniform(3*d*d, math.Sqrt(6/float64(4*d)))
			for i, x := range []string{"q", "k", "v"} {
				m.Params[pre+x+"_proj.weight"] = tensor.FromF32([]int{d, d}, all[i*d*d:(i+1)*d*d])
			}
		case hasSuffix(name, "k_proj.weight") || hasSuffix(name, "v_proj.weight"):
			// set with q
		default:
			m.Params[name] = xavier(shape[0], shape[1])
		}
	}
	return m, m.Validate()
}

func hasSuffix(s, suf string) bool { return len(s) >= len(suf) && s[len(s)-len(suf):] == suf }
