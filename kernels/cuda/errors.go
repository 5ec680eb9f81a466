package cuda

import (
	"errors"
	"fmt"
)

// Reasons the GPU cannot be used; Probe and New wrap one of them so callers can
// errors.Is them and fall back to the CPU.
var (
	ErrNoDriver    = errors.New("no NVIDIA driver")
	ErrOldDriver   = errors.New("the NVIDIA driver is too old")
	ErrNoDevice    = errors.New("no CUDA device is visible")
	ErrNoLibrary   = errors.New("a CUDA library is missing")
	ErrOutOfMemory = errors.New("out of device memory")
)

// Error is a failed call into the driver, cuBLAS or NVRTC.
type Error struct {
	Lib  string // "driver", "cublas", "nvrtc"
	Op   string // the C function
	Code int
	Name string // CUDA_ERROR_..., CUBLAS_STATUS_..., NVRTC_ERROR_...
	Msg  string
}

func (e *Error) Error() string {
	s := fmt.Sprintf("cuda: %s: %s (%d)", e.Op, e.Name, e.Code)
	if e.Msg != "" && e.Msg != e.Name {
		s += ": " + e.Msg
	}
	return s
}

// Is makes a driver out-of-memory result match ErrOutOfMemory and "no device" match
// ErrNoDevice.
func (e *Error) Is(target error) bool {
	switch target {
	case ErrOutOfMemory:
		return e.Lib == "driver" && e.Code == 2 || e.Lib == "cublas" && e.Code == 3
	case ErrNoDevice:
		return e.Lib == "driver" && e.Code == 100
	case ErrOldDriver:
		return e.Lib == "driver" && e.Code == 35
	}
	return false
}

// OOMError is an allocation that did not fit; it names what was asked and what was
// free at the time.
type OOMError struct {
	Bytes, Free, Total uint64
	Err                error
}

func (e *OOMError) Error() string {
	return fmt.Sprintf("cuda: out of device memory: asked for %s, %s free of %s (%v)",
		fmtBytes(e.Bytes), fmtBytes(e.Free), fmtBytes(e.Total), e.Err)
}

func (e *OOMError) Unwrap() error { return ErrOutOfMemory }

func fmtBytes(n uint64) string {
	const k = 1024
	switch {
	case n >= k*k*k:
		return fmt.Sprintf("%.2f GiB", float64(n)/(k*k*k))
	case n >= k*k:
		return fmt.Sprintf("%.1f MiB", float64(n)/(k*k))
	case n >= k:
		return fmt.Sprintf("%.1f KiB", float64(n)/k)
	}
	return fmt.Sprintf("%d B", n)
}
