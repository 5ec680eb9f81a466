// Package demo embeds a small real Admin model (a Transformer-Clinic checkpoint trained for
// 1000 updates on the fixture corpus, its profile file, dictionaries and the corpus's
// train, valid and test data-bin, 4000/200/100 sentences) so `xform demo` can show the
// whole tool, training included, on a fresh machine with nothing downloaded.
package demo

import (
	"embed"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

//go:embed assets
var assets embed.FS

// Files lists the embedded files.
func Files() []string {
	ents, _ := fs.ReadDir(assets, "assets")
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

// Extract writes the embedded files into dir (which must exist): the checkpoint as
// dir/checkpoint_last.pt beside dict.*.txt and profile.ratio.init, as a fairseq run directory
// looks, and the train, valid and test splits (every .bin/.idx) with the dictionaries as
// dir/data-bin/.
func Extract(dir string) error {
	if err := os.MkdirAll(filepath.Join(dir, "data-bin"), 0o755); err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	for _, name := range Files() {
		b, err := assets.ReadFile("assets/" + name)
		if err != nil {
			return fmt.Errorf("demo: %w", err)
		}
		dst := filepath.Join(dir, name)
		if filepath.Ext(name) == ".bin" || filepath.Ext(name) == ".idx" {
			dst = filepath.Join(dir, "data-bin", name)
		}
		if err := os.WriteFile(dst, b, 0o644); err != nil {
			return fmt.Errorf("demo: %w", err)
		}
		if filepath.Ext(name) == ".txt" { // data-bin needs its dictionaries too
			if err := os.WriteFile(filepath.Join(dir, "data-bin", name), b, 0o644); err != nil {
				return fmt.Errorf("demo: %w", err)
			}
		}
	}
	return nil
}
