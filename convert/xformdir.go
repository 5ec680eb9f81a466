package convert

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/xform-dev/xform/model"
	"github.com/xform-dev/xform/safetensors"
)

// xform's own model directory: config.json (this struct) + model.safetensors (canonical
// names) + optional dict.<lang>.txt and profile.ratio.init.
const (
	xformConfigName  = "config.json"
	xformWeightsName = "model.safetensors"
	xformFormat      = "xform-model/1"
)

// DirConfig is config.json of an xform model directory.
type DirConfig struct {
	Format  string       `json:"format"`
	Model   model.Config `json:"model"`
	Weights string       `json:"weights"`
	SrcDict string       `json:"src_dict,omitempty"`
	TgtDict string       `json:"tgt_dict,omitempty"`
	Profile string       `json:"admin_profile,omitempty"`
	Source  interface{}  `json:"source,omitempty"` // where it was imported from (informational)
}

func loadXformDir(dir string) (*Imported, error) {
	b, err := os.ReadFile(filepath.Join(dir, xformConfigName))
	if err != nil {
		return nil, fmt.Errorf("convert: %w", err)
	}
	var dc DirConfig
	if err := json.Unmarshal(b, &dc); err != nil {
		return nil, fmt.Errorf("convert: %s: %s: %w", dir, xformConfigName, err)
	}
	if dc.Format != xformFormat {
		return nil, fmt.Errorf("convert: %s: %s has format %q, want %q", dir, xformConfigName, dc.Format, xformFormat)
	}
	if dc.Weights == "" || filepath.Base(dc.Weights) != dc.Weights {
		return nil, fmt.Errorf("convert: %s: %s: weights file %q must be a plain file name", dir, xformConfigName, dc.Weights)
	}
	wpath := filepath.Join(dir, dc.Weights)
	sf, err := safetensors.ReadFile(wpath)
	if err != nil {
		return nil, err
	}
	m := &model.Model{Config: dc.Model, Params: sf.Tensors}
	if err := m.Validate(); err != nil {
		return nil, fmt.Errorf("convert: %s: %w", wpath, err)
	}
	im := &Imported{Model: m, Source: wpath, Kind: "xform"}
	rel := func(n string) string {
		if n == "" || filepath.Base(n) != n {
			return ""
		}
		return filepath.Join(dir, n)
	}
	im.SrcDict, im.TgtDict, im.Profile = rel(dc.SrcDict), rel(dc.TgtDict), rel(dc.Profile)
	return im, nil
}

// SaveDirOptions says what else goes into an xform directory.
type SaveDirOptions struct {
	SrcDict, TgtDict string // dictionary files to copy in (optional)
	Profile          string // Admin profile file to copy in (optional)
	Source           interface{}
	Force            bool // replace an existing directory
}

// SaveDir writes m as an xform model directory, all or nothing: everything goes into a
// temporary directory beside dir, is fsynced, and is renamed into place at the end.
func SaveDir(dir string, m *model.Model, opts SaveDirOptions) error {
	if err := m.Validate(); err != nil {
		return fmt.Errorf("convert: %s: %w", dir, err)
	}
	if _, err := os.Stat(dir); err == nil && !opts.Force {
		return fmt.Errorf("convert: %s: %w (use --force to replace it)", dir, os.ErrExist)
	}
	parent := filepath.Dir(filepath.Clean(dir))
	tmp, err := os.MkdirTemp(parent, "."+filepath.Base(dir)+".tmp-")
	if err != nil {
		return fmt.Errorf("convert: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			os.RemoveAll(tmp)
		}
	}()
	dc := DirConfig{Format: xformFormat, Model: m.Config, Weights: xformWeightsName, Source: opts.Source}
	copyIn := func(src, name string) (string, error) {
		if src == "" {
			return "", nil
		}
		if err := copyFileSync(src, filepath.Join(tmp, name)); err != nil {
			return "", err
		}
		return name, nil
	}
	srcName, tgtName := "dict.src.txt", "dict.tgt.txt"
	if m.Config.SourceLang != "" && m.Config.TargetLang != "" && m.Config.SourceLang != m.Config.TargetLang {
		srcName, tgtName = "dict."+m.Config.SourceLang+".txt", "dict."+m.Config.TargetLang+".txt"
	}
	if dc.SrcDict, err = copyIn(opts.SrcDict, srcName); err != nil {
		return err
	}
	if dc.TgtDict, err = copyIn(opts.TgtDict, tgtName); err != nil {
		return err
	}
	if dc.Profile, err = copyIn(opts.Profile, "profile.ratio.init"); err != nil {
		return err
	}
	names := make([]string, 0, len(m.Params))
	for _, p := range m.Config.Expected() {
		names = append(names, p.Name)
	}
	meta := map[string]string{"format": "pt", "producer": "xform", "arch": m.Config.Arch, "init_type": string(m.Config.Init)}
	if err := writeFileSync(filepath.Join(tmp, xformWeightsName), func(w io.Writer) error {
		return safetensors.Write(w, names, m.Params, meta)
	}); err != nil {
		return err
	}
	cj, err := json.MarshalIndent(dc, "", "  ")
	if err != nil {
		return fmt.Errorf("convert: %w", err)
	}
	if err := writeFileSync(filepath.Join(tmp, xformConfigName), func(w io.Writer) error {
		_, err := w.Write(append(cj, '\n'))
		return err
	}); err != nil {
		return err
	}
	if opts.Force {
		if err := os.RemoveAll(dir); err != nil {
			return fmt.Errorf("convert: %w", err)
		}
	}
	if err := os.Rename(tmp, dir); err != nil {
		return fmt.Errorf("convert: %w", err)
	}
	ok = true
	syncDir(parent)
	return nil
}

func writeFileSync(path string, fill func(io.Writer) error) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("convert: %w", err)
	}
	if err := fill(f); err != nil {
		f.Close()
		return fmt.Errorf("convert: writing %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("convert: %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("convert: %s: %w", path, err)
	}
	return nil
}

func copyFileSync(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("convert: %w", err)
	}
	defer in.Close()
	return writeFileSync(dst, func(w io.Writer) error { _, err := io.Copy(w, in); return err })
}

func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}
