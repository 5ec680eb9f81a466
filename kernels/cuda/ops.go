package cuda

import (
	"fmt"
	"unsafe"

	"github.com/xform-dev/xform/kernels"
)

// Thread counts: 256 for elementwise and row kernels (rows of a Transformer are 512 to
// 4096 wide, and 8 warps keep enough loads in flight), 128 for attention (head
// dimensions are 64 to 128).
const (
	blockElem = 256
	blockRow  = 256
	blockAttn = 128
)

// dev unwraps a buffer made by this backend; nil stays nil (optional arguments).
func dev(b kernels.Buffer) *buffer {
	if b == nil {
		return nil
	}
	x, ok := b.(*buffer)
	if !ok {
		panic(fmt.Sprintf("cuda backend: foreign buffer %T", b))
	}
	return x
}

// addr is the device address of b (0 for nil).
func addr(b kernels.Buffer) uint64 {
	x := dev(b)
	if x == nil {
		return 0
	}
	return x.dptr()
}

func must(err error) {
	if err != nil {
		panic(err)
	}
}

// run launches a kernel whose parameters are in be.prm.
func (be *Backend) run(fn uintptr, grid [3]uint32, block uint32, shared uint32) {
	be.launchKernel(fn, grid, [3]uint32{block, 1, 1}, shared)
}

// elem launches fn over n items with a grid-stride 1-D grid.
func (be *Backend) elem(fn uintptr, n int64) {
	be.run(fn, [3]uint32{grid1D(n, blockElem, be.info.SMs), 1, 1}, blockElem, 0)
}

// rowsGrid is the grid of a block-per-row kernel.
func (be *Backend) rowsGrid(rows int) [3]uint32 {
	return [3]uint32{uint32(min(rows, 65535*8)), 1, 1}
}

// stage copies host bytes into the backend's staging block for slot and returns its
// device address. The copy is ordered on the default stream after every kernel queued
// before it, so overwriting the block that an earlier kernel reads is safe.
func (be *Backend) stage(slot int, p unsafe.Pointer, bytes int) uint64 {
	return be.stageCap(slot, p, bytes, bytes)
}

// stageCap is stage for data whose length varies between steps of the same shape (a
// graphed step reserves capacity bytes for it; see upload).
func (be *Backend) stageCap(slot int, p unsafe.Pointer, bytes, capacity int) uint64 {
	if bytes == 0 {
		return 0
	}
	if be.graph.mode != graphOff {
		a := be.arenaAlloc(uint64(max(bytes, capacity)))
		be.upload(a.ptr, p, bytes, capacity)
		return a.ptr
	}
	a := be.scratch[slot]
	if a == nil || a.bytes < uint64(bytes) {
		if a != nil {
			must(be.drv.memFree(a.ptr)) // cuMemFree waits for kernels still reading it
		}
		n := sizeClass(uint64(max(bytes, 4096)) * 2)
		ptr, err := be.drv.memAlloc(n)
		if err != nil {
			free, total, _ := be.drv.memInfo()
			panic(&OOMError{Bytes: n, Free: free, Total: total, Err: err})
		}
		a = &allocation{ptr: ptr, bytes: n}
		be.scratch[slot] = a
	}
	must(be.drv.htodQueued(a.ptr, p, uint64(bytes)))
	return a.ptr
}

func (be *Backend) stageInts(slot int, v []int32) uint64 {
	if len(v) == 0 {
		return 0
	}
	return be.stage(slot, unsafe.Pointer(&v[0]), 4*len(v))
}

const (
	slotIDs = iota
	slotKV
	slotPad
	slotCSR        // EmbedBackward's rows sorted by id
	slotTargets    // LabelSmoothedLoss's targets
	slotList       // buffer descriptors of the list reductions
	slotDW         // deferred weight gradients' address arrays (dw_deferred.go)
	slotDWBias     // a single deferred product's bias-gradient address arrays
	slotFinishLN   // deferred LayerNorm finishes' jobs (finish_deferred.go)
	slotFinishBias // deferred bias finishes' jobs
	numSlots
)

// newBuffer allocates n elements (at least one byte of device memory).
func (be *Backend) newBuffer(n int) *buffer {
	if n < 0 {
		panic(fmt.Sprintf("cuda backend: allocation of %d elements", n))
	}
	a, err := be.alloc(uint64(n) * 4)
	if err != nil {
		panic(err)
	}
	return &buffer{a: a, n: n}
}

// Alloc implements kernels.Backend.
func (be *Backend) Alloc(n int) kernels.Buffer {
	defer be.enter()()
	b := be.scoped(be.newBuffer(n))
	if n > 0 {
		be.memset32(b.dptr(), 0, uint64(n))
	}
	return b
}

// AllocUninit implements kernels.UninitAllocator: Alloc without the memset.
func (be *Backend) AllocUninit(n int) kernels.Buffer {
	defer be.enter()()
	b := be.scoped(be.newBuffer(n))
	if be.poison && n > 0 {
		be.memset32(b.dptr(), 0x7fc00000, uint64(n)) // float32 quiet NaN
	}
	return b
}

// Upload implements kernels.Backend.
func (be *Backend) Upload(v []float32) kernels.Buffer {
	defer be.enter()()
	b := be.scoped(be.newBuffer(len(v)))
	if len(v) > 0 {
		be.upload(b.dptr(), unsafe.Pointer(&v[0]), 4*len(v), 4*len(v))
	}
	return b
}

// Download implements kernels.Backend. It waits for the work that writes b.
func (be *Backend) Download(dst []float32, b kernels.Buffer) {
	x := dev(b)
	if len(dst) != x.n {
		panic(fmt.Sprintf("cuda backend: download of %d elements into %d", x.n, len(dst)))
	}
	if len(dst) == 0 {
		return
	}
	defer be.enter()()
	be.notGraphed("Download")
	must(be.drv.dtoh(unsafe.Pointer(&dst[0]), x.dptr(), uint64(4*len(dst))))
}

// Slice implements kernels.Backend.
func (be *Backend) Slice(b kernels.Buffer, off, n int) kernels.Buffer {
	x := dev(b)
	if off < 0 || n < 0 || off+n > x.n {
		panic(fmt.Sprintf("cuda backend: slice [%d,%d) of %d elements", off, off+n, x.n))
	}
	return &buffer{a: x.a, off: x.off + off, n: n}
}

// Copy2D implements kernels.Backend.
func (be *Backend) Copy2D(dst kernels.Buffer, dOff, dStride int, src kernels.Buffer, sOff, sStride int, rows, cols int) {
	if rows == 0 || cols == 0 {
		return
	}
	defer be.enter()()
	be.prm.reset().ptr(addr(dst) + uint64(dOff)*4).i64(dStride).ptr(addr(src) + uint64(sOff)*4).i64(sStride).i32(rows).i32(cols)
	be.elem(be.fn.copy2d, int64(rows)*int64(cols))
}

// GatherRows implements kernels.Backend.
func (be *Backend) GatherRows(dst kernels.Buffer, dStride int, src kernels.Buffer, sStride int, idx []int32, n int) {
	if len(idx) == 0 || n == 0 {
		return
	}
	defer be.enter()()
	ip := be.stageInts(slotIDs, idx)
	be.prm.reset().ptr(addr(dst)).i64(dStride).ptr(addr(src)).i64(sStride).ptr(ip).i32(len(idx)).i32(n)
	be.elem(be.fn.gatherRows, int64(len(idx))*int64(n))
}

// rowIndex is the CUDA backend's kernels.RowIndex: the entries in device memory of the
// step (a scoped buffer; the arena inside a graphed step).
type rowIndex struct {
	ptr     uint64
	n, srcs int
}

func (r *rowIndex) Len() int     { return r.n }
func (r *rowIndex) SrcRows() int { return r.srcs }

// RowIndex implements kernels.RowPacker: the entries checked here, then uploaded once.
func (be *Backend) RowIndex(idx []int32, srcRows int) kernels.RowIndex {
	for i, j := range idx {
		if int(j) >= srcRows {
			panic(fmt.Sprintf("cuda backend: RowIndex entry %d at %d past the source's %d rows", j, i, srcRows))
		}
	}
	r := &rowIndex{n: len(idx), srcs: srcRows}
	if len(idx) == 0 {
		return r
	}
	defer be.enter()()
	r.ptr = be.uploadStepInts(idx)
	return r
}

// uploadStepInts copies v (not empty) into device memory that lives as long as the
// running step's buffers and returns its address: the graph arena and a recorded
// upload inside a graphed step, else a scoped buffer. The caller holds the Backend.
func (be *Backend) uploadStepInts(v []int32) uint64 {
	bytes := 4 * len(v)
	if be.graph.mode != graphOff {
		a := be.arenaAlloc(uint64(bytes))
		be.upload(a.ptr, unsafe.Pointer(&v[0]), bytes, bytes)
		return a.ptr
	}
	b := be.scoped(be.newBuffer(len(v)))
	must(be.drv.htodQueued(b.dptr(), unsafe.Pointer(&v[0]), uint64(bytes)))
	return b.dptr()
}

// PackRows implements kernels.RowPacker: both buffers float32, or both 16-bit; the
// rows are copied as bytes (pack_rows_v in 16-byte words where the rows and bases
// allow, else pack_rows_h in 2-byte units).
func (be *Backend) PackRows(dst, src kernels.Buffer, ix kernels.RowIndex, width int) {
	r, ok := ix.(*rowIndex)
	if !ok {
		panic(fmt.Sprintf("cuda backend: PackRows with a foreign index %T", ix))
	}
	if r.n == 0 || width == 0 {
		return
	}
	var dp, sp uint64
	var dn, sn, size int
	switch dh, sh := halfOf(dst), halfOf(src); {
	case dh != nil && sh != nil:
		dp, sp, dn, sn, size = dh.dptr(), sh.dptr(), dh.n, sh.n, 2
	case dh == nil && sh == nil:
		dp, sp, dn, sn, size = addr(dst), addr(src), dev(dst).n, dev(src).n, 4
	default:
		panic(fmt.Sprintf("cuda backend: PackRows between a %T and a %T (formats differ)", dst, src))
	}
	if r.n*width > dn || r.srcs*width > sn {
		panic(fmt.Sprintf("cuda backend: PackRows of %d rows from %d rows of %d: buffers of %d and %d elements", r.n, r.srcs, width, dn, sn))
	}
	defer be.enter()()
	rowBytes := width * size
	fn, w := be.fn.packRowsH, rowBytes/2
	if rowBytes%16 == 0 && dp%16 == 0 && sp%16 == 0 {
		fn, w = be.fn.packRowsV, rowBytes/16
	}
	be.prm.reset().ptr(dp).ptr(sp).ptr(r.ptr).i32(r.n).i32(w)
	be.elem(fn, int64(r.n)*int64(w))
	be.packCalls++
}

// Gemm implements kernels.Backend with cublasSgemm in true fp32 (pedantic math), or
// on 16-bit operand copies with fp32 accumulation when the Precision says so.
func (be *Backend) Gemm(transA, transB bool, m, n, k int, alpha float32, a kernels.Buffer, lda int, b kernels.Buffer, ldb int, beta float32, c kernels.Buffer, ldc int) {
	if m == 0 || n == 0 {
		return
	}
	defer be.enter()()
	if be.precision != FP32 {
		be.gemmOp16(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
		return
	}
	be.sgemm(transA, transB, m, n, k, alpha, addr(a), lda, addr(b), ldb, beta, addr(c), ldc)
}

// Linear implements kernels.Backend: the bias is written first and the fp32 product
// added on top (beta = 1), as torch's addmm does. Against the CPU backend's float64
// accumulation this differs by fp32 rounding of the k-term sum (about √k·2⁻²⁴
// relative). With a 16-bit Precision the operands are rounded first and cuBLASLt adds
// the bias in the GEMM's epilogue (precision.go, cublaslt.go).
func (be *Backend) Linear(y, x, w, bias kernels.Buffer, m, n, k int) {
	if m == 0 || n == 0 {
		return
	}
	defer be.enter()()
	if be.precision != FP32 {
		be.linear16(y, x, w, bias, m, n, k)
		return
	}
	beta := float32(0)
	if bias != nil {
		be.prm.reset().ptr(addr(y)).ptr(addr(bias)).i32(m).i32(n)
		be.elem(be.fn.fillRows, int64(m)*int64(n))
		beta = 1
	}
	be.sgemm(false, true, m, n, k, 1, addr(x), k, addr(w), k, beta, addr(y), n)
}

// LayerNorm implements kernels.Backend.
func (be *Backend) LayerNorm(y, x, gamma, beta kernels.Buffer, rows, dim int, eps float32) {
	if rows == 0 {
		return
	}
	defer be.enter()()
	be.prm.reset().ptr(addr(y)).ptr(addr(x)).ptr(addr(gamma)).ptr(addr(beta)).i32(rows).i32(dim).f32(eps)
	be.run(be.fn.layernorm, be.rowsGrid(rows), blockRow, 0)
}

// Softmax implements kernels.Backend.
func (be *Backend) Softmax(y, x kernels.Buffer, rows, dim int) {
	be.rowKernel(be.fn.softmax, y, x, rows, dim)
}

// LogSoftmax implements kernels.Backend.
func (be *Backend) LogSoftmax(y, x kernels.Buffer, rows, dim int) {
	be.rowKernel(be.fn.logSoftmax, y, x, rows, dim)
}

func (be *Backend) rowKernel(fn uintptr, y, x kernels.Buffer, rows, dim int) {
	if rows == 0 {
		return
	}
	defer be.enter()()
	// Vocabulary rows are long (tens of thousands): more threads per row there.
	block := uint32(blockRow)
	if dim >= 8192 {
		block = 1024
	}
	be.prm.reset().ptr(addr(y)).ptr(addr(x)).i32(rows).i32(dim)
	be.run(fn, be.rowsGrid(rows), block, 0)
}

// Activate implements kernels.Backend.
func (be *Backend) Activate(y, x kernels.Buffer, act kernels.Activation) {
	xb, yb := dev(x), dev(y)
	kind := -1
	switch act {
	case kernels.ReLU:
		kind = 0
	case kernels.GELU:
		kind = 1
	case kernels.GELUAccurate:
		kind = 2
	case kernels.Tanh:
		kind = 3
	case kernels.Linear:
		if xb.dptr() != yb.dptr() && xb.n > 0 {
			defer be.enter()()
			be.copyDtoD(yb.dptr(), xb.dptr(), uint64(4*xb.n))
		}
		return
	default:
		panic(fmt.Sprintf("cuda backend: unknown activation %q", act))
	}
	if xb.n == 0 {
		return
	}
	defer be.enter()()
	be.prm.reset().ptr(yb.dptr()).ptr(xb.dptr()).i64(xb.n).i32(kind)
	be.elem(be.fn.activate, int64(xb.n))
}

// Embed implements kernels.Backend.
func (be *Backend) Embed(y, table kernels.Buffer, ids []int32, dim int, scale float32) {
	if len(ids) == 0 || dim == 0 {
		return
	}
	defer be.enter()()
	ip := be.stageInts(slotIDs, ids)
	be.prm.reset().ptr(addr(y)).ptr(addr(table)).ptr(ip).i32(len(ids)).i32(dim).f32(scale)
	be.elem(be.fn.embed, int64(len(ids))*int64(dim))
}

// AddRows implements kernels.Backend.
func (be *Backend) AddRows(y, table kernels.Buffer, rows []int32, dim int) {
	if len(rows) == 0 || dim == 0 {
		return
	}
	defer be.enter()()
	ip := be.stageInts(slotIDs, rows)
	be.prm.reset().ptr(addr(y)).ptr(addr(table)).ptr(ip).i32(len(rows)).i32(dim)
	be.elem(be.fn.addRows, int64(len(rows))*int64(dim))
}

// Residual implements kernels.Backend.
func (be *Backend) Residual(y, x, branch, omega kernels.Buffer, alpha float32, rows, dim int) {
	if rows == 0 || dim == 0 {
		return
	}
	defer be.enter()()
	be.prm.reset().ptr(addr(y)).ptr(addr(x)).ptr(addr(branch)).ptr(addr(omega)).f32(alpha).i32(rows).i32(dim)
	be.elem(be.fn.residual, int64(rows)*int64(dim))
}

// maxAttnShared is the dynamic shared memory attention may use without opting in to
// more (48 KiB less the kernel's static scratch).
const maxAttnShared = 48*1024 - 512

// Attention implements kernels.Backend. In the 16-bit precisions, the float kernel of
// attention_fast.go takes TK ≤ 128 and HeadDim ≤ 64 (decode steps included). Otherwise
// short key sequences (TK, HeadDim ≤ 64, more than one query row) take
// attention_tiled, a block per (query tile, head, batch); the rest the row kernel, a
// block per (query row, head, batch), whose row of scores lives in shared memory,
// which bounds TK+HeadDim to about 12k.
func (be *Backend) Attention(out, q, k, v kernels.View, a kernels.AttentionArgs) {
	if a.Batch == 0 || a.TQ == 0 || a.Heads == 0 {
		return
	}
	if be.precision != FP32 && be.attentionFast(out, q, k, v, a) {
		return
	}
	tiled := be.useTiledForward(a)
	shared := 4 * (a.HeadDim + a.TK)
	if !tiled && shared > maxAttnShared {
		panic(fmt.Sprintf("cuda backend: attention over %d keys exceeds the kernel's shared-memory bound", a.TK))
	}
	if a.Batch > 65535 || a.Heads > 65535 {
		panic(fmt.Sprintf("cuda backend: attention batch %d or heads %d over the grid limit", a.Batch, a.Heads))
	}
	defer be.enter()()
	var kvp, padp uint64
	if a.KVIndex != nil {
		kvp = be.stageInts(slotKV, a.KVIndex)
	}
	if len(a.KeyPadding) > 0 {
		// A Go bool is one byte holding 0 or 1, the layout the kernel reads.
		padp = be.stage(slotPad, unsafe.Pointer(&a.KeyPadding[0]), len(a.KeyPadding))
	}
	var head *buffer
	var headp uint64
	if a.Probs != nil {
		head = be.newBuffer(a.Batch * a.Heads * a.TQ * a.TK)
		headp = head.dptr()
	}
	if tiled {
		be.launchTiledForward(out, q, k, v, a, kvp, padp, headp, 0)
	} else {
		be.prm.reset().
			views(out, q, k, v).
			i32(a.Heads).i32(a.HeadDim).i32(a.TQ).i32(a.TK).f32(a.Scale).
			ptr(kvp).ptr(padp).i64(a.KeyPadStride).
			i32(boolInt(a.Causal)).i32(a.QueryOffset).
			ptr(headp).ptr(0) // no dropout mask at inference
		be.run(be.fn.attention, [3]uint32{uint32(a.TQ), uint32(a.Heads), uint32(a.Batch)}, blockAttn, uint32(shared))
	}
	if head != nil {
		n := a.TQ * a.TK
		be.prm.reset().ptr(addr(a.Probs)).ptr(headp).i32(a.Batch).i32(a.Heads).i64(n)
		be.elem(be.fn.meanHeads, int64(a.Batch)*int64(n))
	}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}
