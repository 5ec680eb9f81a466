package fairseqpt

import (
	"bytes"
	"testing"
)

// The readers must never panic or over-allocate on arbitrary input.
func FuzzRead(f *testing.F) {
	for _, p := range []string{torchDir + "tensors_zip.pt", torchDir + "tensors_legacy.pt"} {
		b, err := readFileOK(p)
		if err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte("PK\x03\x04"))
	f.Fuzz(func(t *testing.T, b []byte) {
		tf, err := Read("fuzz.pt", bytes.NewReader(b), int64(len(b)))
		if err != nil {
			return
		}
		for _, s := range tf.Storages {
			s.Bytes()
		}
		if ck, err := Interpret(tf); err == nil {
			for _, nt := range ck.State {
				nt.Tensor.Materialize()
			}
		}
	})
}

func FuzzPickle(f *testing.F) {
	f.Add([]byte("\x80\x02}q\x00X\x01\x00\x00\x00aK\x01s."))
	f.Add([]byte("\x80\x02cargparse\nNamespace\nq\x00)\x81}X\x01\x00\x00\x00xK\x02sb."))
	f.Add([]byte("\x80\x02ccollections\nOrderedDict\n)R]\x85R."))
	f.Fuzz(func(t *testing.T, b []byte) {
		u := &unpickler{path: "fuzz", globals: map[string]bool{}}
		u.load(b)
	})
}
