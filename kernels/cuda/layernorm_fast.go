package cuda

import (
	"fmt"
	"unsafe"

	"github.com/xform-dev/xform/kernels"
)

// The float residual + LayerNorm (layernorm_fast.cu) serves the mixed-precision modes
// (Options.Precision BF16/FP16): the forward in one launch and the backward in two
// (rows with per-block column partials, then the finish), each tensor read or written
// once, against residual_layernorm.cu's one and three launches in double. Relative
// error ~1e-7 against the CPU (bound 1e-5 in gpu_layernorm_fast_test.go). FP32 keeps
// the exact kernels, as does any dim over lfMaxDim.
const (
	lfWarps   = 8 // LF_WARPS: rows in flight per block
	lfThreads = lfWarps * 32
	lfMaxDim  = 32 * 32 // the largest NC is 32 columns per lane
)

// lfNCs are the instantiated columns-per-lane counts, each with a forward and a backward.
var lfNCs = [...]int{1, 2, 4, 8, 16, 32}

// lnFastFns are one Backend's float LayerNorm kernels, looked up on first use and kept
// in the Backend (lazyKernels); the _drop ones fold in the residual dropout. The float4
// kernels (vfwd, vbwd, vfinish) take every shape lfvShape accepts; the scalar ones the
// rest.
type lnFastFns struct {
	fwd, bwd, fwdDrop [len(lfNCs)]uintptr
	finish            uintptr

	vfwd    [len(lfvNVs)]uintptr
	vbwd    [len(lfvNVs)]lfvKernel
	vfinish uintptr
	// vfinishList is finish_v over a list of calls (finish_deferred.go).
	vfinishList uintptr

	// vbwdSum and vbwdRecomp are the float4 backward reading dy as a
	// kernels.ResidualSum (layernorm_fast_bwd_vp*), and that one recomputing z from x
	// and the branch (layernorm_fast_bwd_vr*). They launch on vbwd's grid, so their
	// column partials, and so dγ, dβ, dω, are the bits of vbwd's.
	vbwdSum, vbwdRecomp [len(lfvNVs)]uintptr
	// resBwd4 and resBwdDrop4 are residual.cu's float4 residual backward and its form
	// with the dropout applied (kernels.ResidualSumNormer.ApplyDropoutSum).
	resBwd4, resBwdDrop4 uintptr
	// sumOff is a test switch for the kernels before kernels.ResidualSumNormer: its
	// methods form the sum with ResidualBackward first, RecomputesResidual is false,
	// and ResidualBackward runs the scalar residual_bwd (timings and bit comparisons).
	sumOff bool
	// recompute turns RecomputesResidual on (on by default since the fifteenth
	// session: with the step's kernels (LFV_STEP) and the kept mask words, a sub-layer's
	// forward + backward at 8000×512 bf16 took 49.5 µs on the H200 without z against
	// 51.8 with it, and the 18L-18L bench gained 1.4 %; z's 4 bytes per activation
	// element per sub-layer are not stored. XFORM_CUDA_LN_RECOMPUTE=0 turns it off).
	recompute bool

	// scalar is a test switch: the scalar kernels for every shape, with the dropout of
	// the backward in a separate ApplyDropout (what ran before the float4 kernels), so
	// tests can time and compare the two.
	scalar bool

	// wfwd, wbwd, wbwdSum and wbwdRecomp are the _w forms of vfwd, vbwd, vbwdSum and
	// vbwdRecomp (layernorm_fast_fwd_w*, _bwd_ws*, _wp*, _wr*): the dropout mask from
	// 32-bit words (lfw_keep4) and the backward's finish done by its last blocks
	// (lfw_finish) instead of a layernorm_fast_bwd_finish_v launch, the same bits. The
	// backward launches on vbwd's grid and warps, so its partials are vbwd's.
	wfwd, wbwd, wbwdSum, wbwdRecomp [len(lfvNVs)]uintptr
	// cnt holds the _w backward's lfwCounters arrival counters: zeroed once, reset to
	// zero by the kernels themselves. nil when the kernels were first looked up inside
	// a graphed step (its memory would be the step's arena): then the finish stays a
	// launch of its own.
	cnt *allocation
	// legacy: the float4 kernels before the _w ones (the v kernels and the finish
	// launch). The default (Backend.lnWOn off); tests flip it for bit comparisons and
	// before/after timings.
	legacy bool
	// wfinished counts the _w backward launches that finished the column sums
	// themselves (tests: the path was taken).
	wfinished int
	// bwdCalls counts the float4 backward launches, bwdStep those whose arguments take
	// their kernel's LFV_STEP body (lfvStepForm; HostStats, xform bench's JSON).
	bwdCalls, bwdStep int

	// pfwd and pfwdPlain are the pipelined forwards (layernorm_fast_fwd_p*, _pl*): each
	// warp loops over rows and requests the next row's x and branch before it reduces
	// and stores the current one; _p draws the mask with lfw_keep4 and rounds y16 with
	// the hardware conversion, _pl with vfwd's 64-bit hash and software rounding.
	// vfwd's bits.
	pfwd, pfwdPlain [len(lfvNVs)]lfvKernel
	// pfwdKept, vbwdSumKept and vbwdRecKept are pfwd, vbwdSum and vbwdRecomp that store
	// and read the residual dropout's keep bits (layernorm_fast_fwd_pk*, _bwd_vpk*,
	// _bwd_vrk*; kernels.KeptMaskNormer);
	// keptFwd and keptBwd count their launches (tests: the path was taken).
	pfwdKept                 [len(lfvNVs)]lfvKernel
	vbwdSumKept, vbwdRecKept [len(lfvNVs)]uintptr
	keptFwd, keptBwd         int
	// pipe: the forward launches pfwd (Backend.lnPOn, default on, XFORM_CUDA_LNP=0 off; tests flip it),
	// or pfwdPlain with pipePlain (tests: to time the schedule apart from the
	// instructions). pipeRows: rows per warp (0: lfpGrid's choice; tests sweep it).
	pipe, pipePlain bool
	pipeRows        int
	// piped counts the pipelined forward's launches (tests: the path was taken).
	piped int

	occupancy uintptr // cuOccupancyMaxActiveBlocksPerMultiprocessor; 0: not bound
}

// lfvKernel is a float4 backward and its launch shape: warps per block and resident
// blocks per SM (0 until first asked of the driver), which is also its grid per SM, so
// the column partials are one per resident block.
type lfvKernel struct {
	fn           uintptr
	warps, perSM int
}

// lnFns returns the float LayerNorm kernels. The caller holds the Backend (enter).
func (be *Backend) lnFns() *lnFastFns {
	if f := be.lazy.lnFast; f != nil {
		return f
	}
	f := &lnFastFns{finish: be.kernel("layernorm_fast_bwd_finish"), vfinish: be.kernel("layernorm_fast_bwd_finish_v"),
		vfinishList: be.kernel("layernorm_fast_bwd_finish_list"),
		resBwd4:     be.kernel("residual_bwd4"), resBwdDrop4: be.kernel("residual_bwd_dropout4")}
	for i, nc := range lfNCs {
		f.fwd[i] = be.kernel(fmt.Sprintf("layernorm_fast_fwd%d", nc))
		f.bwd[i] = be.kernel(fmt.Sprintf("layernorm_fast_bwd%d", nc))
		f.fwdDrop[i] = be.kernel(fmt.Sprintf("layernorm_fast_fwd_drop%d", nc))
	}
	for i, nv := range lfvNVs {
		f.wfwd[i] = be.kernel(fmt.Sprintf("layernorm_fast_fwd_w%d", nv))
		f.wbwd[i] = be.kernel(fmt.Sprintf("layernorm_fast_bwd_ws%d", nv))
		f.wbwdSum[i] = be.kernel(fmt.Sprintf("layernorm_fast_bwd_wp%d", nv))
		f.wbwdRecomp[i] = be.kernel(fmt.Sprintf("layernorm_fast_bwd_wr%d", nv))
		f.vfwd[i] = be.kernel(fmt.Sprintf("layernorm_fast_fwd_v%d", nv))
		f.vbwd[i] = lfvKernel{fn: be.kernel(fmt.Sprintf("layernorm_fast_bwd_vs%d", nv)), warps: lfvWarps(nv)}
		f.vbwdSum[i] = be.kernel(fmt.Sprintf("layernorm_fast_bwd_vp%d", nv))
		f.vbwdRecomp[i] = be.kernel(fmt.Sprintf("layernorm_fast_bwd_vr%d", nv))
		f.pfwd[i] = lfvKernel{fn: be.kernel(fmt.Sprintf("layernorm_fast_fwd_p%d", nv)), warps: lfvMaxWarps}
		f.pfwdPlain[i] = lfvKernel{fn: be.kernel(fmt.Sprintf("layernorm_fast_fwd_pl%d", nv)), warps: lfvMaxWarps}
		f.pfwdKept[i] = lfvKernel{fn: be.kernel(fmt.Sprintf("layernorm_fast_fwd_pk%d", nv)), warps: lfvMaxWarps}
		f.vbwdSumKept[i] = be.kernel(fmt.Sprintf("layernorm_fast_bwd_vpk%d", nv))
		f.vbwdRecKept[i] = be.kernel(fmt.Sprintf("layernorm_fast_bwd_vrk%d", nv))
	}
	// The _w backwards add lfw_finish's 4 static bytes to the column sums' 48 KiB of
	// dynamic shared memory at dim 128·NV: past the 48 KiB a launch gets without
	// opting in, so the launch is refused (CUDA_ERROR_INVALID_VALUE) unless the
	// kernel's dynamic limit is raised to what it asks.
	for i, nv := range lfvNVs {
		need := uintptr(lfvShared(lfvWarps(nv), 128*nv))
		for _, fn := range []uintptr{f.wbwd[i], f.wbwdSum[i], f.wbwdRecomp[i]} {
			must(be.drv.check("cuFuncSetAttribute(layernorm_fast_bwd_w*, max dynamic shared)",
				call(be.drv.cuFuncSetAttribute, fn, funcAttrMaxDynamicShared, need)))
		}
	}
	var occ uintptr
	if bind(be.drv.handle, "libcuda", []symbol{{"cuOccupancyMaxActiveBlocksPerMultiprocessor", &occ}}) == nil {
		f.occupancy = occ
	}
	if be.graph.mode == graphOff {
		// Held for the Backend's life (never scoped): every _w backward launch uses
		// it, in stream order, and leaves it zero.
		a, err := be.alloc(4 * lfwCounters)
		if err != nil {
			panic(fmt.Errorf("cuda: layernorm_fast counters: %w", err))
		}
		be.memset32(a.ptr, 0, lfwCounters)
		f.cnt = a
	}
	f.legacy = !be.lnWOn
	f.pipe = be.lnPOn
	f.recompute = !be.lnRecomputeOff
	be.lazy.lnFast = f
	return f
}

// lfwCounters is lfw_finish's counter count: one per class of partials (block index
// mod 32, finish_v's thread rows) and one for the classes.
const lfwCounters = 33

// lfvWarps is the float4 backward's warps per block for NV float4s per lane: its
// per-warp column sums (3·dim floats) stay within the 48 KiB of shared memory a
// launch gets without opting in.
func lfvWarps(nv int) int { return min(lfvMaxWarps, 48*1024/(3*128*nv*4)) }

// lfvShared is the float4 backward's dynamic shared memory: one slice of 3·dim floats
// per warp.
func lfvShared(warps, dim int) int { return warps * 3 * dim * 4 }

// blocksPerSM is how many blocks of k fit on one SM with shared bytes each, as the
// driver computes it (registers, shared memory, threads); 2 when it cannot be asked.
func (be *Backend) blocksPerSM(f *lnFastFns, k *lfvKernel, shared int) int {
	if k.perSM > 0 {
		return k.perSM
	}
	// A hint only: the per-warp column sums want shared memory rather than L1 (γ is
	// the only tensor read twice, 2 KiB at dim 512).
	_ = be.drv.check("cuFuncSetAttribute(carveout)", call(be.drv.cuFuncSetAttribute, k.fn, funcAttrCarveout, 100))
	return be.residentPerSM(f, k, shared)
}

// residentPerSM is blocksPerSM without the carveout hint (the forwards read γ, β and ω
// through L1 and use no shared memory).
func (be *Backend) residentPerSM(f *lnFastFns, k *lfvKernel, shared int) int {
	if k.perSM > 0 {
		return k.perSM
	}
	n := int32(0)
	if f.occupancy == 0 || be.drv.check("cuOccupancyMaxActiveBlocksPerMultiprocessor",
		call(f.occupancy, uintptr(unsafe.Pointer(&n)), k.fn, uintptr(32*k.warps), uintptr(shared))) != nil || n < 1 {
		n = 2
	}
	k.perSM = int(n)
	return k.perSM
}

// lfpGrid is the pipelined forward's grid for rows: the fewest rows per warp, k, that
// the blocks resident at once can take in one wave, then just enough blocks for k rows
// per warp, so that every warp gets k or k−1 rows (a wave of equal warps: no tail of
// warps still on their last row), and each of them after its first is requested while
// the previous one is reduced and stored. f.pipeRows sets k instead (1: vfwd's one row
// per warp and grid).
func (be *Backend) lfpGrid(f *lnFastFns, k *lfvKernel, rows int) int {
	per := f.pipeRows
	if per <= 0 {
		slots := be.residentPerSM(f, k, 0) * be.info.SMs * k.warps
		per = (rows + slots - 1) / slots
	}
	return max(1, (rows+per*k.warps-1)/(per*k.warps))
}

// lfvNVs are the float4 kernels' float4s per lane: dim ≤ 128·NV.
var lfvNVs = [...]int{1, 2, 4, 8}

const (
	lfvMaxDim   = 128 * 8
	lfvMaxWarps = 8 // LFV_THREADS / 32
)

// lfvIndex is the index in lfvNVs of the smallest NV with 128·NV ≥ dim.
func lfvIndex(dim int) int {
	for i, nv := range lfvNVs {
		if 128*nv >= dim {
			return i
		}
	}
	panic(fmt.Sprintf("cuda: layernorm_fast: dim %d over %d", dim, lfvMaxDim))
}

// lfvShape says whether the float4 kernels take rows of dim elements with these
// tensors: dim a multiple of 4 up to lfvMaxDim, each float32 tensor 16-byte aligned
// (rows then are too), a 16-bit one 8-byte aligned (nil ones are not read).
func (f *lnFastFns) lfvShape(dim int, bufs ...kernels.Buffer) bool {
	if f.scalar || dim%4 != 0 || dim > lfvMaxDim {
		return false
	}
	for _, b := range bufs {
		if h := halfOf(b); h != nil {
			if h.dptr()%8 != 0 {
				return false
			}
		} else if addr(b)%16 != 0 {
			return false
		}
	}
	return true
}

// lnFastDim says whether the float kernels take rows of dim elements.
func lnFastDim(dim int) bool { return dim >= 1 && dim <= lfMaxDim }

// lfIndex is the index in lfNCs of the smallest NC with 32·NC ≥ dim.
func lfIndex(dim int) int {
	for i, nc := range lfNCs {
		if 32*nc >= dim {
			return i
		}
	}
	panic(fmt.Sprintf("cuda: layernorm_fast: dim %d over %d", dim, lfMaxDim))
}

// lfGrid is the number of blocks for rows: one row per warp, at most two blocks per
// SM for the backward (whose partials the finish reads), more for the forward.
func (be *Backend) lfGrid(rows, perSM int) int {
	return max(1, min((rows+lfWarps-1)/lfWarps, perSM*be.info.SMs))
}

// residualLayerNormFast is ResidualLayerNorm on layernorm_fast_fwd, or with dr
// ResidualLayerNormDropout on layernorm_fast_fwd_drop; the float4 kernel where the
// shape allows. With y16 (a 16-bit buffer; nil: none) the float4 kernel also writes
// RN16(y) into it; the result says whether y16 was written (false: the scalar kernels
// ran, or y16 was not aligned for the float4 kernel's stores, and the caller rounds y).
// rows, dim ≥ 1 and lnFastDim(dim).
func (be *Backend) residualLayerNormFast(z, y, y16, x, branch, omega kernels.Buffer, alpha float32, gamma, beta kernels.Buffer, rows, dim int, eps float32, dr *resDrop) bool {
	wrote, _ := be.residualLayerNormFastKept(z, y, y16, nil, x, branch, omega, alpha, gamma, beta, rows, dim, eps, dr)
	return wrote
}

// residualLayerNormFastKept is residualLayerNormFast that, with kept (nil: none; 32·rows
// words) and where the pipelined forward runs with the dropout and takes y16, launches
// its kept form, which also stores the mask's keep bits there (the same outputs). The
// second result says whether it did.
func (be *Backend) residualLayerNormFastKept(z, y, y16, kept, x, branch, omega kernels.Buffer, alpha float32, gamma, beta kernels.Buffer, rows, dim int, eps float32, dr *resDrop) (bool, bool) {
	defer be.enter()()
	f := be.lnFns()
	be.prm.reset().ptr(addr(z)).ptr(addr(y)).ptr(addr(x)).ptr(addr(branch)).ptr(addr(omega)).f32(alpha).
		ptr(addr(gamma)).ptr(addr(beta)).i32(rows).i32(dim).f32(eps)
	// y16 does not take part in the choice of kernel: y's bits must be those of the
	// call without it.
	if f.lfvShape(dim, z, y, x, branch, omega, gamma, beta) {
		drop := 0
		if dr != nil {
			drop = 1
		} else {
			dr = &resDrop{keep: 1}
		}
		be.prm.i32(drop)
		dr.args(be.prm)
		y16p, format := uint64(0), xfOutF32
		if h := halfOf(y16); h != nil && f.lfvShape(dim, y16) {
			y16p, format = h.dptr(), be.outFormat()
		}
		be.prm.ptr(y16p).i32(format)
		// A row per warp: capping the grid at 2–8 blocks per SM, each warp looping
		// over rows, measured the same (23.1–23.9 µs at 8000×512). The pipelined
		// forward loops too, but with the next row's loads in flight.
		idx := lfvIndex(dim)
		nb := (rows + lfvMaxWarps - 1) / lfvMaxWarps
		fn := f.wfwd[idx]
		if f.legacy {
			fn = f.vfwd[idx]
		}
		keeps := false
		if f.pipe {
			k := &f.pfwd[idx]
			if f.pipePlain {
				k = &f.pfwdPlain[idx]
			}
			keeps = kept != nil && kept.Len() >= 32*rows && !f.pipePlain && drop == 1 && y16p != 0
			if keeps {
				k = &f.pfwdKept[idx]
				be.prm.ptr(addr(kept))
				f.keptFwd++
			}
			fn, nb = k.fn, be.lfpGrid(f, k, rows)
			f.piped++
		}
		be.run(fn, [3]uint32{uint32(nb), 1, 1}, 32*lfvMaxWarps, 0)
		return y16p != 0, keeps
	}
	fn := f.fwd[lfIndex(dim)]
	if dr != nil {
		dr.args(be.prm)
		fn = f.fwdDrop[lfIndex(dim)]
	}
	be.run(fn, [3]uint32{uint32(be.lfGrid(rows, 32)), 1, 1}, lfThreads, 0)
	return false, false
}

// residualLayerNormBackwardFast is ResidualLayerNormBackward on layernorm_fast_bwd and
// its finish, or with dr ResidualLayerNormBackwardDropout: on the float4 kernel, which
// writes dbranch itself (float32 or 16-bit), where the shape allows, else the scalar
// kernel and ApplyDropout. rows, dim ≥ 1, lnFastDim(dim), and dz, dbranch or a column
// gradient is wanted.
func (be *Backend) residualLayerNormBackwardFast(dz, dbranch, dgamma, dbeta, domega, dy, z, x, gamma kernels.Buffer, alpha float32, rows, dim int, eps float32, dr *resDrop) {
	if dr == nil {
		dbranch = nil
	}
	wantCols := dgamma != nil || dbeta != nil || domega != nil
	if !be.residualLayerNormBackwardVec(dz, dbranch, dgamma, dbeta, domega, dy, z, x, gamma, alpha, rows, dim, eps, dr) {
		// The scalar backward with the mask drawn inside measured 110 µs at 8000×512
		// (H200, bf16) against 77 µs for the plain one plus dropout_apply, so here the
		// dropout is its own pass. Same bits either way (the contract is the unfused
		// sequence).
		if dbranch != nil && dz == nil {
			dz = be.AllocUninit(rows * dim) // ApplyDropout reads dz
		}
		if dz != nil || wantCols {
			be.residualLayerNormBackwardScalar(dz, dgamma, dbeta, domega, dy, z, x, gamma, alpha, rows, dim, eps)
		}
		if dbranch != nil {
			be.ApplyDropout(dbranch, dz, dr.p, dr.seed)
		}
	}
}

// residualLayerNormBackwardVec runs the float4 backward and its finish, if the shape
// allows (else it returns false, having done nothing).
func (be *Backend) residualLayerNormBackwardVec(dz, dbranch, dgamma, dbeta, domega, dy, z, x, gamma kernels.Buffer, alpha float32, rows, dim int, eps float32, dr *resDrop) bool {
	return be.lfvBackward(lfvPlain, dz, dbranch, dgamma, dbeta, domega, kernels.ResidualSum{D: dy}, z, x, nil, gamma, alpha, rows, dim, eps, dr)
}

// lfvStepForm says whether a float4 backward launch takes its kernel's LFV_STEP body
// (layernorm_fast.cu: the _vs, _vp and _vr kernels of the legacy family and their
// kept forms): the row fills the lanes (dim = 128·nv), dz, dbranch and x are set (x:
// the address passed, 0 without dω), dbranch is 16-bit, the dropout is on, for _vp
// and _vr the sum's second part and its ω are set, and for _vr the sub-layer's ω. It mirrors the kernels' conditions, so that xform bench can say whether
// the training step runs the specialized bodies.
func lfvStepForm(mode lfvMode, legacy bool, dim, nv int, dz, dbranch, x, dz2, omega2, omega uint64, half bool, threshold uint64) bool {
	if !legacy || dim != 128*nv || dz == 0 || dbranch == 0 || x == 0 || !half || threshold == 0 {
		return false
	}
	switch mode {
	case lfvPlain:
		return true
	case lfvSum:
		return dz2 != 0 && omega2 != 0
	}
	return dz2 != 0 && omega2 != 0 && omega != 0 // the recomputing _vr and _vrk kernels
}

// lfvMode picks the float4 backward: the plain one (dy alone), the one that forms a
// kernels.ResidualSum as it loads it, or that one recomputing z from x and the branch.
type lfvMode int

const (
	lfvPlain lfvMode = iota
	lfvSum
	lfvRecomp
)

// lfvBackward runs a float4 backward and its finish, if the shape allows (else it
// returns false, having done nothing). zb is z, or the branch output for lfvRecomp
// (then omega and alpha are the sub-layer's, and dr, never nil, its dropout, which z
// was formed with even when dbranch is nil). dy.D and dy.DZ must be float32.
func (be *Backend) lfvBackward(mode lfvMode, dz, dbranch, dgamma, dbeta, domega kernels.Buffer, dy kernels.ResidualSum, zb, x, omega, gamma kernels.Buffer, alpha float32, rows, dim int, eps float32, dr *resDrop) bool {
	return be.lfvBackwardKept(mode, dz, dbranch, dgamma, dbeta, domega, dy, zb, x, omega, gamma, nil, alpha, rows, dim, eps, dr)
}

// lfvBackwardKept is lfvBackward that, in lfvSum or lfvRecomp mode with kept (nil: none;
// the keep bits residualLayerNormFastKept stored for the same rows and dropout) and a
// dbranch with the dropout on, launches layernorm_fast_bwd_vpk* or _vrk*, which read
// them instead of drawing the mask (the same outputs).
func (be *Backend) lfvBackwardKept(mode lfvMode, dz, dbranch, dgamma, dbeta, domega kernels.Buffer, dy kernels.ResidualSum, zb, x, omega, gamma, kept kernels.Buffer, alpha float32, rows, dim int, eps float32, dr *resDrop) bool {
	defer be.enter()()
	f := be.lnFns()
	if !f.lfvShape(dim, dz, dbranch, dy.D, dy.DZ, dy.Omega, zb, x, omega, gamma) {
		return false
	}
	idx := lfvIndex(dim)
	k := &f.vbwd[idx]
	shared := lfvShared(k.warps, dim)
	// Every mode on the plain kernel's grid: the same partials, so the same column
	// sums, whichever kernel ran (their occupancy may differ; nothing here needs the
	// blocks resident together).
	nb := max(1, min((rows+k.warps-1)/k.warps, be.blocksPerSM(f, k, shared)*be.info.SMs))
	wantCols := dgamma != nil || dbeta != nil || domega != nil
	// The _w kernels finish the column sums themselves where the counters exist; the
	// 32 rows after the partials hold lfw_finish's class sums.
	finish := wantCols && (f.legacy || f.cnt == nil)
	parts := nb
	if wantCols && !finish {
		parts += 32
	}
	// Scoped: a training step gives the partials back to the pool when it ends instead
	// of when the collector notices, so the next call does not miss the pool (a miss
	// frees cached blocks, and cuMemFree waits for the device).
	part := be.scoped(be.newBuffer(parts * 3 * dim))
	xp := uint64(0)
	if domega != nil || mode == lfvRecomp {
		xp = addr(x)
	}
	dbp, format := uint64(0), xfOutF32
	if h := halfOf(dbranch); h != nil {
		dbp, format = h.dptr(), be.outFormat()
	} else {
		dbp = addr(dbranch)
	}
	if dr == nil {
		dr = &resDrop{keep: 1}
	}
	f.bwdCalls++
	if lfvStepForm(mode, f.legacy, dim, lfvNVs[idx], addr(dz), dbp, xp, addr(dy.DZ), addr(dy.Omega), addr(omega), format != xfOutF32, dr.threshold) {
		f.bwdStep++
	}
	fn := k.fn
	be.prm.reset().ptr(part.dptr()).ptr(addr(dz)).ptr(dbp).i32(format).ptr(addr(dy.D))
	keeps := false
	switch mode {
	case lfvSum:
		fn = f.vbwdSum[idx]
		keeps = kept != nil && kept.Len() >= 32*rows && dbranch != nil && dr.threshold != 0 && f.legacy
		if keeps {
			fn = f.vbwdSumKept[idx]
			f.keptBwd++
		}
		if !f.legacy {
			fn = f.wbwdSum[idx]
		}
		be.prm.ptr(addr(dy.DZ)).ptr(addr(dy.Omega)).f32(dy.Alpha).ptr(addr(zb)).ptr(xp)
	case lfvRecomp:
		fn = f.vbwdRecomp[idx]
		keeps = kept != nil && kept.Len() >= 32*rows && dbranch != nil && dr.threshold != 0 && f.legacy
		if keeps {
			fn = f.vbwdRecKept[idx]
			f.keptBwd++
		}
		if !f.legacy {
			fn = f.wbwdRecomp[idx]
		}
		be.prm.ptr(addr(dy.DZ)).ptr(addr(dy.Omega)).f32(dy.Alpha).ptr(addr(zb)).ptr(xp).ptr(addr(omega)).f32(alpha)
	default:
		if !f.legacy {
			fn = f.wbwd[idx]
		}
		be.prm.ptr(addr(zb)).ptr(xp)
	}
	be.prm.ptr(addr(gamma)).i32(rows).i32(dim).f32(eps)
	dr.args(be.prm)
	if keeps {
		be.prm.ptr(addr(kept))
	}
	if !f.legacy {
		cnt := uint64(0)
		if wantCols && !finish {
			cnt = f.cnt.ptr
		}
		be.prm.ptr(cnt).ptr(addr(dgamma)).ptr(addr(dbeta)).ptr(addr(domega)).f32(alpha)
		if cnt != 0 {
			f.wfinished++
		}
	}
	be.run(fn, [3]uint32{uint32(nb), 1, 1}, uint32(32*k.warps), uint32(shared))
	if finish && !be.deferLNFinish(addr(dgamma), addr(dbeta), addr(domega), part, nb, dim, alpha) {
		be.prm.reset().ptr(addr(dgamma)).ptr(addr(dbeta)).ptr(addr(domega)).ptr(part.dptr()).i32(nb).i32(dim).f32(alpha)
		be.runBlock(f.vfinish, [3]uint32{uint32((3*dim + 31) / 32), 1, 1}, [3]uint32{32, 32, 1}, 0)
	}
	return true
}

// residualLayerNormBackwardScalar is ResidualLayerNormBackward on layernorm_fast_bwd
// and its finish.
func (be *Backend) residualLayerNormBackwardScalar(dz, dgamma, dbeta, domega, dy, z, x, gamma kernels.Buffer, alpha float32, rows, dim int, eps float32) {
	defer be.enter()()
	f := be.lnFns()
	nb := be.lfGrid(rows, 2)
	part := be.scoped(be.newBuffer(nb * 3 * dim))
	xp := uint64(0)
	if domega != nil {
		xp = addr(x)
	}
	be.prm.reset().ptr(part.dptr()).ptr(addr(dz)).
		ptr(addr(dy)).ptr(addr(z)).ptr(xp).ptr(addr(gamma)).i32(rows).i32(dim).f32(eps)
	be.run(f.bwd[lfIndex(dim)], [3]uint32{uint32(nb), 1, 1}, lfThreads, 0)
	if dgamma == nil && dbeta == nil && domega == nil {
		return
	}
	be.prm.reset().ptr(addr(dgamma)).ptr(addr(dbeta)).ptr(addr(domega)).ptr(part.dptr()).i32(nb).i32(dim).f32(alpha)
	be.runBlock(f.finish, [3]uint32{uint32((3*dim + 31) / 32), 1, 1}, [3]uint32{32, 8, 1}, 0)
}
