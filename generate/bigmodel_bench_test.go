package generate_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"testing"

	"github.com/xform-dev/xform/generate"
	"github.com/xform-dev/xform/kernels/cpu"
	"github.com/xform-dev/xform/model"
	"github.com/xform-dev/xform/train"
	"github.com/xform-dev/xform/train/data"
)

// BenchmarkGenerateBigRandom translates 64 random 20-token sentences (batch 32, at most
// 20 output tokens) with a randomly initialised 6+6-layer transformer_wmt_en_de (d 512,
// FFN 2048, shared 32008-token vocabulary), the shape of the PyTorch comparison in
// fixtures/bench: there the output projection and the FFN GEMMs dominate, unlike on the
// d 32 fixture models. "float32" is the default Linear, "float64" WithFloat64Linear
// (about 10× slower: select the default alone with -bench 'BigRandom/.*/float32').
func BenchmarkGenerateBigRandom(b *testing.B) {
	c := model.Config{Arch: "transformer_wmt_en_de", Init: model.InitDefault, EncoderLayers: 6, DecoderLayers: 6, EncoderEmbedDim: 512, DecoderEmbedDim: 512,
		EncoderFFNDim: 2048, DecoderFFNDim: 2048, EncoderHeads: 8, DecoderHeads: 8,
		ShareAllEmbeddings: true, Activation: "relu", MaxSourcePositions: 1024, MaxTargetPositions: 1024, SrcVocab: 32008, TgtVocab: 32008}
	m, err := train.InitModel(c, 1)
	if err != nil {
		b.Fatal(err)
	}
	d := data.NewDictionary()
	for d.Len() < 32008 {
		d.Add(fmt.Sprintf("w%d", d.Len()), 1)
	}
	r := rand.New(rand.NewPCG(1, 2))
	sp := &generate.Split{SrcLang: "src", TgtLang: "tgt", SrcDict: d, TgtDict: d}
	for range 64 {
		s := make([]int32, 20)
		for i := range s {
			s[i] = int32(4 + r.IntN(32000))
		}
		s[19] = 2
		sp.Src = append(sp.Src, s)
	}
	for _, beam := range []int{1, 4} {
		for _, lin := range []string{"float32", "float64"} {
			b.Run(fmt.Sprintf("beam%d/%s", beam, lin), func(b *testing.B) {
				var opts []cpu.Option
				if lin == "float64" {
					opts = append(opts, cpu.WithFloat64Linear())
				}
				run, err := model.NewRunner(m, cpu.New(0, opts...))
				if err != nil {
					b.Fatal(err)
				}
				opt := generate.Options{Search: model.DefaultBeamOptions(), BatchSize: 32, Seed: 1, Quiet: true}
				opt.Search.Beam = beam
				opt.Search.MaxLenA, opt.Search.MaxLenB = 0, 20
				var toks int
				for b.Loop() {
					res, err := generate.Run(context.Background(), run, sp, opt, &bytes.Buffer{}, io.Discard)
					if err != nil {
						b.Fatal(err)
					}
					toks += res.Tokens
				}
				b.ReportMetric(float64(toks)/b.Elapsed().Seconds(), "tokens/s")
			})
		}
	}
}
