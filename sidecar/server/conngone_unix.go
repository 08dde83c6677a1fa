//go:build unix

package server

import (
	"errors"
	"net"
	"syscall"
)

// connGone reports whether c's peer has closed or reset the connection,
// without reading from it: a one-byte MSG_PEEK that does not wait.
func connGone(c *net.TCPConn) bool {
	rc, err := c.SyscallConn()
	if err != nil {
		return true
	}
	gone := false
	var b [1]byte
	err = rc.Read(func(fd uintptr) bool {
		n, _, rerr := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		gone = rerr == nil && n == 0 || rerr != nil && !errors.Is(rerr, syscall.EAGAIN) && !errors.Is(rerr, syscall.EINTR)
		return true
	})
	return gone || err != nil
}
