package local

import "syscall"

// sysProcAttr puts a child in its own process group and has the kernel kill
// it if the launcher dies without stopping it (SIGKILL, a crash).
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
