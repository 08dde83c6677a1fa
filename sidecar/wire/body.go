package wire

import (
	"bufio"
	"errors"
	"io"
	"strconv"
)

// The copy functions below stream a response body from the upstream to the
// client. dst is flushed whenever src has nothing buffered, before waiting
// for the upstream: a small response leaves in the same write as its head,
// a stream (server-sent events, long polls) reaches the client as it comes.

// CopyLength copies exactly n bytes.
func CopyLength(dst *bufio.Writer, src *bufio.Reader, n int64) error {
	for n > 0 {
		p, err := next(dst, src, n)
		if err != nil {
			if errors.Is(err, io.EOF) {
				return io.ErrUnexpectedEOF
			}
			return err
		}
		if _, err := dst.Write(p); err != nil {
			return err
		}
		_, _ = src.Discard(len(p))
		n -= int64(len(p))
	}
	return nil
}

// CopyUntilClose copies until the upstream closes the connection.
func CopyUntilClose(dst *bufio.Writer, src *bufio.Reader) error {
	for {
		p, err := next(dst, src, int64(src.Size()))
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if _, err := dst.Write(p); err != nil {
			return err
		}
		_, _ = src.Discard(len(p))
	}
}

// next returns up to limit buffered bytes of src, flushing dst and waiting
// for the upstream when none are buffered.
func next(dst *bufio.Writer, src *bufio.Reader, limit int64) ([]byte, error) {
	if src.Buffered() == 0 {
		if err := dst.Flush(); err != nil {
			return nil, err
		}
		if _, err := src.Peek(1); err != nil {
			return nil, err
		}
	}
	k := int64(src.Buffered())
	if k > limit {
		k = limit
	}
	return src.Peek(int(k))
}

// CopyChunked copies a chunked body, re-framed: chunk extensions are
// dropped, and trailer fields are kept except hop-by-hop and framing ones.
// A chunk-size line that is not hex digits (at most 15), optionally
// followed by an extension, ending in CRLF is ErrChunked.
func CopyChunked(dst *bufio.Writer, src *bufio.Reader) error {
	var sizeBuf [24]byte
	for {
		if src.Buffered() == 0 {
			if err := dst.Flush(); err != nil {
				return err
			}
		}
		line, err := src.ReadSlice('\n')
		if err != nil {
			return chunkErr(err)
		}
		size, ok := chunkSize(line)
		if !ok {
			return ErrChunked
		}
		if size == 0 {
			break
		}
		b := strconv.AppendInt(sizeBuf[:0], size, 16)
		b = append(b, '\r', '\n')
		if _, err := dst.Write(b); err != nil {
			return err
		}
		if err := CopyLength(dst, src, size); err != nil {
			return chunkErr(err)
		}
		crlf, err := src.Peek(2)
		if err != nil {
			return chunkErr(err)
		}
		if crlf[0] != '\r' || crlf[1] != '\n' {
			return ErrChunked
		}
		_, _ = src.Discard(2)
		if _, err := dst.WriteString("\r\n"); err != nil {
			return err
		}
	}
	if _, err := dst.WriteString("0\r\n"); err != nil {
		return err
	}
	for n := 0; ; n++ {
		line, err := src.ReadSlice('\n')
		if err != nil {
			return chunkErr(err)
		}
		if len(line) < 2 || line[len(line)-2] != '\r' || n > MaxHeaders {
			return ErrChunked
		}
		line = line[:len(line)-2]
		if len(line) == 0 {
			break
		}
		name, value, ok := splitFieldBytes(line)
		if !ok {
			return ErrChunked
		}
		if hopByHop(name) || equalFold(name, "content-length") || equalFold(name, "host") {
			continue
		}
		for _, s := range [][]byte{name, []byte(": "), value, []byte("\r\n")} {
			if _, err := dst.Write(s); err != nil {
				return err
			}
		}
	}
	if _, err := dst.WriteString("\r\n"); err != nil {
		return err
	}
	return dst.Flush()
}

func chunkErr(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, bufio.ErrBufferFull) {
		return ErrChunked
	}
	return err
}

// chunkSize parses "hex[;ext]\r\n" (whitespace allowed before the ';').
func chunkSize(line []byte) (int64, bool) {
	if len(line) < 3 || line[len(line)-2] != '\r' {
		return 0, false
	}
	line = line[:len(line)-2]
	var n int64
	i := 0
	for ; i < len(line) && isHex(line[i]); i++ {
		if i == 15 {
			return 0, false
		}
		n = n<<4 | int64(unhex(line[i]))
	}
	if i == 0 {
		return 0, false
	}
	rest := line[i:]
	for len(rest) > 0 && (rest[0] == ' ' || rest[0] == '\t') {
		rest = rest[1:]
	}
	if len(rest) > 0 && rest[0] != ';' {
		return 0, false
	}
	for _, c := range rest {
		if c < ' ' && c != '\t' || c == 0x7f {
			return 0, false
		}
	}
	return n, true
}

func unhex(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c <= 'F':
		return c - 'A' + 10
	}
	return c - 'a' + 10
}
