package cuda

import "testing"

// TestLFVStepForm: lfvStepForm says "the LFV_STEP body" exactly for the legacy _vs, _vp
// and _vr launches at full width with every pointer the body's condition names, a
// 16-bit dbranch and the dropout on (layernorm_fast.cu's LFV_INSTANCE conditions).
func TestLFVStepForm(t *testing.T) {
	type call struct {
		mode                               lfvMode
		legacy                             bool
		dim, nv                            int
		dz, dbranch, x, dz2, omega2, omega uint64
		half                               bool
		threshold                          uint64
	}
	step := call{lfvSum, true, 512, 4, 1, 2, 3, 4, 5, 6, true, 1 << 20}
	for _, tc := range []struct {
		name string
		edit func(*call)
		want bool
	}{
		{"the step's Sum call", func(*call) {}, true},
		{"plain, no second part", func(c *call) { c.mode, c.dz2, c.omega2 = lfvPlain, 0, 0 }, true},
		{"d 1024 on NV 8", func(c *call) { c.dim, c.nv = 1024, 8 }, true},
		{"d 516 on NV 8", func(c *call) { c.dim, c.nv = 516, 8 }, false},
		{"the _w kernels", func(c *call) { c.legacy = false }, false},
		{"recomputing", func(c *call) { c.mode = lfvRecomp }, true},
		{"recomputing without ω", func(c *call) { c.mode, c.omega = lfvRecomp, 0 }, false},
		{"no dz", func(c *call) { c.dz = 0 }, false},
		{"no dbranch", func(c *call) { c.dbranch = 0 }, false},
		{"float32 dbranch", func(c *call) { c.half = false }, false},
		{"no x (no dω)", func(c *call) { c.x = 0 }, false},
		{"no dropout", func(c *call) { c.threshold = 0 }, false},
		{"Sum without its second part", func(c *call) { c.dz2 = 0 }, false},
		{"Sum without ω2", func(c *call) { c.omega2 = 0 }, false},
	} {
		c := step
		tc.edit(&c)
		if got := lfvStepForm(c.mode, c.legacy, c.dim, c.nv, c.dz, c.dbranch, c.x, c.dz2, c.omega2, c.omega, c.half, c.threshold); got != tc.want {
			t.Errorf("%s: lfvStepForm = %v, want %v", tc.name, got, tc.want)
		}
	}
}
