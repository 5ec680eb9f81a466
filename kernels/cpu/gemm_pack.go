package cpu

// transposeBlock is the side of the square tiles a transpose copies, so that both the
// rows read and the rows written stay in cache within a tile.
const transposeBlock = 32

// transposed returns src [rows, cols] (leading dimension ld) as a new row-major
// [cols, rows] matrix, the layout the GEMM engine reads (k contiguous per row).
func (be *Backend) transposed(src []float32, rows, cols, ld int) []float32 {
	dst := make([]float32, rows*cols)
	colBlocks := (cols + transposeBlock - 1) / transposeBlock
	be.parallel(colBlocks, transposeBlock*rows, func(lo, hi int) {
		for cb := lo; cb < hi; cb++ {
			c0, c1 := cb*transposeBlock, min((cb+1)*transposeBlock, cols)
			for r0 := 0; r0 < rows; r0 += transposeBlock {
				for r := r0; r < min(r0+transposeBlock, rows); r++ {
					for c, v := range src[r*ld+c0 : r*ld+c1] {
						dst[(c0+c)*rows+r] = v
					}
				}
			}
		}
	})
	return dst
}
