package fairseqpt

import (
	"archive/zip"
	"bufio"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"strings"
)

// ErrExists is returned when the output file exists and replacing it was not asked for.
var ErrExists = errors.New("output file exists (pass --force to replace it)")

// storageAlignment is torch's kFieldAlignment: every record's data starts at a multiple of it.
const storageAlignment = 64

// WriteOptions control WriteFile.
type WriteOptions struct {
	// Force replaces an existing file.
	Force bool
	// ArchiveName is the zip folder every record sits in; default: the output file's base
	// name without its extension, as torch.save names it.
	ArchiveName string
}

// WriteFile pickles root (the value model of value.go, plus *tensor.Tensor for new data)
// into a torch zip file at path, atomically: the bytes go to a temporary file in the same
// directory, which is synced and renamed into place only when complete. On any error
// (a full disk included) no file is left behind.
func WriteFile(path string, root interface{}, opt WriteOptions) error {
	name := opt.ArchiveName
	if name == "" {
		name = ArchiveName(path)
	}
	return AtomicWriteFile(path, opt.Force, func(w io.Writer) error { return Write(w, name, root) })
}

// ArchiveName is the zip folder torch.save gives a file: its base name without extension.
func ArchiveName(path string) string {
	base := filepath.Base(path)
	if n := strings.TrimSuffix(base, filepath.Ext(base)); n != "" {
		return n
	}
	return "archive"
}

// Write writes root as a torch ≥1.6 zip archive whose records sit in folder archive. The
// records follow torch 2.11's order (data.pkl, .format_version, .storage_alignment,
// byteorder, data/0…, version, .data/serialization_id), each STORED with its data 64-byte
// aligned. The output depends only on root: no timestamps, and the serialization id is a
// hash of the content.
func Write(w io.Writer, archive string, root interface{}) error {
	if archive == "" || strings.ContainsAny(archive, "/\\") {
		return fmt.Errorf("fairseqpt: archive name %q must be a non-empty name without slashes", archive)
	}
	pkl, storages, err := Pickle(root)
	if err != nil {
		return fmt.Errorf("fairseqpt: pickling: %w", err)
	}
	cw := &countWriter{w: w}
	zw := zip.NewWriter(cw)
	id := sha256.New()
	id.Write(pkl)
	add := func(name string, data []byte) error {
		if err := addAligned(zw, cw, archive+"/"+name, data); err != nil {
			return fmt.Errorf("fairseqpt: writing record %s: %w", name, err)
		}
		return nil
	}
	if err := add("data.pkl", pkl); err != nil {
		return err
	}
	for _, r := range [][2]string{{".format_version", "1"}, {".storage_alignment", "64"}, {"byteorder", "little"}} {
		if err := add(r[0], []byte(r[1])); err != nil {
			return err
		}
	}
	for _, s := range storages {
		data, err := s.bytes()
		if err != nil {
			return fmt.Errorf("fairseqpt: storage %s: %w", s.key, err)
		}
		if want := s.numel * int64(s.dtype.Size()); int64(len(data)) != want {
			return fmt.Errorf("fairseqpt: storage %s has %d bytes, %d %s elements need %d", s.key, len(data), s.numel, s.dtype, want)
		}
		var rec [12]byte
		binary.LittleEndian.PutUint32(rec[:4], crc32.ChecksumIEEE(data))
		binary.LittleEndian.PutUint64(rec[4:], uint64(len(data)))
		id.Write(rec[:])
		if err := add("data/"+s.key, data); err != nil {
			return err
		}
	}
	if err := add("version", []byte("3\n")); err != nil {
		return err
	}
	// torch writes 40 random decimal digits; a content hash keeps the output reproducible.
	n := new(big.Int).SetBytes(id.Sum(nil))
	n.Mod(n, new(big.Int).Exp(big.NewInt(10), big.NewInt(40), nil))
	if err := add(".data/serialization_id", []byte(fmt.Sprintf("%040s", n.String()))); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return fmt.Errorf("fairseqpt: writing the zip directory: %w", err)
	}
	return nil
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// addAligned writes one STORED record whose data starts at a multiple of 64 bytes, padding
// with torch's "FB" extra field. CreateRaw with the CRC and sizes known up front puts them
// in the local header and writes no data descriptor, so the next header's offset is exact.
func addAligned(zw *zip.Writer, cw *countWriter, name string, data []byte) error {
	if err := zw.Flush(); err != nil {
		return err
	}
	start := cw.n + 30 + int64(len(name)) + 4
	pad := int((storageAlignment - start%storageAlignment) % storageAlignment)
	extra := make([]byte, 4+pad)
	copy(extra, "FB")
	binary.LittleEndian.PutUint16(extra[2:], uint16(pad))
	for i := 4; i < len(extra); i++ {
		extra[i] = 'Z'
	}
	f, err := zw.CreateRaw(&zip.FileHeader{
		Name:               name,
		Method:             zip.Store,
		Flags:              0x800, // UTF-8 names, as torch's writer sets
		Extra:              extra,
		CRC32:              crc32.ChecksumIEEE(data),
		CompressedSize64:   uint64(len(data)),
		UncompressedSize64: uint64(len(data)),
	})
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	return err
}

// AtomicWriteFile creates path with the bytes fn writes, all or nothing: fn writes to a
// temporary file in path's directory, which is flushed, fsynced and renamed to path only
// when fn and every write succeeded. An existing path is an error wrapping ErrExists
// unless force.
func AtomicWriteFile(path string, force bool, fn func(io.Writer) error) error {
	return atomicWrite(path, force, fn, nil)
}

// atomicWrite is AtomicWriteFile with a hook that wraps the file writer (tests use it to
// simulate a full disk).
func atomicWrite(path string, force bool, fn func(io.Writer) error, wrap func(io.Writer) io.Writer) (err error) {
	if !force {
		if _, err := os.Lstat(path); err == nil {
			return fmt.Errorf("fairseqpt: %s: %w", path, ErrExists)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("fairseqpt: %w", err)
		}
	}
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("fairseqpt: creating a temporary file beside %s: %w", path, err)
	}
	tmpName := tmp.Name()
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmpName)
		}
	}()
	bw := bufio.NewWriterSize(tmp, 1<<20)
	var w io.Writer = bw
	if wrap != nil {
		w = wrap(bw)
	}
	if err := fn(w); err != nil {
		return fmt.Errorf("fairseqpt: writing %s: %w", path, err)
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("fairseqpt: writing %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("fairseqpt: syncing %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("fairseqpt: closing %s: %w", path, err)
	}
	if err := os.Chmod(tmpName, 0o644); err != nil {
		return fmt.Errorf("fairseqpt: %w", err)
	}
	if force {
		err = os.Rename(tmpName, path)
	} else {
		// A hard link fails if path appeared meanwhile, so a concurrent writer is never
		// overwritten; fall back to rename where links are unsupported.
		err = os.Link(tmpName, path)
		switch {
		case err == nil:
			os.Remove(tmpName)
		case errors.Is(err, fs.ErrExist):
			err = fmt.Errorf("%s: %w", path, ErrExists)
		default:
			if _, serr := os.Lstat(path); serr == nil {
				err = fmt.Errorf("%s: %w", path, ErrExists)
			} else {
				err = os.Rename(tmpName, path)
			}
		}
	}
	if err != nil {
		return fmt.Errorf("fairseqpt: %w", err)
	}
	syncDir(dir)
	return nil
}

// syncDir makes the rename durable; failures are ignored because some file systems do not
// support syncing directories and the data itself is already synced.
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}
