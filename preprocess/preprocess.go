// Package preprocess is fairseq 0.8's preprocess.py: it builds (or reuses)
// dictionaries from a parallel text corpus and binarizes every split into a
// data-bin directory that fairseq and xform train and generate from. Output
// is byte-identical to the reference for the same flags, for any number of
// workers, and appears in --destdir only once complete.
package preprocess

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/xform-dev/xform/train/data"
)

// Errors callers may want to tell apart.
var (
	// ErrUsage marks invalid or contradictory options.
	ErrUsage = errors.New("invalid options")
	// ErrExists marks a dictionary in --destdir that this run would replace
	// with a different one (allowed with Force).
	ErrExists = errors.New("already exists")
	// ErrLineCount marks source and target files of one split whose line
	// counts differ.
	ErrLineCount = errors.New("source and target line counts differ")
)

// Options mirror fairseq 0.8's preprocessing flags.
type Options struct {
	SourceLang, TargetLang string
	TrainPref              string
	ValidPref, TestPref    string // comma-separated prefixes: valid, valid1, ...
	DestDir                string // default "data-bin"

	JoinedDictionary bool
	SrcDict, TgtDict string // reuse these dictionaries instead of building
	ThresholdSrc     int    // drop words seen fewer times (when building)
	ThresholdTgt     int
	NWordsSrc        int // keep at most this many symbols, specials included; <= 0: all
	NWordsTgt        int
	PaddingFactor    int       // pad the dictionary size to a multiple of this (default 8)
	DatasetImpl      data.Impl // default mmap
	OnlySource       bool
	Workers          int  // parallel chunks; output does not depend on it
	Force            bool // replace differing dictionaries already in DestDir

	// Log receives fairseq's report lines (types, sentences, tokens, % <unk>).
	Log io.Writer
	// Progress, when not nil, receives a redrawn progress line for files
	// that take more than a second (meant for a terminal).
	Progress io.Writer

	chunkSize int // bytes per unit of parallel work; 0: chunkSize (tests shrink it)
}

// Defaults returns the options fairseq uses when no flag is given.
func Defaults() Options {
	return Options{DestDir: "data-bin", PaddingFactor: 8, DatasetImpl: data.ImplMMap, Workers: 1,
		NWordsSrc: -1, NWordsTgt: -1}
}

type split struct {
	name, prefix string // "valid1", "path/to/valid"
}

type run struct {
	opt    Options
	target bool
	splits []split
	log    io.Writer
	prog   *progress
}

func usagef(format string, a ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrUsage}, a...)...)
}

func (o *Options) check() error {
	if o.DestDir == "" {
		o.DestDir = "data-bin"
	}
	if o.DatasetImpl == "" {
		o.DatasetImpl = data.ImplMMap
	}
	if _, err := data.ParseImpl(string(o.DatasetImpl)); err != nil {
		return usagef("--dataset-impl %q: want mmap, cached, lazy or raw", o.DatasetImpl)
	}
	if o.Workers < 1 {
		return usagef("--workers %d: want at least 1", o.Workers)
	}
	if o.PaddingFactor < 1 {
		return usagef("--padding-factor %d: want at least 1", o.PaddingFactor)
	}
	if o.SourceLang == "" {
		return usagef("--source-lang is required")
	}
	if o.TargetLang == "" && !o.OnlySource {
		return usagef("--target-lang is required (or pass --only-source)")
	}
	if o.JoinedDictionary && o.SrcDict != "" && o.TgtDict != "" {
		return usagef("cannot use both --srcdict and --tgtdict with --joined-dictionary")
	}
	needTrain := o.SrcDict == "" && (!o.JoinedDictionary || o.TgtDict == "")
	if !o.JoinedDictionary && !o.OnlySource && o.TgtDict == "" {
		needTrain = true
	}
	if needTrain && o.TrainPref == "" {
		return usagef("--trainpref must be set unless the dictionaries are given (--srcdict/--tgtdict)")
	}
	if o.TrainPref == "" && o.ValidPref == "" && o.TestPref == "" {
		return usagef("nothing to do: give --trainpref, --validpref or --testpref")
	}
	return nil
}

// Run preprocesses the corpus described by opt.
func Run(ctx context.Context, opt Options) error {
	if err := opt.check(); err != nil {
		return err
	}
	r := &run{opt: opt, target: !opt.OnlySource, log: opt.Log, prog: newProgress(opt.Progress)}
	if r.log == nil {
		r.log = io.Discard
	}
	if opt.TrainPref != "" {
		r.splits = append(r.splits, split{"train", opt.TrainPref})
	}
	for _, group := range []struct{ name, prefs string }{{"valid", opt.ValidPref}, {"test", opt.TestPref}} {
		if group.prefs == "" {
			continue
		}
		for k, p := range strings.Split(group.prefs, ",") {
			name := group.name
			if k > 0 {
				name = fmt.Sprintf("%s%d", name, k)
			}
			r.splits = append(r.splits, split{name, p})
		}
	}
	if err := r.checkInputs(ctx); err != nil {
		return err
	}
	srcDict, tgtDict, err := r.dictionaries(ctx)
	if err != nil {
		return err
	}
	dicts := []struct {
		lang string
		d    *data.Dictionary
	}{{opt.SourceLang, srcDict}}
	if r.target {
		dicts = append(dicts, struct {
			lang string
			d    *data.Dictionary
		}{opt.TargetLang, tgtDict})
	}
	for _, d := range dicts {
		if err := r.checkExistingDict(d.lang, d.d); err != nil {
			return err
		}
	}

	dest := filepath.Clean(opt.DestDir)
	if st, err := os.Stat(dest); err == nil && !st.IsDir() {
		return fmt.Errorf("preprocess: --destdir %s exists and is not a directory", dest)
	}
	parent := filepath.Dir(dest)
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return fmt.Errorf("preprocess: %w", err)
	}
	tmp, err := os.MkdirTemp(parent, "."+filepath.Base(dest)+".xform-tmp-")
	if err != nil {
		return fmt.Errorf("preprocess: temporary output directory: %w", err)
	}
	defer os.RemoveAll(tmp)

	var outputs []string // relative names, data first, dictionaries last
	seen := map[string]bool{}
	keep := func(names ...string) {
		for _, n := range names {
			if !seen[n] {
				seen[n] = true
				outputs = append(outputs, n)
			}
		}
	}
	for i, lang := range r.langs() {
		d := srcDict
		if i > 0 {
			d = tgtDict
		}
		for _, s := range r.splits {
			names, err := r.makeDataset(ctx, tmp, d, s, lang)
			if err != nil {
				return err
			}
			keep(names...)
		}
	}
	for _, d := range dicts {
		name := "dict." + d.lang + ".txt"
		if err := d.d.Save(filepath.Join(tmp, name)); err != nil {
			return fmt.Errorf("preprocess: %w", err)
		}
		keep(name)
	}
	if err := commit(tmp, dest, outputs); err != nil {
		return err
	}
	fmt.Fprintf(r.log, "| Wrote preprocessed data to %s\n", opt.DestDir)
	return nil
}

func (r *run) langs() []string {
	if r.target {
		return []string{r.opt.SourceLang, r.opt.TargetLang}
	}
	return []string{r.opt.SourceLang}
}

// targetName is the target language as it appears in file names; fairseq
// writes Python's None when --only-source leaves it unset.
func (r *run) targetName() string {
	if r.opt.TargetLang == "" {
		return "None"
	}
	return r.opt.TargetLang
}

func inputPath(prefix, lang string) string {
	if lang == "" {
		return prefix
	}
	return prefix + "." + lang
}

// checkInputs fails early on missing files and on splits whose sides differ
// in line count, before any work is done.
func (r *run) checkInputs(ctx context.Context) error {
	for _, s := range r.splits {
		for _, lang := range r.langs() {
			p := inputPath(s.prefix, lang)
			st, err := os.Stat(p)
			if err != nil {
				return fmt.Errorf("preprocess: %s split: input %s: %w", s.name, p, err)
			}
			if !st.Mode().IsRegular() {
				return fmt.Errorf("preprocess: %s split: input %s is not a regular file", s.name, p)
			}
		}
	}
	if !r.target {
		return nil
	}
	type job struct {
		path string
		n    int64
		err  error
	}
	var jobs []*job
	for _, s := range r.splits {
		for _, lang := range r.langs() {
			jobs = append(jobs, &job{path: inputPath(s.prefix, lang)})
		}
	}
	sem := make(chan struct{}, max(r.opt.Workers, 2))
	done := make(chan struct{})
	for _, j := range jobs {
		go func() {
			sem <- struct{}{}
			j.n, j.err = countLines(ctx, j.path)
			<-sem
			done <- struct{}{}
		}()
	}
	for range jobs {
		<-done
	}
	for i := 0; i < len(jobs); i += 2 {
		a, b := jobs[i], jobs[i+1]
		for _, j := range []*job{a, b} {
			if j.err != nil {
				return fmt.Errorf("preprocess: %w", j.err)
			}
		}
		if a.n != b.n {
			return fmt.Errorf("preprocess: %w: %s has %d lines, %s has %d", ErrLineCount, a.path, a.n, b.path, b.n)
		}
	}
	return nil
}

// countLines counts lines with universal newlines, as Python reads them.
func countLines(ctx context.Context, path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	var n int64
	var last byte
	prevCR := false
	any := false
	for {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		k, err := f.Read(buf)
		b := buf[:k]
		if k > 0 {
			any = true
			n += int64(bytes.Count(b, []byte{'\n'}))
			if bytes.IndexByte(b, '\r') >= 0 || prevCR {
				// A \r ends a line unless a \n follows (then the \n counted it).
				for i, c := range b {
					if c == '\r' {
						n++
						if i+1 < len(b) && b[i+1] == '\n' {
							n--
						}
					}
				}
				if prevCR && b[0] == '\n' {
					n--
				}
			}
			prevCR = b[k-1] == '\r'
			last = b[k-1]
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return 0, fmt.Errorf("%s: %w", path, err)
		}
	}
	if any && last != '\n' && last != '\r' {
		n++
	}
	return n, nil
}

func (r *run) dictionaries(ctx context.Context) (src, tgt *data.Dictionary, err error) {
	o := r.opt
	trainFile := func(lang string) string { return inputPath(o.TrainPref, lang) }
	load := func(flag, path string) (*data.Dictionary, error) {
		d, err := data.LoadDictionary(path)
		if err != nil {
			return nil, fmt.Errorf("preprocess: %s: %w", flag, err)
		}
		return d, nil
	}
	build := func(files []string, threshold, nwords int) (*data.Dictionary, error) {
		d, err := buildDictionary(ctx, files, o.Workers, o.chunkSize, threshold, nwords, o.PaddingFactor, r.prog, r.log)
		if err != nil {
			return nil, fmt.Errorf("preprocess: building the dictionary: %w", err)
		}
		return d, nil
	}
	if o.JoinedDictionary {
		switch {
		case o.SrcDict != "":
			src, err = load("--srcdict", o.SrcDict)
		case o.TgtDict != "":
			src, err = load("--tgtdict", o.TgtDict)
		default:
			files := []string{trainFile(o.SourceLang)}
			if t := trainFile(o.TargetLang); t != files[0] {
				files = append(files, t)
			}
			src, err = build(files, o.ThresholdSrc, o.NWordsSrc)
		}
		return src, src, err
	}
	if o.SrcDict != "" {
		src, err = load("--srcdict", o.SrcDict)
	} else {
		src, err = build([]string{trainFile(o.SourceLang)}, o.ThresholdSrc, o.NWordsSrc)
	}
	if err != nil || !r.target {
		return src, nil, err
	}
	if o.TgtDict != "" {
		tgt, err = load("--tgtdict", o.TgtDict)
	} else {
		tgt, err = build([]string{trainFile(o.TargetLang)}, o.ThresholdTgt, o.NWordsTgt)
	}
	return src, tgt, err
}

// checkExistingDict refuses to replace a dictionary in --destdir with a
// different one: data binarized with the old one would silently change
// meaning. An identical file is simply kept.
func (r *run) checkExistingDict(lang string, d *data.Dictionary) error {
	path := filepath.Join(r.opt.DestDir, "dict."+lang+".txt")
	old, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("preprocess: %w", err)
	}
	var buf bytes.Buffer
	if _, err := d.WriteTo(&buf); err != nil {
		return err
	}
	if bytes.Equal(old, buf.Bytes()) {
		return nil
	}
	if !r.opt.Force {
		return fmt.Errorf("preprocess: %s %w and differs from the dictionary this run writes; pass --force to overwrite it (and every data file of this run), or choose another --destdir", path, ErrExists)
	}
	fmt.Fprintf(r.log, "| overwriting %s (--force)\n", path)
	return nil
}

// makeDataset writes one split of one language into dir and returns the names
// of the files it made.
func (r *run) makeDataset(ctx context.Context, dir string, d *data.Dictionary, s split, lang string) ([]string, error) {
	in := inputPath(s.prefix, lang)
	base := fmt.Sprintf("%s.%s-%s.%s", s.name, r.opt.SourceLang, r.targetName(), lang)
	if r.opt.DatasetImpl == data.ImplRaw {
		if err := copyFile(in, filepath.Join(dir, base)); err != nil {
			return nil, fmt.Errorf("preprocess: %w", err)
		}
		return []string{base}, nil
	}
	fmt.Fprintf(r.log, "| [%s] Dictionary: %d types\n", lang, d.Len()-1)
	w, err := data.NewWriter(filepath.Join(dir, base), r.opt.DatasetImpl, d.Len())
	if err != nil {
		return nil, fmt.Errorf("preprocess: %w", err)
	}
	st, err := binarizeFile(ctx, in, d, w, r.opt.Workers, r.opt.chunkSize, r.prog)
	if err != nil {
		w.Abort()
		return nil, fmt.Errorf("preprocess: %w", err)
	}
	if err := w.Close(); err != nil {
		return nil, fmt.Errorf("preprocess: %w", err)
	}
	pct := 0.0
	if st.ntok > 0 {
		pct = 100 * float64(st.nunk) / float64(st.ntok)
	}
	fmt.Fprintf(r.log, "| [%s] %s: %d sents, %d tokens, %s%% replaced by %s\n",
		lang, in, st.nseq, st.ntok, pyPrecision(pct, 3), data.UnkWord)
	return []string{base + ".bin", base + ".idx"}, nil
}

func copyFile(from, to string) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(to)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, in)
	if err == nil {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("copying %s to %s: %w", from, to, err)
	}
	return nil
}

// commit moves the finished files from tmp into dest (same file system, so
// each rename is atomic) and syncs the directory.
func commit(tmp, dest string, names []string) error {
	if err := os.MkdirAll(dest, 0o755); err != nil {
		return fmt.Errorf("preprocess: %w", err)
	}
	for _, n := range names {
		if err := os.Rename(filepath.Join(tmp, n), filepath.Join(dest, n)); err != nil {
			return fmt.Errorf("preprocess: moving output into place: %w", err)
		}
	}
	if d, err := os.Open(dest); err == nil {
		err = d.Sync()
		d.Close()
		if err != nil {
			return fmt.Errorf("preprocess: sync %s: %w", dest, err)
		}
	}
	return nil
}
