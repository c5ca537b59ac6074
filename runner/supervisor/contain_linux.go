package supervisor

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// setProcessName sets the comm of this process's main thread, which is what
// tools show and match for the process. /proc/self/comm rather than
// prctl(PR_SET_NAME): the latter names the calling thread, and a goroutine
// may run on any thread.
func setProcessName(name string) {
	_ = os.WriteFile("/proc/self/comm", []byte(name), 0)
}

// namespaceAttr starts the init in a new PID namespace. The init gets
// SIGKILL when the supervisor dies (Pdeathsig; the kernel then kills the
// whole namespace): Pdeathsig follows the thread that forks, and the
// supervisor forks from its main goroutine, locked to its thread until the
// process exits. A user that is not root needs a user namespace to create a
// PID namespace: the user maps to itself, so the command runs as the same
// user and group. Root gets none: root in a user namespace loses its
// power over files and resources outside it.
func namespaceAttr() *syscall.SysProcAttr {
	a := &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL, Cloneflags: syscall.CLONE_NEWPID}
	if uid, gid := os.Geteuid(), os.Getegid(); uid != 0 {
		a.Cloneflags |= syscall.CLONE_NEWUSER
		a.UidMappings = []syscall.SysProcIDMap{{ContainerID: uid, HostID: uid, Size: 1}}
		a.GidMappings = []syscall.SysProcIDMap{{ContainerID: gid, HostID: gid, Size: 1}}
	}
	return a
}

// hostPid returns the pid, as /proc shows it, of this process's child whose
// pid in this process's namespace is nsPid, or 0. The init calls it: its
// own namespace's pids mean nothing to the supervisor, while /proc (not
// remounted) is the supervisor's view. The child is found among the
// children /proc lists for each thread (one of them forked it), or else by
// a scan of all of /proc.
func hostPid(nsPid int) int {
	self, err := os.Readlink("/proc/self") // resolved in /proc's namespace
	if err != nil {
		return 0
	}
	want := strconv.Itoa(nsPid)
	isIt := func(pid string) bool {
		b, err := os.ReadFile("/proc/" + pid + "/status")
		if err != nil {
			return false
		}
		nspids := strings.Fields(statusField(b, "NSpid:"))
		return statusField(b, "PPid:") == self && len(nspids) > 1 && nspids[len(nspids)-1] == want
	}
	lists, _ := filepath.Glob("/proc/self/task/*/children")
	for _, l := range lists {
		b, _ := os.ReadFile(l)
		for _, pid := range strings.Fields(string(b)) {
			if isIt(pid) {
				n, _ := strconv.Atoi(pid)
				return n
			}
		}
	}
	names, err := readDirNames("/proc")
	if err != nil {
		return 0
	}
	for _, n := range names {
		if _, err := strconv.Atoi(n); err == nil && isIt(n) {
			pid, _ := strconv.Atoi(n)
			return pid
		}
	}
	return 0
}

func statusField(b []byte, name string) string {
	for line := range bytes.Lines(b) {
		if v, ok := bytes.CutPrefix(line, []byte(name)); ok {
			return string(bytes.TrimSpace(v))
		}
	}
	return ""
}

func readDirNames(dir string) ([]string, error) {
	d, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	return d.Readdirnames(-1)
}

// cgroup is a change's own cgroup v2.
type cgroup struct {
	dir string
	fd  int // the directory, for CLONE_INTO_CGROUP
}

// newCgroup creates a cgroup for one command under this process's own
// cgroup in the cgroup v2 hierarchy. It fails where there is no cgroup v2
// hierarchy, where this process may not write it, or where cgroup.kill is
// missing (Linux before 5.14).
func newCgroup() (*cgroup, error) {
	own, err := ownCgroupDir()
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(own, fmt.Sprintf("auditflow-%d-%x", os.Getpid(), time.Now().UnixNano()&0xffffff))
	if err := os.Mkdir(dir, 0o755); err != nil {
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(dir, "cgroup.kill")); err != nil {
		_ = os.Remove(dir)
		return nil, errors.New("no cgroup.kill (Linux 5.14+)")
	}
	fd, err := syscall.Open(dir, syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
	if err != nil {
		_ = os.Remove(dir)
		return nil, err
	}
	return &cgroup{dir: dir, fd: fd}, nil
}

// attr starts a process directly in the cgroup (clone3 CLONE_INTO_CGROUP):
// it is in it before it can fork.
func (c *cgroup) attr(a *syscall.SysProcAttr) *syscall.SysProcAttr {
	a.UseCgroupFD, a.CgroupFD = true, c.fd
	return a
}

func (c *cgroup) kill() error { return killCgroupNow(c.dir) }

// remove removes the cgroup once it is empty.
func (c *cgroup) remove() {
	syscall.Close(c.fd)
	removeCgroup(c.dir)
}

func killCgroupNow(dir string) error {
	return os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0)
}

// removeCgroup removes an empty cgroup; a process that just died may keep
// it busy for a moment.
func removeCgroup(dir string) {
	for range 50 {
		if err := os.Remove(dir); err == nil || errors.Is(err, os.ErrNotExist) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// killCgroup kills every process in dir and removes it: the runner's side,
// when the supervisor died. dir is empty with other containments.
func killCgroup(dir string) {
	if dir == "" {
		return
	}
	if killCgroupNow(dir) == nil {
		deadline := time.Now().Add(time.Second)
		for populated(dir) && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
	}
	removeCgroup(dir)
}

func populated(dir string) bool {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.events"))
	return err == nil && bytes.Contains(b, []byte("populated 1"))
}

// ownCgroupDir finds this process's cgroup in the cgroup v2 hierarchy: where
// cgroup2 is mounted (/sys/fs/cgroup on most hosts, /sys/fs/cgroup/unified
// on hybrid ones), joined with the path /proc/self/cgroup gives for it.
func ownCgroupDir() (string, error) {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", err
	}
	var path string
	found := false
	for line := range strings.Lines(string(b)) {
		if p, ok := strings.CutPrefix(strings.TrimSpace(line), "0::"); ok {
			path, found = p, true
		}
	}
	if !found {
		return "", errors.New("not in a cgroup v2 hierarchy")
	}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// "36 35 0:30 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw"
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		fields, fs := strings.Fields(pre), strings.Fields(post)
		if !ok || len(fields) < 5 || len(fs) < 1 || fs[0] != "cgroup2" {
			continue
		}
		root, mnt := unescapeMount(fields[3]), unescapeMount(fields[4])
		rel, ok := strings.CutPrefix(path, root)
		if !ok || (root != "/" && rel != "" && !strings.HasPrefix(rel, "/")) {
			continue // this mount shows another part of the hierarchy
		}
		return filepath.Join(mnt, rel), nil
	}
	if err := sc.Err(); err != nil {
		return "", err
	}
	return "", errors.New("no cgroup2 mount")
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
