#include "textflag.h"

// func cpuid(eaxArg, ecxArg uint32) (eax, ebx, ecx, edx uint32)
TEXT ·cpuid(SB), NOSPLIT, $0-24
	MOVL eaxArg+0(FP), AX
	MOVL ecxArg+4(FP), CX
	CPUID
	MOVL AX, eax+8(FP)
	MOVL BX, ebx+12(FP)
	MOVL CX, ecx+16(FP)
	MOVL DX, edx+20(FP)
	RET

// func xgetbv0() (eax, edx uint32)
TEXT ·xgetbv0(SB), NOSPLIT, $0-8
	MOVL $0, CX
	XGETBV
	MOVL AX, eax+0(FP)
	MOVL DX, edx+4(FP)
	RET

// WIDEN turns the 8 float32 lanes of y (low half x) into 4 float64 sums of lane
// pairs, so the horizontal sum below runs in float64. Clobbers Y12.
#define WIDEN(y, x) \
	VEXTRACTF128 $1, y, X12; \
	VCVTPS2PD    X12, Y12; \
	VCVTPS2PD    x, y; \
	VADDPD       Y12, y, y

// REDUCE4 sums each of ya, yb, yc, yd (4 float64 lanes) horizontally and adds the
// four totals to the float64s at (DX): one output row of the tile. Clobbers Y12, Y13.
#define REDUCE4(ya, yb, yc, yd) \
	VHADDPD    yb, ya, ya; \
	VHADDPD    yd, yc, yc; \
	VPERM2F128 $0x20, yc, ya, Y12; \
	VPERM2F128 $0x31, yc, ya, Y13; \
	VADDPD     Y13, Y12, Y12; \
	VADDPD     (DX), Y12, Y12; \
	VMOVUPD    Y12, (DX)

// FMA4 multiplies the loaded x vectors Y12-Y14 by the w row at off(ptr)(AX*1) and adds
// into accumulators a (x row 0), b (row 1), c (row 2).
#define FMA4(off, ptr, a, b, c) \
	VMOVUPS     off(ptr)(AX*1), Y15; \
	VFMADD231PS Y15, Y12, a; \
	VFMADD231PS Y15, Y13, b; \
	VFMADD231PS Y15, Y14, c

// STEP does one 8-element step of the 3×4 tile at byte offset AX+off.
#define STEP(off) \
	VMOVUPS off(SI)(AX*1), Y12; \
	VMOVUPS off(R8)(AX*1), Y13; \
	VMOVUPS off(R9)(AX*1), Y14; \
	FMA4(off, DI, Y0, Y4, Y8); \
	FMA4(off, R10, Y1, Y5, Y9); \
	FMA4(off, R11, Y2, Y6, Y10); \
	FMA4(off, R12, Y3, Y7, Y11)

// func dot3x4AVX2(x *[3]*float32, w *[4]*float32, n int, acc *[12]float64)
//
// acc[4r+c] += Σ_{l<n} x[r][l]·w[c][l] for n a multiple of 8. Each of the 12 ymm
// accumulators holds 8 float32 lane sums (every 8th product, so float32 chains are
// n/8 long); they are widened and summed in float64 at the end.
TEXT ·dot3x4AVX2(SB), NOSPLIT, $0-32
	MOVQ x+0(FP), AX
	MOVQ 0(AX), SI
	MOVQ 8(AX), R8
	MOVQ 16(AX), R9
	MOVQ w+8(FP), AX
	MOVQ 0(AX), DI
	MOVQ 8(AX), R10
	MOVQ 16(AX), R11
	MOVQ 24(AX), R12
	MOVQ n+16(FP), CX
	MOVQ acc+24(FP), DX
	SHLQ $2, CX
	XORQ AX, AX

	VXORPS Y0, Y0, Y0
	VXORPS Y1, Y1, Y1
	VXORPS Y2, Y2, Y2
	VXORPS Y3, Y3, Y3
	VXORPS Y4, Y4, Y4
	VXORPS Y5, Y5, Y5
	VXORPS Y6, Y6, Y6
	VXORPS Y7, Y7, Y7
	VXORPS Y8, Y8, Y8
	VXORPS Y9, Y9, Y9
	VXORPS Y10, Y10, Y10
	VXORPS Y11, Y11, Y11
	TESTQ  CX, CX
	JZ     reduce

	// Two 8-element steps per iteration (loop overhead), then one if n/8 is odd.
	MOVQ CX, BX
	ANDQ $-64, BX
	JZ   single

pair:
	STEP(0)
	STEP(32)
	ADDQ $64, AX
	CMPQ AX, BX
	JLT  pair
	CMPQ AX, CX
	JGE  reduce

single:
	STEP(0)
	ADDQ $32, AX
	CMPQ AX, CX
	JLT  single

reduce:
	WIDEN(Y0, X0)
	WIDEN(Y1, X1)
	WIDEN(Y2, X2)
	WIDEN(Y3, X3)
	REDUCE4(Y0, Y1, Y2, Y3)
	ADDQ $32, DX
	WIDEN(Y4, X4)
	WIDEN(Y5, X5)
	WIDEN(Y6, X6)
	WIDEN(Y7, X7)
	REDUCE4(Y4, Y5, Y6, Y7)
	ADDQ $32, DX
	WIDEN(Y8, X8)
	WIDEN(Y9, X9)
	WIDEN(Y10, X10)
	WIDEN(Y11, X11)
	REDUCE4(Y8, Y9, Y10, Y11)
	VZEROUPPER
	RET

// REDUCE4AT is REDUCE4 for the four outputs at off(DX).
#define REDUCE4AT(off, ya, yb, yc, yd) \
	VHADDPD    yb, ya, ya; \
	VHADDPD    yd, yc, yc; \
	VPERM2F128 $0x20, yc, ya, Y12; \
	VPERM2F128 $0x31, yc, ya, Y13; \
	VADDPD     Y13, Y12, Y12; \
	VADDPD     off(DX), Y12, Y12; \
	VMOVUPD    Y12, off(DX)

// FMA8 is FMA4 into the accumulators of columns 4-7 (EVEX registers), w in Y28.
#define FMA8(ptr, a, b, c) \
	VMOVUPS     (ptr)(AX*1), Y28; \
	VFMADD231PS Y28, Y12, a; \
	VFMADD231PS Y28, Y13, b; \
	VFMADD231PS Y28, Y14, c

// func dot3x8AVX512(x *[3]*float32, w *[8]*float32, n int, acc *[24]float64)
//
// acc[8r+c] += Σ_{l<n} x[r][l]·w[c][l] for n a multiple of 8: the 3×4 kernel above on
// twice the columns, with the same lane layout and the same reduction per output (so
// the same bits), using AVX-512VL's 32 ymm registers for the 24 accumulators. Each x
// vector loaded then feeds 8 FMAs instead of 4, halving the x traffic from L2.
TEXT ·dot3x8AVX512(SB), NOSPLIT, $0-32
	MOVQ x+0(FP), AX
	MOVQ 0(AX), SI
	MOVQ 8(AX), R8
	MOVQ 16(AX), R9
	MOVQ w+8(FP), AX
	MOVQ 0(AX), DI
	MOVQ 8(AX), R10
	MOVQ 16(AX), R11
	MOVQ 24(AX), R12
	MOVQ 32(AX), R13
	MOVQ 40(AX), BX
	MOVQ 48(AX), DX
	MOVQ 56(AX), R15
	MOVQ n+16(FP), CX
	SHLQ $2, CX
	XORQ AX, AX

	VXORPS Y0, Y0, Y0
	VXORPS Y1, Y1, Y1
	VXORPS Y2, Y2, Y2
	VXORPS Y3, Y3, Y3
	VXORPS Y4, Y4, Y4
	VXORPS Y5, Y5, Y5
	VXORPS Y6, Y6, Y6
	VXORPS Y7, Y7, Y7
	VXORPS Y8, Y8, Y8
	VXORPS Y9, Y9, Y9
	VXORPS Y10, Y10, Y10
	VXORPS Y11, Y11, Y11
	VMOVUPS Y0, Y16
	VMOVUPS Y0, Y17
	VMOVUPS Y0, Y18
	VMOVUPS Y0, Y19
	VMOVUPS Y0, Y20
	VMOVUPS Y0, Y21
	VMOVUPS Y0, Y22
	VMOVUPS Y0, Y23
	VMOVUPS Y0, Y24
	VMOVUPS Y0, Y25
	VMOVUPS Y0, Y26
	VMOVUPS Y0, Y27
	TESTQ  CX, CX
	JZ     reduce8

loop8:
	VMOVUPS (SI)(AX*1), Y12
	VMOVUPS (R8)(AX*1), Y13
	VMOVUPS (R9)(AX*1), Y14
	FMA4(0, DI, Y0, Y4, Y8)
	FMA4(0, R10, Y1, Y5, Y9)
	FMA4(0, R11, Y2, Y6, Y10)
	FMA4(0, R12, Y3, Y7, Y11)
	FMA8(R13, Y16, Y20, Y24)
	FMA8(BX, Y17, Y21, Y25)
	FMA8(DX, Y18, Y22, Y26)
	FMA8(R15, Y19, Y23, Y27)
	ADDQ $32, AX
	CMPQ AX, CX
	JLT  loop8

reduce8:
	MOVQ acc+24(FP), DX
	WIDEN(Y0, X0)
	WIDEN(Y1, X1)
	WIDEN(Y2, X2)
	WIDEN(Y3, X3)
	REDUCE4AT(0, Y0, Y1, Y2, Y3)
	WIDEN(Y4, X4)
	WIDEN(Y5, X5)
	WIDEN(Y6, X6)
	WIDEN(Y7, X7)
	REDUCE4AT(64, Y4, Y5, Y6, Y7)
	WIDEN(Y8, X8)
	WIDEN(Y9, X9)
	WIDEN(Y10, X10)
	WIDEN(Y11, X11)
	REDUCE4AT(128, Y8, Y9, Y10, Y11)
	// Columns 4-7: into the VEX-encodable registers that the reduction needs.
	VMOVUPS Y16, Y0
	VMOVUPS Y17, Y1
	VMOVUPS Y18, Y2
	VMOVUPS Y19, Y3
	VMOVUPS Y20, Y4
	VMOVUPS Y21, Y5
	VMOVUPS Y22, Y6
	VMOVUPS Y23, Y7
	VMOVUPS Y24, Y8
	VMOVUPS Y25, Y9
	VMOVUPS Y26, Y10
	VMOVUPS Y27, Y11
	WIDEN(Y0, X0)
	WIDEN(Y1, X1)
	WIDEN(Y2, X2)
	WIDEN(Y3, X3)
	REDUCE4AT(32, Y0, Y1, Y2, Y3)
	WIDEN(Y4, X4)
	WIDEN(Y5, X5)
	WIDEN(Y6, X6)
	WIDEN(Y7, X7)
	REDUCE4AT(96, Y4, Y5, Y6, Y7)
	WIDEN(Y8, X8)
	WIDEN(Y9, X9)
	WIDEN(Y10, X10)
	WIDEN(Y11, X11)
	REDUCE4AT(160, Y8, Y9, Y10, Y11)
	VZEROUPPER
	RET
