package bench

import "github.com/xform-dev/xform/model"

// DefaultPeakTFLOPs is the bf16 dense GEMM rate measured on the H200 (cuBLAS GemmEx
// at 8192³ from Go, 785 TFLOP/s; PyTorch 769–798): MFU is quoted against 790.
const DefaultPeakTFLOPs = 790

// TrainFLOPs counts the model FLOPs of one training forward+backward of batch b: the
// GEMM and attention multiply-adds of the real (non-pad) tokens, 2 FLOPs each,
// times 3 (the backward costs twice the forward: gradients of the inputs and of the
// weights). Per sentence with s source and t target tokens (</s> included), d/f the
// embedding/FFN dims, L_e/L_d the layers, V the target vocabulary:
//
//	encoder layer  2·s·(4d² + 2d·f)             q, k, v, out projections and FFN
//	               + 4·s²·d                     QKᵀ and P·V
//	decoder layer  2·t·(4d² + 2d·f) + 4·t²·d    self-attention (full t², not halved for the causal mask) and FFN
//	               + 2·t·2d² + 2·s·2d²          encoder-attention q/out (target side) and k/v (source side)
//	               + 4·t·s·d                    encoder-attention QKᵀ and P·V
//	output         2·t·d·V                      logits (the tied embedding as a projection)
//
// Embedding lookups, LayerNorm, softmax, residuals, dropout, loss and the optimizer are
// not counted (they are O(tokens·d), not O(tokens·d²)). Padding is not counted: the
// FLOPs are what the model needs, not what a padded implementation spends, so MFU
// falls when a framework pads. For the transformer_wmt_en_de 6L-6L model on the
// synthetic corpus (s ≈ t ≈ 31) this is 6·N + attention ≈ 366 MFLOP per target token
// (6·N alone, N = 60.4M weights with the 16.4M-entry embedding counted once as the
// output projection, is 363; the round figure is 368).
func TrainFLOPs(c model.Config, b *model.TrainBatch) float64 {
	var total float64
	for r := 0; r < b.B; r++ {
		s := nonPad(b.Src[r*b.S : (r+1)*b.S])
		t := nonPad(b.Target[r*b.T : (r+1)*b.T])
		total += 3 * ForwardFLOPs(c, s, t)
	}
	return total
}

// ForwardFLOPs is one sentence pair's forward FLOPs (TrainFLOPs explains the terms).
func ForwardFLOPs(c model.Config, s, t int) float64 {
	S, T := float64(s), float64(t)
	de, fe := float64(c.EncoderEmbedDim), float64(c.EncoderFFNDim)
	dd, fd := float64(c.DecoderEmbedDim), float64(c.DecoderFFNDim)
	enc := 2*S*(4*de*de+2*de*fe) + 4*S*S*de
	dec := 2*T*(4*dd*dd+2*dd*fd) + 4*T*T*dd +
		2*T*2*dd*dd + 2*S*2*dd*de + 4*T*S*dd
	return float64(c.EncoderLayers)*enc + float64(c.DecoderLayers)*dec + 2*T*dd*float64(c.TgtVocab)
}

func nonPad(ids []int32) int {
	n := 0
	for _, id := range ids {
		if id != model.Pad {
			n++
		}
	}
	return n
}
