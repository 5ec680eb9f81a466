package main

import (
	"fmt"

	"github.com/spf13/cobra"
	"github.com/xform-dev/xform/admin"
	"github.com/xform-dev/xform/convert"
)

func newImportCmd() *cobra.Command {
	var out, profile, srcDict, tgtDict string
	var force bool
	cmd := &cobra.Command{
		Use:   "import CKPT -o DIR",
		Short: "Convert a fairseq checkpoint into an xform model directory (config.json + model.safetensors)",
		Long: `Import reads a fairseq / Transformer-Clinic checkpoint and writes xform's model
directory: config.json (the model config), model.safetensors (every parameter under
xform's canonical names, in its stored dtype: fp16 stays fp16), plus the dictionaries and
the Admin profile file when they are found beside the checkpoint or given.

The output is all or nothing: it is written to a temporary directory and renamed into
place; an existing DIR is an error unless --force.`,
		Example: `  xform import checkpoint_best.pt -o model/
  xform import run_dir/ -o model/ --profile run_dir/profile.ratio.init
  python3 -c "from safetensors.numpy import load_file; print(load_file('model/model.safetensors').keys())"`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if out == "" {
				return usageError{fmt.Errorf("import: -o DIR is required")}
			}
			im, err := convert.Import(args[0])
			if err != nil {
				return err
			}
			defer im.Close()
			opts := convert.SaveDirOptions{SrcDict: firstNonEmpty(srcDict, im.SrcDict), TgtDict: firstNonEmpty(tgtDict, im.TgtDict),
				Profile: firstNonEmpty(profile, im.Profile), Force: force, Source: map[string]string{"path": im.Source, "kind": im.Kind}}
			c := im.Model.Config
			if opts.Profile != "" {
				if !c.Init.HasOmega() {
					return fmt.Errorf("import: %s: a profile file was given but the model is not an Admin model (init %s)", opts.Profile, c.Init)
				}
				if _, err := admin.ReadProfileFile(opts.Profile, c.EncoderLayers, c.DecoderLayers); err != nil {
					return err
				}
			}
			if err := convert.SaveDir(out, im.Model, opts); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "imported %s (%s, %d+%d layers, %s parameters) into %s\n",
				im.Source, c.Arch, c.EncoderLayers, c.DecoderLayers, commas(int64(im.Model.NumParams())), out)
			return nil
		},
	}
	cmd.Flags().StringVarP(&out, "output", "o", "", "output directory (required)")
	cmd.Flags().StringVar(&profile, "profile", "", "Admin profile file (profile.ratio.init / profile_ratio.init) to keep with the model")
	cmd.Flags().StringVar(&srcDict, "srcdict", "", "source dictionary to copy in (default: dict.<src>.txt beside the checkpoint)")
	cmd.Flags().StringVar(&tgtDict, "tgtdict", "", "target dictionary to copy in (default: dict.<tgt>.txt beside the checkpoint)")
	cmd.Flags().BoolVar(&force, "force", false, "replace an existing output directory")
	return cmd
}

func firstNonEmpty(ss ...string) string {
	for _, s := range ss {
		if s != "" {
			return s
		}
	}
	return ""
}
