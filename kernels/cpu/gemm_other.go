//go:build !amd64

package cpu

// bestKernel is the portable kernel: only amd64 has an assembly one so far.
func bestKernel() tileKernel { return genericKernel }
