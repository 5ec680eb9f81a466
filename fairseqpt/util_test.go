package fairseqpt

import "os"

func readFileOK(p string) ([]byte, error) { return os.ReadFile(p) }
