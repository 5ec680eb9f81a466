package admin

import (
	"fmt"

	"github.com/xform-dev/xform/model"
)

// ProfileFromModel makes the profile.ratio.init an Admin model needs beside it for the
// Clinic fork to build it: the fork only checks the indices and the count, then the
// checkpoint's ω overwrite the values read, so each sub-layer's value is the mean of its
// ω (float32, as the fork prints them).
func ProfileFromModel(m *model.Model) (*Profile, error) {
	c := m.Config
	if !c.Init.HasOmega() {
		return nil, fmt.Errorf("admin: profile: %w (init type %q)", ErrNotAdmin, c.Init)
	}
	p := &Profile{Format: FormatIndexed}
	mean := func(name string) (float64, error) {
		t, ok := m.Params[name]
		if !ok {
			return 0, fmt.Errorf("admin: profile: missing %s", name)
		}
		v, err := t.F32()
		if err != nil {
			return 0, fmt.Errorf("admin: profile: %s: %w", name, err)
		}
		var s float64
		for _, x := range v {
			s += float64(x)
		}
		return float64(float32(s / float64(len(v)))), nil
	}
	for l := 0; l < c.EncoderLayers; l++ {
		for _, n := range []string{"self_attn_omega", "ffn_omega"} {
			x, err := mean(model.EncLayer(l) + n)
			if err != nil {
				return nil, err
			}
			p.Encoder = append(p.Encoder, x)
		}
	}
	for l := 0; l < c.DecoderLayers; l++ {
		for _, n := range []string{"self_attn_omega", "encoder_attn_omega", "ffn_omega"} {
			x, err := mean(model.DecLayer(l) + n)
			if err != nil {
				return nil, err
			}
			p.Decoder = append(p.Decoder, x)
		}
	}
	return p, nil
}
