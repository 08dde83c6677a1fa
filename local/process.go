package local

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// stopTimeout is how long a child gets after SIGTERM before SIGKILL.
const stopTimeout = 10 * time.Second

// process is a child process whose output goes to a log file. It runs in its
// own process group, so that the terminal's Ctrl-C reaches only the launcher,
// which then stops its children in order.
type process struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}

	mu    sync.Mutex
	lines []func(line []byte) bool // line watchers; a watcher returning true is dropped
}

// startProcess starts bin with args, its stdout and stderr written to
// logFile; watch, when not nil, sees every output line until it returns true.
func startProcess(name, bin, logFile string, watch func(line []byte) bool, args ...string) (*process, error) {
	f, err := os.Create(logFile) // #nosec G304 -- a file in the launcher's own run directory
	if err != nil {
		return nil, err
	}
	p := &process{name: name, log: logFile, done: make(chan struct{})}
	if watch != nil {
		p.lines = append(p.lines, watch)
	}
	cmd := exec.Command(bin, args...) // #nosec G204 -- the launcher's own binaries and arguments
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p.cmd = cmd
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64*1024), 1024*1024)
		for sc.Scan() {
			line := sc.Bytes()
			_, _ = f.Write(append(line, '\n'))
			p.watch(line)
		}
		_, _ = io.Copy(f, pr) // a line too long for the scanner: keep the rest raw
	}()
	go func() {
		_ = cmd.Wait()
		_ = pw.Close()
		<-copied
		_ = f.Close()
		close(p.done)
	}()
	return p, nil
}

func (p *process) watch(line []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	kept := p.lines[:0]
	for _, fn := range p.lines {
		if !fn(line) {
			kept = append(kept, fn)
		}
	}
	p.lines = kept
}

// exited reports whether the process has ended.
func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM, then SIGKILL after stopTimeout, and waits for the exit.
func (p *process) stop() {
	if p.exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(stopTimeout):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// tail returns the last n lines of the log.
func (p *process) tail(n int) string {
	data, err := os.ReadFile(p.log)
	if err != nil {
		return ""
	}
	lines := bytes.Split(bytes.TrimSpace(data), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}
