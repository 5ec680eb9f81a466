package fairseqpt

import (
	"bytes"
	"encoding/binary"
	"fmt"
)

// maxPickleLine bounds the newline-terminated arguments (GLOBAL names, text ints).
const maxPickleLine = 1 << 16

// scanPickle walks the opcodes of one pickle in b without building anything, checking that
// every length read from the stream fits in what is left of it. It returns the offset just
// past STOP. This runs before the unpickler so that a forged length can never make it
// allocate more than the file holds.
func scanPickle(b []byte, onGlobal func(module, name string)) (int, error) {
	i := 0
	need := func(n uint64) error {
		if n > uint64(len(b)-i) {
			return fmt.Errorf("%w: pickle argument of %d bytes at offset %d runs past the end (%d bytes left)", ErrTruncated, n, i, len(b)-i)
		}
		return nil
	}
	for i < len(b) {
		op := b[i]
		at := i
		i++
		var n uint64
		switch op {
		case '.': // STOP
			return i, nil
		case '(', '0', '1', '2', 'N', 'Q', 'R', 'a', 'b', 'd', '}', 'e', 'l', ']', 'o', 's', 't', ')', 'u',
			0x81, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8f, 0x90, 0x91, 0x92, 0x93, 0x94, 0x97, 0x98:
			continue
		case 'K', 'h', 'q', 0x80, 0x82:
			n = 1
		case 'M', 0x83:
			n = 2
		case 'J', 'j', 'r', 0x84:
			n = 4
		case 'G':
			n = 8
		case 0x95: // FRAME: the size of the opcodes that follow, which must fit in the stream
			if err := need(8); err != nil {
				return 0, err
			}
			if err := need(8 + binary.LittleEndian.Uint64(b[i:])); err != nil {
				return 0, err
			}
			i += 8
			continue
		case 'U', 'C', 0x8c, 0x8a: // 1-byte length
			if err := need(1); err != nil {
				return 0, err
			}
			n = uint64(b[i])
			i++
		case 'T', 'X', 'B': // 4-byte length
			if err := need(4); err != nil {
				return 0, err
			}
			n = uint64(binary.LittleEndian.Uint32(b[i:]))
			i += 4
		case 0x8b: // LONG4, signed length
			if err := need(4); err != nil {
				return 0, err
			}
			l := int32(binary.LittleEndian.Uint32(b[i:]))
			if l < 0 {
				return 0, fmt.Errorf("%w: negative LONG4 length at offset %d", ErrCorrupt, at)
			}
			n = uint64(l)
			i += 4
		case 0x8d, 0x8e, 0x96: // 8-byte length
			if err := need(8); err != nil {
				return 0, err
			}
			n = binary.LittleEndian.Uint64(b[i:])
			i += 8
		case 'I', 'L', 'F', 'S', 'V', 'P', 'g', 'p':
			if err := skipLines(b, &i, 1); err != nil {
				return 0, fmt.Errorf("opcode %q at offset %d: %w", op, at, err)
			}
			continue
		case 'c', 'i':
			start := i
			if err := skipLines(b, &i, 2); err != nil {
				return 0, fmt.Errorf("opcode %q at offset %d: %w", op, at, err)
			}
			if onGlobal != nil {
				parts := bytes.SplitN(b[start:i-1], []byte{'\n'}, 2)
				if len(parts) == 2 {
					onGlobal(string(parts[0]), string(parts[1]))
				}
			}
			continue
		default:
			return 0, fmt.Errorf("%w: unknown pickle opcode 0x%02x at offset %d", ErrCorrupt, op, at)
		}
		if err := need(n); err != nil {
			return 0, err
		}
		i += int(n)
	}
	return 0, fmt.Errorf("%w: pickle has no STOP opcode", ErrTruncated)
}

func skipLines(b []byte, i *int, lines int) error {
	for ; lines > 0; lines-- {
		j := *i
		for j < len(b) && b[j] != '\n' {
			j++
			if j-*i > maxPickleLine {
				return fmt.Errorf("%w: pickle text argument longer than %d bytes", ErrCorrupt, maxPickleLine)
			}
		}
		if j == len(b) {
			return fmt.Errorf("%w: unterminated pickle text argument", ErrTruncated)
		}
		*i = j + 1
	}
	return nil
}
