package cuda

import (
	"fmt"

	"github.com/xform-dev/xform/kernels"

	"math"
	"unsafe"
)

// maxParams bounds a kernel's parameter count (the largest, attention_mma2_bwd, has 32;
// one more argument panics with an index out of range here, not in the driver).
const maxParams = 40

// params packs kernel arguments for cuLaunchKernel, which takes an array of pointers,
// one per parameter, each pointing at the value. Every value sits in its own 8-byte
// slot; the driver copies only the parameter's own size from it, and on a
// little-endian machine a 4-byte int or float is the slot's first bytes. The slots and
// the pointer array live in one heap object owned by the Backend (reused under its
// lock), so nothing moves or is freed while the driver reads them.
type params struct {
	vals [maxParams]uint64
	ptrs [maxParams]unsafe.Pointer
	n    int
}

func newParams() *params {
	p := &params{}
	for i := range p.ptrs {
		p.ptrs[i] = unsafe.Pointer(&p.vals[i])
	}
	return p
}

func (p *params) reset() *params { p.n = 0; return p }

func (p *params) u64(v uint64) *params {
	p.vals[p.n] = v
	p.n++
	return p
}

func (p *params) ptr(v uint64) *params  { return p.u64(v) }
func (p *params) i64(v int) *params     { return p.u64(uint64(int64(v))) }
func (p *params) i32(v int) *params     { return p.u64(uint64(uint32(int32(v)))) }
func (p *params) f32(v float32) *params { return p.u64(uint64(math.Float32bits(v))) }

// views appends each view as the kernels take a strided operand: its first element's
// address, then its batch and row strides (elements).
func (p *params) views(vs ...kernels.View) *params {
	for _, v := range vs {
		p.ptr(viewAddr(v)).i64(v.BatchStride).i64(v.RowStride)
	}
	return p
}

// grid1D picks a grid for a grid-stride elementwise kernel over n items with block
// threads: enough blocks to fill the device a few times over, never more than needed.
func grid1D(n int64, block, sms int) uint32 {
	if n <= 0 {
		return 1
	}
	g := (n + int64(block) - 1) / int64(block)
	limit := int64(max(sms, 1) * 32)
	return uint32(min(g, limit))
}

// launch enqueues fn on stream (0: the legacy default stream) with the packed
// parameters.
func (d *driver) launch(fn uintptr, grid [3]uint32, block [3]uint32, shared uint32, p *params, stream uintptr) error {
	return d.check("cuLaunchKernel", call(d.cuLaunchKernel, fn,
		uintptr(grid[0]), uintptr(grid[1]), uintptr(grid[2]),
		uintptr(block[0]), uintptr(block[1]), uintptr(block[2]),
		uintptr(shared), stream, uintptr(unsafe.Pointer(&p.ptrs[0])), 0))
}

// cuLaunchAttr is CUlaunchAttribute: the attribute's id, padding to 8 bytes, and its
// value, a 64-byte union (cuda.h).
type cuLaunchAttr struct {
	id  uint32
	_   [4]byte
	val [64]byte
}

// cuLaunchConfig is CUlaunchConfig (cuda.h, 56 bytes on 64-bit hosts).
type cuLaunchConfig struct {
	gridX, gridY, gridZ, blockX, blockY, blockZ, shared uint32
	_                                                   [4]byte
	stream                                              uintptr
	attrs                                               *cuLaunchAttr
	numAttrs                                            uint32
	_                                                   [4]byte
}

// cuLaunchAttrProgrammaticSerialization is CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION:
// with the value 1 the launch may begin before the previous kernel of the stream has
// finished (the kernel's griddepcontrol.wait orders its memory accesses: XF_PDL_ENTRY).
const cuLaunchAttrProgrammaticSerialization = 6

// pdlLaunch is the Backend's reusable cuLaunchKernelEx argument (one heap object, so the
// driver reads memory that neither moves nor is freed, as with params).
type pdlLaunch struct {
	cfg  cuLaunchConfig
	attr cuLaunchAttr
}

func newPDLLaunch() *pdlLaunch {
	l := &pdlLaunch{}
	l.attr.id = cuLaunchAttrProgrammaticSerialization
	l.attr.val[0] = 1 // programmaticStreamSerializationAllowed, an int
	l.cfg.attrs, l.cfg.numAttrs = &l.attr, 1
	return l
}

// launchPDL is launch with programmatic stream serialization allowed (see
// cuLaunchAttrProgrammaticSerialization); fn must open with XF_PDL_ENTRY.
func (d *driver) launchPDL(l *pdlLaunch, fn uintptr, grid [3]uint32, block [3]uint32, shared uint32, p *params, stream uintptr) error {
	l.cfg.gridX, l.cfg.gridY, l.cfg.gridZ = grid[0], grid[1], grid[2]
	l.cfg.blockX, l.cfg.blockY, l.cfg.blockZ = block[0], block[1], block[2]
	l.cfg.shared, l.cfg.stream = shared, stream
	return d.check("cuLaunchKernelEx", call(d.cuLaunchKernelEx, uintptr(unsafe.Pointer(&l.cfg)), fn,
		uintptr(unsafe.Pointer(&p.ptrs[0])), 0))
}

func (d *driver) loadModule(image []byte) (uintptr, error) {
	var m uintptr
	err := d.check("cuModuleLoadData", call(d.cuModuleLoadData, uintptr(unsafe.Pointer(&m)), uintptr(unsafe.Pointer(&image[0]))))
	return m, err
}

// kernel finds a kernel by name in any of the Backend's modules (for the kernel sets
// looked up on first use, lazyKernels). The caller holds the Backend.
func (be *Backend) kernel(name string) uintptr {
	var lastErr error
	for _, m := range be.mods {
		p, err := be.drv.function(m, name)
		if err == nil {
			be.pdlFns[p] = true
			if be.profile != nil {
				be.kernelName(p) // fills the map
				be.kernelNames[p] = name
			}
			return p
		}
		lastErr = err
	}
	panic(fmt.Errorf("cuda: kernel %s not found in any module: %w", name, lastErr))
}

func (d *driver) function(mod uintptr, name string) (uintptr, error) {
	var f uintptr
	err := d.check("cuModuleGetFunction("+name+")", call(d.cuModuleGetFunction, uintptr(unsafe.Pointer(&f)), mod, uintptr(unsafe.Pointer(cstr(name)))))
	return f, err
}
