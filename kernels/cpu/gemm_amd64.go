package cpu

// dot3x4AVX2 is the AVX2+FMA tile kernel (gemm_amd64.s); n must be a multiple of 8.
//
//go:noescape
func dot3x4AVX2(x *[3]*float32, w *[4]*float32, n int, acc *[12]float64)

// dot3x8AVX512 is the AVX-512VL tile kernel (gemm_amd64.s); n must be a multiple of 8.
//
//go:noescape
func dot3x8AVX512(x *[3]*float32, w *[8]*float32, n int, acc *[24]float64)

// dot3x8AVX2 runs the AVX2 3×4 kernel on each half of the columns.
func dot3x8AVX2(x *[tileM]*float32, w *[tileN]*float32, n int, acc *[tileM * tileN]float64) {
	for h := 0; h < 2; h++ {
		var t [12]float64
		dot3x4AVX2(x, (*[4]*float32)(w[4*h:]), n, &t)
		addHalf(acc, &t, h)
	}
}

func cpuid(eaxArg, ecxArg uint32) (eax, ebx, ecx, edx uint32)

func xgetbv0() (eax, edx uint32)

// hasAVX2FMA reports whether the CPU has AVX2 and FMA and the OS saves the ymm
// registers on context switches (without the last, AVX instructions fault).
func hasAVX2FMA() bool {
	maxLeaf, _, _, _ := cpuid(0, 0)
	if maxLeaf < 7 {
		return false
	}
	_, _, ecx1, _ := cpuid(1, 0)
	const fma, osxsave, avx = 1 << 12, 1 << 27, 1 << 28
	if ecx1&(fma|osxsave|avx) != fma|osxsave|avx {
		return false
	}
	if xcr0, _ := xgetbv0(); xcr0&6 != 6 { // SSE and AVX state enabled by the OS
		return false
	}
	_, ebx7, _, _ := cpuid(7, 0)
	return ebx7&(1<<5) != 0
}

// hasAVX512VL reports whether the CPU has AVX-512F and VL (EVEX-encoded ymm16-31) and
// the OS saves the opmask and upper zmm state.
func hasAVX512VL() bool {
	if !hasAVX2FMA() {
		return false
	}
	if xcr0, _ := xgetbv0(); xcr0&0xe6 != 0xe6 { // SSE, AVX, opmask, ZMM_Hi256, Hi16_ZMM
		return false
	}
	_, ebx7, _, _ := cpuid(7, 0)
	const avx512f, avx512vl = 1 << 16, 1 << 31
	return ebx7&(avx512f|avx512vl) == avx512f|avx512vl
}

var (
	avx2Kernel   = tileKernel{name: "avx2", fn: dot3x8AVX2, step: 8}
	avx512Kernel = tileKernel{name: "avx512vl", fn: dot3x8AVX512, step: 8}
)

// bestKernel picks the widest kernel the CPU supports. All of them give the same bits
// (same float32 lane chains, same float64 reduction), so the choice is speed only.
func bestKernel() tileKernel {
	switch {
	case hasAVX512VL():
		return avx512Kernel
	case hasAVX2FMA():
		return avx2Kernel
	}
	return genericKernel
}
