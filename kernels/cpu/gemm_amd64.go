package cpu

// dot3x4AVX2 is the AVX2+FMA tile kernel (gemm_amd64.s); n must be a multiple of 8.
//
//go:noescape
func dot3x4AVX2(x *[3]*float32, w *[4]*float32, n int, acc *[12]float64)

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

// bestKernel picks the AVX2 kernel when the CPU supports it.
func bestKernel() tileKernel {
	if hasAVX2FMA() {
		return tileKernel{name: "avx2", fn: dot3x4AVX2, step: 8}
	}
	return genericKernel
}
