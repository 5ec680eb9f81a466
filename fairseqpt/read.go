package fairseqpt

import (
	"archive/zip"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"

	"github.com/nlpodyssey/gopickle/types"
)

// Format is the container format of a .pt file.
type Format string

const (
	FormatZip    Format = "zip"    // torch ≥ 1.6
	FormatLegacy Format = "legacy" // torch ≤ 1.5 (or _use_new_zipfile_serialization=False)
)

// maxPickleBytes bounds the pickle part of a file; real checkpoints' pickles are kilobytes to
// a few megabytes, storages hold the data.
const maxPickleBytes = 1 << 30

// File is an open torch file. Its Root is the unpickled object; tensors in it read their
// bytes from the file on demand, so keep the File open until done with them.
type File struct {
	Path     string
	Format   Format
	Prefix   string // zip archive folder (zip only)
	Root     interface{}
	Storages map[string]*Storage
	Globals  []string // every module.name the pickle refers to, sorted
	Size     int64

	f *os.File
}

// Close releases the file.
func (f *File) Close() error {
	if f.f == nil {
		return nil
	}
	err := f.f.Close()
	f.f = nil
	return err
}

var legacyMagic = []byte{0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19}

// Open reads the container and the pickle of a torch file. Storage bytes stay in the file.
func Open(path string) (*File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("fairseqpt: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("fairseqpt: %w", err)
	}
	if st.IsDir() {
		f.Close()
		return nil, fmt.Errorf("fairseqpt: %s: is a directory", path)
	}
	tf, err := read(path, f, st.Size())
	if err != nil {
		f.Close()
		return nil, err
	}
	tf.f = f
	return tf, nil
}

// Read decodes a torch file held by r (size bytes). The caller keeps r valid while tensors are read.
func Read(name string, r io.ReaderAt, size int64) (*File, error) {
	return read(name, r, size)
}

func read(path string, r io.ReaderAt, size int64) (*File, error) {
	head := make([]byte, 512)
	n, err := r.ReadAt(head, 0)
	if err != nil && err != io.EOF {
		return nil, fmt.Errorf("fairseqpt: %s: %w", path, err)
	}
	head = head[:n]
	wrap := func(err error) error { return fmt.Errorf("fairseqpt: %s: %w", path, err) }
	switch {
	case n == 0:
		return nil, wrap(fmt.Errorf("%w: empty file", ErrNotTorch))
	case bytes.HasPrefix(head, []byte("PK\x03\x04")):
		tf, err := readZip(path, r, size)
		if err != nil {
			return nil, wrap(err)
		}
		return tf, nil
	case bytes.HasPrefix(head, legacyMagic[:3]):
		tf, err := readLegacy(path, r, size)
		if err != nil {
			return nil, wrap(err)
		}
		return tf, nil
	case len(head) >= 262 && string(head[257:262]) == "ustar":
		return nil, wrap(ErrLegacyTar)
	case bytes.HasPrefix(head, []byte("PYTORCH1")):
		return nil, wrap(fmt.Errorf("%w: PYTORCH1 container of torch 1.0-preview", ErrUnsupported))
	case bytes.HasPrefix(head, []byte("PK")):
		return nil, wrap(fmt.Errorf("%w: zip file does not start with a local file header", ErrCorrupt))
	case head[0] == 0x80:
		return nil, wrap(fmt.Errorf("%w: a pickle without torch's legacy magic number (a plain pickle, not torch.save output)", ErrNotTorch))
	}
	return nil, wrap(ErrNotTorch)
}

func readZip(path string, r io.ReaderAt, size int64) (*File, error) {
	zr, err := zip.NewReader(r, size)
	if err != nil {
		if errors.Is(err, zip.ErrFormat) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, fmt.Errorf("%w: zip archive: %v (truncated or damaged)", ErrTruncated, err)
		}
		return nil, fmt.Errorf("%w: zip archive: %v", ErrCorrupt, err)
	}
	if len(zr.File) == 0 {
		return nil, fmt.Errorf("%w: empty zip archive", ErrNotTorch)
	}
	// All records share one top-level folder; find it from data.pkl, not from the file name
	// (checkpoint_last.pt is a byte copy of checkpointN.pt and keeps its folder).
	records := make(map[string]*zip.File, len(zr.File))
	prefix := ""
	for _, zf := range zr.File {
		records[zf.Name] = zf
		if strings.HasSuffix(zf.Name, "/data.pkl") && strings.Count(zf.Name, "/") == 1 {
			prefix = strings.TrimSuffix(zf.Name, "data.pkl")
		}
	}
	if prefix == "" {
		if _, ok := records["data.pkl"]; !ok {
			return nil, fmt.Errorf("%w: zip archive without data.pkl (not written by torch.save)", ErrNotTorch)
		}
	}
	if _, ok := records[prefix+"constants.pkl"]; ok {
		return nil, ErrTorchScript
	}
	for name := range records {
		if !strings.HasPrefix(name, prefix) {
			return nil, fmt.Errorf("%w: record %q is outside the archive folder %q", ErrCorrupt, name, prefix)
		}
	}
	if bo, ok := records[prefix+"byteorder"]; ok {
		b, err := readSmallRecord(bo, 64)
		if err != nil {
			return nil, err
		}
		if s := strings.TrimSpace(string(b)); s != "little" {
			return nil, fmt.Errorf("%w: byteorder %q (only little-endian files are supported)", ErrUnsupported, s)
		}
	}
	if vr, ok := records[prefix+"version"]; ok {
		b, err := readSmallRecord(vr, 64)
		if err != nil {
			return nil, err
		}
		v, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || v < 1 || v > 20 {
			return nil, fmt.Errorf("%w: archive version %q", ErrCorrupt, strings.TrimSpace(string(b)))
		}
	}
	pkl := records[prefix+"data.pkl"]
	data, err := readSmallRecord(pkl, maxPickleBytes)
	if err != nil {
		return nil, err
	}
	tf := &File{Path: path, Format: FormatZip, Prefix: strings.TrimSuffix(prefix, "/"), Storages: map[string]*Storage{}, Size: size}
	u := &unpickler{path: path, globals: map[string]bool{}}
	u.persistent = func(pid *types.Tuple) (*Storage, error) {
		cls, key, loc, numel, err := parsePID(pid, false)
		if err != nil {
			return nil, err
		}
		if s, ok := tf.Storages[key]; ok {
			if s.DType != cls.dtype || s.Numel != numel {
				return nil, fmt.Errorf("%w: storage %s is referenced as %s[%d] and %s[%d]", ErrCorrupt, key, s.DType, s.Numel, cls.dtype, numel)
			}
			return s, nil
		}
		rec, ok := records[prefix+"data/"+key]
		if !ok {
			return nil, fmt.Errorf("%w: storage record data/%s is missing", ErrTruncated, key)
		}
		need := numel * int64(cls.dtype.Size())
		if numel > (1<<62)/int64(cls.dtype.Size()) || uint64(need) > rec.UncompressedSize64 {
			return nil, fmt.Errorf("%w: storage %s declares %d %s elements (%d bytes) but its record holds %d bytes",
				ErrCorrupt, key, numel, cls.dtype, need, rec.UncompressedSize64)
		}
		if rec.Method != zip.Store {
			return nil, fmt.Errorf("%w: storage record data/%s is compressed (method %d); torch writes them stored", ErrUnsupported, key, rec.Method)
		}
		off, err := rec.DataOffset()
		if err != nil {
			return nil, fmt.Errorf("%w: storage record data/%s: %v", ErrCorrupt, key, err)
		}
		if off < 0 || off+int64(rec.UncompressedSize64) > size || rec.CompressedSize64 != rec.UncompressedSize64 {
			return nil, fmt.Errorf("%w: storage record data/%s (%d bytes at %d) runs past the end of the %d-byte file", ErrTruncated, key, rec.UncompressedSize64, off, size)
		}
		s := &Storage{Key: key, DType: cls.dtype, Numel: numel, Location: loc, src: r, offset: off, path: path}
		// The CRC covers the whole record; check it when the whole record is the storage.
		if uint64(need) == rec.UncompressedSize64 {
			s.crc, s.check = rec.CRC32, true
		}
		tf.Storages[key] = s
		return s, nil
	}
	root, err := u.load(data)
	if err != nil {
		return nil, fmt.Errorf("data.pkl: %w", err)
	}
	tf.Root = root
	tf.Globals = sortedKeys(u.globals)
	return tf, nil
}

// readSmallRecord reads a whole zip record, refusing records larger than limit, and lets
// archive/zip verify its CRC.
func readSmallRecord(zf *zip.File, limit int64) ([]byte, error) {
	if zf.UncompressedSize64 > uint64(limit) {
		return nil, fmt.Errorf("%w: record %s is %d bytes (limit %d)", ErrUnsupported, zf.Name, zf.UncompressedSize64, limit)
	}
	rc, err := zf.Open()
	if err != nil {
		return nil, fmt.Errorf("%w: record %s: %v", ErrCorrupt, zf.Name, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, limit+1))
	if err != nil {
		if errors.Is(err, zip.ErrChecksum) {
			return nil, fmt.Errorf("%w: record %s: CRC-32 mismatch", ErrCorrupt, zf.Name)
		}
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%w: record %s", ErrTruncated, zf.Name)
		}
		return nil, fmt.Errorf("%w: record %s: %v", ErrCorrupt, zf.Name, err)
	}
	if uint64(len(b)) != zf.UncompressedSize64 {
		return nil, fmt.Errorf("%w: record %s has %d bytes, header says %d", ErrCorrupt, zf.Name, len(b), zf.UncompressedSize64)
	}
	return b, nil
}

// readLegacy reads torch's pre-1.6 format: magic, protocol, sys_info pickles, the object
// pickle, the storage-key list pickle, then each storage as int64 count + raw bytes.
func readLegacy(path string, r io.ReaderAt, size int64) (*File, error) {
	// The pickles come first and are small; read at most maxPickleBytes of the head.
	headLen := size
	if headLen > maxPickleBytes {
		headLen = maxPickleBytes
	}
	pos := int64(0)
	// Read a window at pos and find the pickle's end by scanning; grow the window only while
	// the scan runs out of bytes, so a 1 GB legacy file costs the pickle's size, not the file's.
	next := func() ([]byte, error) {
		left := headLen - pos
		if left <= 0 {
			return nil, fmt.Errorf("%w: file ends before all pickles", ErrTruncated)
		}
		for window := int64(64 << 10); ; window *= 4 {
			if window > left {
				window = left
			}
			buf := make([]byte, window)
			n, err := r.ReadAt(buf, pos)
			if err != nil && err != io.EOF {
				return nil, err
			}
			buf = buf[:n]
			end, err := scanPickle(buf, nil)
			if err != nil {
				if errors.Is(err, ErrTruncated) && window < left && int64(n) == window {
					continue
				}
				return nil, err
			}
			pos += int64(end)
			return buf[:end], nil
		}
	}
	u := &unpickler{path: path, globals: map[string]bool{}}
	magic, err := next()
	if err != nil {
		return nil, fmt.Errorf("magic number: %w", err)
	}
	if mv, err := u.load(magic); err != nil || !isLegacyMagic(mv) {
		return nil, fmt.Errorf("%w: bad legacy magic number", ErrNotTorch)
	}
	proto, err := next()
	if err != nil {
		return nil, fmt.Errorf("protocol version: %w", err)
	}
	if pv, err := u.load(proto); err != nil || pv != 1001 {
		return nil, fmt.Errorf("%w: legacy protocol version %v, want 1001", ErrUnsupported, pv)
	}
	sys, err := next()
	if err != nil {
		return nil, fmt.Errorf("sys_info: %w", err)
	}
	si, err := u.load(sys)
	if err != nil {
		return nil, fmt.Errorf("sys_info: %w", err)
	}
	if le, ok := DictGet(si, "little_endian"); ok && le != true {
		return nil, fmt.Errorf("%w: big-endian legacy file", ErrUnsupported)
	}
	obj, err := next()
	if err != nil {
		return nil, fmt.Errorf("object pickle: %w", err)
	}
	tf := &File{Path: path, Format: FormatLegacy, Storages: map[string]*Storage{}, Size: size}
	u.persistent = func(pid *types.Tuple) (*Storage, error) {
		cls, key, loc, numel, err := parsePID(pid, true)
		if err != nil {
			return nil, err
		}
		if s, ok := tf.Storages[key]; ok {
			if s.DType != cls.dtype || s.Numel != numel {
				return nil, fmt.Errorf("%w: storage %s is referenced with two types or sizes", ErrCorrupt, key)
			}
			return s, nil
		}
		if numel > size/int64(cls.dtype.Size()) {
			return nil, fmt.Errorf("%w: storage %s declares %d elements, more than the %d-byte file can hold", ErrCorrupt, key, numel, size)
		}
		s := &Storage{Key: key, DType: cls.dtype, Numel: numel, Location: loc, src: r, offset: -1, path: path}
		tf.Storages[key] = s
		return s, nil
	}
	root, err := u.load(obj)
	if err != nil {
		return nil, fmt.Errorf("object pickle: %w", err)
	}
	keysPkl, err := next()
	if err != nil {
		return nil, fmt.Errorf("storage key list: %w", err)
	}
	u.persistent = nil
	kv, err := u.load(keysPkl)
	if err != nil {
		return nil, fmt.Errorf("storage key list: %w", err)
	}
	keys, ok := kv.(*types.List)
	if !ok {
		return nil, fmt.Errorf("%w: storage key list is %T", ErrCorrupt, kv)
	}
	// Storages follow in the order of the key list, each as int64 count + bytes.
	for _, k := range *keys {
		key, ok := k.(string)
		if !ok {
			return nil, fmt.Errorf("%w: storage key %v is not a string", ErrCorrupt, k)
		}
		var cnt [8]byte
		if _, err := r.ReadAt(cnt[:], pos); err != nil {
			return nil, fmt.Errorf("%w: storage %s header at %d", ErrTruncated, key, pos)
		}
		pos += 8
		n := int64(binary.LittleEndian.Uint64(cnt[:]))
		s, ok := tf.Storages[key]
		if !ok {
			return nil, fmt.Errorf("%w: storage %s is listed but never used", ErrCorrupt, key)
		}
		if n != s.Numel {
			return nil, fmt.Errorf("%w: storage %s holds %d elements, the pickle says %d", ErrCorrupt, key, n, s.Numel)
		}
		nb := n * int64(s.DType.Size())
		if pos+nb > size {
			return nil, fmt.Errorf("%w: storage %s (%d bytes at %d) runs past the end of the %d-byte file", ErrTruncated, key, nb, pos, size)
		}
		s.offset = pos
		pos += nb
	}
	for _, key := range sortedKeys(tf.Storages) {
		if tf.Storages[key].offset < 0 {
			return nil, fmt.Errorf("%w: storage %s has no data", ErrTruncated, key)
		}
	}
	tf.Root = root
	tf.Globals = sortedKeys(u.globals)
	sort.Strings(tf.Globals)
	return tf, nil
}

func isLegacyMagic(v interface{}) bool {
	b, ok := v.(interface{ String() string })
	return ok && b.String() == "119547037146038801333356"
}
