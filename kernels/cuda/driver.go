package cuda

import (
	"fmt"
	"path/filepath"
	"sync/atomic"
	"time"
	"unsafe"
)

// MinDriverVersion is the oldest driver API accepted: CUDA 12.0. The versioned entry
// points used here are older than that, but the toolkit libraries we search for are
// CUDA 12 or 13 and refuse older drivers anyway.
const MinDriverVersion = 12000

// Device attributes read (CUdevice_attribute values from cuda.h).
const (
	attrMaxSharedPerBlock      = 8
	attrMultiprocessorCount    = 16
	attrL2CacheSize            = 38
	attrComputeCapabilityMajor = 75
	attrComputeCapabilityMinor = 76
	attrMaxSharedPerBlockOptin = 97
)

// driver holds the entry points of libcuda. The suffixed names are the 64-bit-size
// versions of cuda.h (the plain names are the old 32-bit interface).
type driver struct {
	path   string
	handle uintptr // the dlopen handle, for entry points bound later (graphs.go)
	// waited is the host time spent blocked on the device (synchronisations and
	// device-to-host copies, which wait for the queue), in nanoseconds: with the wall
	// time of a training update it says how much of it the host had nothing to do
	// (HostStats.DeviceWait).
	waited atomic.Int64

	cuInit, cuDriverGetVersion, cuGetErrorName, cuGetErrorString     uintptr
	cuDeviceGetCount, cuDeviceGet, cuDeviceGetName, cuDeviceTotalMem uintptr
	cuDeviceGetAttribute, cuDevicePrimaryCtxRetain                   uintptr
	cuDevicePrimaryCtxRelease, cuCtxSetCurrent, cuCtxSynchronize     uintptr
	cuMemAlloc, cuMemFree, cuMemGetInfo, cuMemsetD32                 uintptr
	cuMemcpyDtoH, cuMemcpyDtoD, cuMemcpyHtoDAsync                    uintptr
	cuModuleLoadData, cuModuleGetFunction, cuModuleUnload            uintptr
	cuLaunchKernel, cuFuncSetAttribute                               uintptr
	cuEventCreate, cuEventRecord, cuEventSynchronize, cuEventDestroy uintptr
	cuEventElapsedTime                                               uintptr
	// cuLaunchKernelEx (drivers of CUDA 11.6 on) is optional: bound after the rest, 0 when absent
	// (then no programmatic dependent launch, launch.go).
	cuLaunchKernelEx uintptr
}

func (d *driver) symbols() []symbol {
	return []symbol{
		{"cuInit", &d.cuInit}, {"cuDriverGetVersion", &d.cuDriverGetVersion},
		{"cuGetErrorName", &d.cuGetErrorName}, {"cuGetErrorString", &d.cuGetErrorString},
		{"cuDeviceGetCount", &d.cuDeviceGetCount}, {"cuDeviceGet", &d.cuDeviceGet},
		{"cuDeviceGetName", &d.cuDeviceGetName}, {"cuDeviceTotalMem_v2", &d.cuDeviceTotalMem},
		{"cuDeviceGetAttribute", &d.cuDeviceGetAttribute},
		{"cuDevicePrimaryCtxRetain", &d.cuDevicePrimaryCtxRetain},
		{"cuDevicePrimaryCtxRelease_v2", &d.cuDevicePrimaryCtxRelease},
		{"cuCtxSetCurrent", &d.cuCtxSetCurrent}, {"cuCtxSynchronize", &d.cuCtxSynchronize},
		{"cuMemAlloc_v2", &d.cuMemAlloc}, {"cuMemFree_v2", &d.cuMemFree},
		{"cuMemGetInfo_v2", &d.cuMemGetInfo}, {"cuMemsetD32_v2", &d.cuMemsetD32},
		{"cuMemcpyDtoH_v2", &d.cuMemcpyDtoH},
		{"cuMemcpyDtoD_v2", &d.cuMemcpyDtoD}, {"cuMemcpyHtoDAsync_v2", &d.cuMemcpyHtoDAsync},
		{"cuModuleLoadData", &d.cuModuleLoadData}, {"cuModuleGetFunction", &d.cuModuleGetFunction},
		{"cuModuleUnload", &d.cuModuleUnload},
		{"cuLaunchKernel", &d.cuLaunchKernel}, {"cuFuncSetAttribute", &d.cuFuncSetAttribute},
		{"cuEventCreate", &d.cuEventCreate}, {"cuEventRecord", &d.cuEventRecord},
		{"cuEventSynchronize", &d.cuEventSynchronize}, {"cuEventDestroy_v2", &d.cuEventDestroy},
		// cuEventElapsedTime_v2 exists only from 13.0; the old name still works there.
		{"cuEventElapsedTime", &d.cuEventElapsedTime},
	}
}

// loadDriver opens libcuda.so.1: first from XFORM_CUDA_LIB_DIR, then by soname
// (ld.so.cache and LD_LIBRARY_PATH, where drivers normally register themselves), then
// from the searched folders. It reports every place tried when none works.
func loadDriver(s Search) (*driver, error) {
	const soname = "libcuda.so.1"
	var candidates []string
	for _, dir := range s.OverrideDirs() {
		candidates = append(candidates, filepath.Join(dir, soname))
	}
	if s.Root == "" {
		candidates = append(candidates, soname)
	}
	dirs := s.Dirs()
	for _, dir := range dirs {
		candidates = append(candidates, filepath.Join(dir, soname))
	}
	var firstErr error
	for _, c := range candidates {
		if filepath.IsAbs(c) && !fileExists(c) {
			continue
		}
		h, err := dlopen(c)
		if err != nil {
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		d := &driver{path: c, handle: h}
		if err := bind(h, soname, d.symbols()); err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrOldDriver, c, err)
		}
		_ = bind(h, soname, []symbol{{"cuLaunchKernelEx", &d.cuLaunchKernelEx}})
		return d, nil
	}
	if firstErr != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoDriver, firstErr)
	}
	return nil, fmt.Errorf("%w: %s not found by the dynamic loader nor in %d folders", ErrNoDriver, soname, len(dirs))
}

// check turns a CUresult into an error naming the operation.
func (d *driver) check(op string, r int32) error {
	if r == 0 {
		return nil
	}
	return &Error{Op: op, Code: int(r), Name: d.errorName(r), Msg: d.errorString(r), Lib: "driver"}
}

func (d *driver) errorName(r int32) string {
	var p *byte
	if call(d.cuGetErrorName, uintptr(r), uintptr(unsafe.Pointer(&p))) != 0 {
		return fmt.Sprintf("CUresult(%d)", r)
	}
	return goString(p)
}

func (d *driver) errorString(r int32) string {
	var p *byte
	if call(d.cuGetErrorString, uintptr(r), uintptr(unsafe.Pointer(&p))) != 0 {
		return ""
	}
	return goString(p)
}

func (d *driver) init() error { return d.check("cuInit", call(d.cuInit, 0)) }

func (d *driver) version() (int, error) {
	var v int32
	err := d.check("cuDriverGetVersion", call(d.cuDriverGetVersion, uintptr(unsafe.Pointer(&v))))
	return int(v), err
}

func (d *driver) deviceCount() (int, error) {
	var n int32
	err := d.check("cuDeviceGetCount", call(d.cuDeviceGetCount, uintptr(unsafe.Pointer(&n))))
	return int(n), err
}

func (d *driver) device(ordinal int) (int32, error) {
	var dev int32
	err := d.check("cuDeviceGet", call(d.cuDeviceGet, uintptr(unsafe.Pointer(&dev)), uintptr(ordinal)))
	return dev, err
}

func (d *driver) deviceName(dev int32) (string, error) {
	buf := make([]byte, 256)
	if err := d.check("cuDeviceGetName", call(d.cuDeviceGetName, uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)), uintptr(dev))); err != nil {
		return "", err
	}
	return goString(&buf[0]), nil
}

func (d *driver) totalMem(dev int32) (uint64, error) {
	var n uint64
	err := d.check("cuDeviceTotalMem_v2", call(d.cuDeviceTotalMem, uintptr(unsafe.Pointer(&n)), uintptr(dev)))
	return n, err
}

func (d *driver) attribute(dev int32, attr int) (int, error) {
	var v int32
	err := d.check("cuDeviceGetAttribute", call(d.cuDeviceGetAttribute, uintptr(unsafe.Pointer(&v)), uintptr(attr), uintptr(dev)))
	return int(v), err
}

func (d *driver) retainPrimary(dev int32) (uintptr, error) {
	var ctx uintptr
	err := d.check("cuDevicePrimaryCtxRetain", call(d.cuDevicePrimaryCtxRetain, uintptr(unsafe.Pointer(&ctx)), uintptr(dev)))
	return ctx, err
}

func (d *driver) releasePrimary(dev int32) error {
	return d.check("cuDevicePrimaryCtxRelease_v2", call(d.cuDevicePrimaryCtxRelease, uintptr(dev)))
}

func (d *driver) setCurrent(ctx uintptr) error {
	return d.check("cuCtxSetCurrent", call(d.cuCtxSetCurrent, ctx))
}

func (d *driver) synchronize() error {
	defer d.wait(time.Now())
	return d.check("cuCtxSynchronize", call(d.cuCtxSynchronize))
}

// eventSync waits for event ev; the time counts as waiting for the device.
func (d *driver) eventSync(ev uintptr) error {
	defer d.wait(time.Now())
	return d.check("cuEventSynchronize", call(d.cuEventSynchronize, ev))
}

// wait adds the time since t0 to the host time spent blocked on the device.
func (d *driver) wait(t0 time.Time) { d.waited.Add(int64(time.Since(t0))) }

func (d *driver) memInfo() (free, total uint64, err error) {
	err = d.check("cuMemGetInfo_v2", call(d.cuMemGetInfo, uintptr(unsafe.Pointer(&free)), uintptr(unsafe.Pointer(&total))))
	return free, total, err
}
