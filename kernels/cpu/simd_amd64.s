#include "textflag.h"

// func maxAVX2(x *float32, n int) float32
TEXT ·maxAVX2(SB), NOSPLIT, $0-20
	MOVQ    x+0(FP), SI
	MOVQ    n+8(FP), CX
	VMOVUPS (SI), Y0
	MOVQ    $8, AX

maxloop:
	CMPQ   AX, CX
	JGE    maxdone
	VMAXPS (SI)(AX*4), Y0, Y0
	ADDQ   $8, AX
	JMP    maxloop

maxdone:
	VEXTRACTF128 $1, Y0, X1
	VMAXPS       X1, X0, X0
	VPERMILPS    $0x4E, X0, X1
	VMAXPS       X1, X0, X0
	VPERMILPS    $0xB1, X0, X1
	VMAXPS       X1, X0, X0
	VZEROUPPER
	MOVSS        X0, ret+16(FP)
	RET

// H is one Horner step p = r·p + c on both halves (r in Y3/Y4, p in Y7/Y8).
#define H(off) \
	VFMADD213PD off(DX), Y3, Y7; \
	VFMADD213PD off(DX), Y4, Y8

// func expSumAVX2(x *float32, n int, tab *expTable, m float32) float64
TEXT ·expSumAVX2(SB), NOSPLIT, $0-40
	MOVQ         x+0(FP), SI
	MOVQ         n+8(FP), CX
	MOVQ         tab+16(FP), DX
	VBROADCASTSS m+24(FP), Y15
	VMOVUPD      0(DX), Y14   // clamp −708
	VMOVUPD      32(DX), Y13  // log2 e
	VMOVUPD      64(DX), Y12  // shifter 1.5·2⁵²
	VMOVUPD      96(DX), Y11  // ln 2 high
	VMOVUPD      128(DX), Y10 // ln 2 low
	VMOVUPD      160(DX), Y9  // 1023 (int64)
	VXORPD       Y0, Y0, Y0
	VXORPD       Y1, Y1, Y1
	XORQ         AX, AX

exploop:
	CMPQ         AX, CX
	JGE          expdone
	VMOVUPS      (SI)(AX*4), Y2
	VSUBPS       Y15, Y2, Y2       // x − m in float32
	VCVTPS2PD    X2, Y3
	VEXTRACTF128 $1, Y2, X4
	VCVTPS2PD    X4, Y4
	VMAXPD       Y3, Y14, Y3       // clamp; a NaN (second source) passes through
	VMAXPD       Y4, Y14, Y4
	VMOVAPD      Y12, Y5
	VMOVAPD      Y12, Y6
	VFMADD231PD  Y13, Y3, Y5       // t = x·log2e + shifter: round(x·log2e) in the low bits
	VFMADD231PD  Y13, Y4, Y6
	VSUBPD       Y12, Y5, Y7       // k = t − shifter
	VSUBPD       Y12, Y6, Y8
	VFNMADD231PD Y11, Y7, Y3       // r = x − k·ln2hi − k·ln2lo
	VFNMADD231PD Y11, Y8, Y4
	VFNMADD231PD Y10, Y7, Y3
	VFNMADD231PD Y10, Y8, Y4
	VPADDQ       Y9, Y5, Y5        // 2^k = (k + 1023) << 52 from t's low bits
	VPADDQ       Y9, Y6, Y6
	VPSLLQ       $52, Y5, Y5
	VPSLLQ       $52, Y6, Y6
	VMOVUPD      192(DX), Y7       // 1/11!
	VMOVAPD      Y7, Y8
	H(224)
	H(256)
	H(288)
	H(320)
	H(352)
	H(384)
	H(416)
	H(448)
	H(480)
	H(512)
	H(544)
	VMULPD       Y5, Y7, Y7
	VMULPD       Y6, Y8, Y8
	VADDPD       Y7, Y0, Y0
	VADDPD       Y8, Y1, Y1
	ADDQ         $8, AX
	JMP          exploop

expdone:
	VADDPD       Y1, Y0, Y0
	VEXTRACTF128 $1, Y0, X1
	VADDPD       X1, X0, X0
	VUNPCKHPD    X0, X0, X1
	VADDSD       X1, X0, X0
	VZEROUPPER
	MOVSD        X0, ret+32(FP)
	RET

// func subAVX2(y, x *float32, n int, c float32)
TEXT ·subAVX2(SB), NOSPLIT, $0-28
	MOVQ         y+0(FP), DI
	MOVQ         x+8(FP), SI
	MOVQ         n+16(FP), CX
	VBROADCASTSS c+24(FP), Y1
	XORQ         AX, AX

subloop:
	CMPQ    AX, CX
	JGE     subdone
	VMOVUPS (SI)(AX*4), Y0
	VSUBPS  Y1, Y0, Y0
	VMOVUPS Y0, (DI)(AX*4)
	ADDQ    $8, AX
	JMP     subloop

subdone:
	VZEROUPPER
	RET

// func dot64AVX2(a, b *float32, n int) float64
TEXT ·dot64AVX2(SB), NOSPLIT, $0-32
	MOVQ   a+0(FP), SI
	MOVQ   b+8(FP), DI
	MOVQ   n+16(FP), CX
	VXORPD Y0, Y0, Y0
	VXORPD Y5, Y5, Y5
	XORQ   AX, AX

dotloop:
	CMPQ        AX, CX
	JGE         dotdone
	VCVTPS2PD   (SI)(AX*4), Y1
	VCVTPS2PD   16(SI)(AX*4), Y2
	VCVTPS2PD   (DI)(AX*4), Y3
	VCVTPS2PD   16(DI)(AX*4), Y4
	VFMADD231PD Y3, Y1, Y0
	VFMADD231PD Y4, Y2, Y5
	ADDQ        $8, AX
	JMP         dotloop

dotdone:
	VADDPD       Y5, Y0, Y0
	VEXTRACTF128 $1, Y0, X1
	VADDPD       X1, X0, X0
	VUNPCKHPD    X0, X0, X1
	VADDSD       X1, X0, X0
	VZEROUPPER
	MOVSD        X0, ret+24(FP)
	RET

// func axpy64AVX2(acc *float64, p float64, v *float32, n int)
TEXT ·axpy64AVX2(SB), NOSPLIT, $0-32
	MOVQ         acc+0(FP), DI
	VBROADCASTSD p+8(FP), Y0
	MOVQ         v+16(FP), SI
	MOVQ         n+24(FP), CX
	XORQ         AX, AX

axpyloop:
	CMPQ        AX, CX
	JGE         axpydone
	VCVTPS2PD   (SI)(AX*4), Y1
	VFMADD213PD (DI)(AX*8), Y0, Y1 // p·v + acc, the product exact
	VMOVUPD     Y1, (DI)(AX*8)
	ADDQ        $4, AX
	JMP         axpyloop

axpydone:
	VZEROUPPER
	RET

// func reluAVX2(y, x *float32, n int)
TEXT ·reluAVX2(SB), NOSPLIT, $0-24
	MOVQ   y+0(FP), DI
	MOVQ   x+8(FP), SI
	MOVQ   n+16(FP), CX
	VXORPS Y1, Y1, Y1
	XORQ   AX, AX

reluloop:
	CMPQ    AX, CX
	JGE     reludone
	VMOVUPS (SI)(AX*4), Y0
	VMAXPS  Y1, Y0, Y0     // max(x, +0); NaN and −0 give the second source, +0
	VMOVUPS Y0, (DI)(AX*4)
	ADDQ    $8, AX
	JMP     reluloop

reludone:
	VZEROUPPER
	RET
