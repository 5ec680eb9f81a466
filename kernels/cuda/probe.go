package cuda

import (
	"errors"
	"fmt"
	"runtime"
)

// Report is what Probe found: the driver, each device, each library and, when the GPU
// cannot be used, why.
type Report struct {
	Driver     DriverInfo   `json:"driver"`
	Devices    []DeviceInfo `json:"devices,omitempty"`
	Libraries  []Found      `json:"libraries"`
	CUBLAS     string       `json:"cublas_version,omitempty"`
	NVRTC      string       `json:"nvrtc_version,omitempty"`
	SearchDirs []string     `json:"search_dirs"`
	// Usable is true when New can run on device 0.
	Usable bool `json:"usable"`
	// Problem says in one sentence why the GPU cannot be used ("" when Usable).
	Problem string `json:"problem,omitempty"`
	// Err is Problem as an error wrapping ErrNoDriver, ErrOldDriver, ErrNoDevice or
	// ErrNoLibrary.
	Err error `json:"-"`
}

// DriverInfo describes libcuda.
type DriverInfo struct {
	Path    string `json:"path,omitempty"`
	Version int    `json:"version,omitempty"` // 13000 for CUDA 13.0
	Error   string `json:"error,omitempty"`
}

// DeviceInfo describes one GPU.
type DeviceInfo struct {
	Ordinal    int    `json:"ordinal"`
	Name       string `json:"name"`
	Major      int    `json:"cc_major"`
	Minor      int    `json:"cc_minor"`
	SMs        int    `json:"multiprocessors"`
	TotalBytes uint64 `json:"total_bytes"`
	FreeBytes  uint64 `json:"free_bytes,omitempty"`
	L2Bytes    int    `json:"l2_bytes,omitempty"`
	Error      string `json:"error,omitempty"`
}

// Arch is the NVRTC target of the device ("sm_90").
func (d DeviceInfo) Arch() string { return fmt.Sprintf("sm_%d%d", d.Major, d.Minor) }

// VersionString formats a CUDA version number (13000 → "13.0").
func VersionString(v int) string { return fmt.Sprintf("%d.%d", v/1000, v%1000/10) }

// Probe looks for the driver, the devices and the libraries without keeping anything
// loaded beyond the process's dynamic loader state. It never fails: what is missing is
// in the report. Free memory needs a context, so Probe briefly retains each device's
// primary context.
func Probe(s Search) *Report {
	r := &Report{SearchDirs: s.Dirs()}
	fail := func(err error) {
		if r.Err == nil {
			r.Err, r.Problem = err, err.Error()
		}
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	d, err := loadDriver(s)
	if err != nil {
		r.Driver.Error = err.Error()
		fail(err)
	} else {
		r.Driver.Path = d.path
		probeDevices(d, r, fail)
	}
	maxMajor := r.Driver.Version / 1000
	for _, lib := range []Library{libCublasLt, libCublas, libNVRTC} {
		f := Find(lib, r.SearchDirs, maxMajor)
		r.Libraries = append(r.Libraries, f)
		if f.Path == "" {
			fail(fmt.Errorf("%w: %s: %s", ErrNoLibrary, f.Key, f.Reason))
		}
	}
	if r.Err == nil {
		libs, err := loadLibs(r.Libraries)
		if err != nil {
			fail(err)
		} else {
			r.NVRTC = libs.nvrtc.versionString()
			r.CUBLAS = libs.blas.versionString()
		}
	}
	r.Usable = r.Err == nil
	return r
}

func probeDevices(d *driver, r *Report, fail func(error)) {
	if err := d.init(); err != nil {
		if errors.Is(err, ErrNoDevice) {
			fail(fmt.Errorf("%w: %v", ErrNoDevice, err))
		} else {
			fail(fmt.Errorf("%w: %v", ErrNoDriver, err))
		}
		r.Driver.Error = err.Error()
		return
	}
	v, err := d.version()
	if err != nil {
		fail(fmt.Errorf("%w: %v", ErrNoDriver, err))
		return
	}
	r.Driver.Version = v
	if v < MinDriverVersion {
		fail(fmt.Errorf("%w: it supports CUDA %s, xform needs %s or newer", ErrOldDriver, VersionString(v), VersionString(MinDriverVersion)))
		return
	}
	n, err := d.deviceCount()
	if err != nil || n == 0 {
		fail(fmt.Errorf("%w (driver %s reports %d devices)", ErrNoDevice, VersionString(v), n))
		return
	}
	for i := 0; i < n; i++ {
		r.Devices = append(r.Devices, queryDevice(d, i))
	}
}

func queryDevice(d *driver, i int) DeviceInfo {
	info := DeviceInfo{Ordinal: i}
	dev, err := d.device(i)
	if err == nil {
		info.Name, err = d.deviceName(dev)
	}
	if err == nil {
		info.TotalBytes, err = d.totalMem(dev)
	}
	for _, a := range []struct {
		attr int
		dst  *int
	}{{attrComputeCapabilityMajor, &info.Major}, {attrComputeCapabilityMinor, &info.Minor},
		{attrMultiprocessorCount, &info.SMs}, {attrL2CacheSize, &info.L2Bytes}} {
		if err == nil {
			*a.dst, err = d.attribute(dev, a.attr)
		}
	}
	if err == nil {
		var ctx uintptr
		if ctx, err = d.retainPrimary(dev); err == nil {
			if err = d.setCurrent(ctx); err == nil {
				info.FreeBytes, _, err = d.memInfo()
			}
			_ = d.setCurrent(0)
			_ = d.releasePrimary(dev)
		}
	}
	if err != nil {
		info.Error = err.Error()
	}
	return info
}
