package cli

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"syscall"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/piernet/pier/etcfiles"
)

// enterCommandName is the hidden subcommand pier re-executes itself as.
const enterCommandName = "__enter"

// enterSpec is what the __enter child needs to run a command in a sandbox.
type enterSpec struct {
	netns    string // network namespace path (SandboxInfo.Key)
	dir      string // directory with hosts, resolv.conf, hostname (SandboxInfo.Dir)
	hostname string
	workdir  string
	argv     []string
}

// args returns the command line of the __enter child.
func (s enterSpec) args() []string {
	args := []string{enterCommandName, "--netns", s.netns, "--dir", s.dir, "--hostname", s.hostname}
	if s.workdir != "" {
		args = append(args, "--workdir", s.workdir)
	}
	return append(append(args, "--"), s.argv...)
}

func (a *app) enterCommand() *cobra.Command {
	var s enterSpec
	cmd := &cobra.Command{
		Use:    enterCommandName + " --netns PATH --dir DIR --hostname NAME -- COMMAND [ARG...]",
		Short:  "Internal: the namespace child of pier exec and pier run",
		Hidden: true,
		Args:   minArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			s.argv = args
			return enter(s, a.Err)
		},
	}
	fl := cmd.Flags()
	fl.SetInterspersed(false)
	fl.StringVar(&s.netns, "netns", "", "network namespace path")
	fl.StringVar(&s.dir, "dir", "", "directory holding hosts, resolv.conf and hostname")
	fl.StringVar(&s.hostname, "hostname", "", "hostname")
	fl.StringVar(&s.workdir, "workdir", "", "working directory")
	return cmd
}

// enter runs in the child that pier started in new mount and UTS namespaces: it
// privatizes the mounts, bind-mounts the sandbox's files over /etc, sets the hostname,
// joins the sandbox network namespace and execs the command. It returns only on
// failure, after reporting it.
func enter(s enterSpec, stderr io.Writer) error {
	// setns changes only this thread, so the thread that joins is the one that execs.
	runtime.LockOSThread()
	if err := setupNamespaces(s, stderr); err != nil {
		fmt.Fprintf(stderr, "pier: entering sandbox: %v\n", err)
		return exitStatus(exitPier)
	}
	return execCommand(s.argv, stderr)
}

func setupNamespaces(s enterSpec, stderr io.Writer) error {
	if err := checkOwnNamespaces(); err != nil {
		return err
	}
	// Nothing below may reach the host's mount table.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("making mounts private: %w", err)
	}
	if err := bindEtcFiles(s.dir, stderr); err != nil {
		return err
	}
	if s.hostname != "" {
		if err := unix.Sethostname([]byte(s.hostname)); err != nil {
			return fmt.Errorf("setting hostname %q: %w", s.hostname, err)
		}
	}
	if err := joinNetns(s.netns); err != nil {
		return err
	}
	if s.workdir != "" {
		if err := os.Chdir(s.workdir); err != nil {
			return fmt.Errorf("changing to working directory: %w", err)
		}
	}
	return nil
}

// checkOwnNamespaces refuses to run unless this process has mount and UTS namespaces
// of its own (not its parent's): `pier __enter` typed by hand must not bind-mount
// over the host's /etc or rename the host.
func checkOwnNamespaces() error {
	parent := "/proc/" + strconv.Itoa(os.Getppid()) + "/ns/"
	for _, ns := range []string{"mnt", "uts"} {
		self, err1 := os.Readlink("/proc/self/ns/" + ns)
		theirs, err2 := os.Readlink(parent + ns)
		if err := errors.Join(err1, err2); err != nil {
			return fmt.Errorf("checking namespaces: %w", err)
		}
		if self == theirs {
			return fmt.Errorf("%s must be started by pier exec or pier run (it shares its parent's %s namespace)", enterCommandName, ns)
		}
	}
	return nil
}

// bindEtcFiles bind-mounts dir's hosts, resolv.conf and hostname over the files in
// /etc. Bind mounts follow symlinks, so a symlinked /etc/resolv.conf gets the file
// mounted over its target. A missing target is left alone (nothing is created in
// /etc) with a warning; a missing source is skipped.
func bindEtcFiles(dir string, stderr io.Writer) error {
	if dir == "" {
		return nil
	}
	hosts, resolv, hostname := etcfiles.Paths(dir)
	for _, m := range []struct{ src, dst string }{
		{hosts, "/etc/hosts"}, {resolv, "/etc/resolv.conf"}, {hostname, "/etc/hostname"},
	} {
		if err := bindFile(m.src, m.dst, stderr); err != nil {
			return err
		}
	}
	return nil
}

func bindFile(src, dst string, stderr io.Writer) error {
	if _, err := os.Stat(src); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	st, err := os.Stat(dst)
	if err != nil || !st.Mode().IsRegular() {
		fmt.Fprintf(stderr, "pier: warning: %s is missing or not a regular file: the sandbox's %s is not shown there\n", dst, src)
		return nil
	}
	if err := unix.Mount(src, dst, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind-mounting %s over %s: %w", src, dst, err)
	}
	return nil
}

// joinNetns moves the calling (locked) thread into the network namespace at path.
func joinNetns(path string) error {
	if path == "" {
		return errors.New("the sandbox has no network namespace path")
	}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("opening network namespace %s: %w", path, err)
	}
	defer unix.Close(fd)
	if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("joining network namespace %s: %w", path, err)
	}
	return nil
}

// execCommand replaces this process with argv, looked up in PATH. Like docker, a
// command that is not found exits 127 and one that cannot be run 126.
func execCommand(argv []string, stderr io.Writer) error {
	path, err := exec.LookPath(argv[0])
	if err != nil {
		fmt.Fprintf(stderr, "pier: %v\n", err)
		return exitStatus(exitNotFound)
	}
	err = syscall.Exec(path, argv, os.Environ())
	fmt.Fprintf(stderr, "pier: exec %s: %v\n", path, err)
	return exitStatus(exitCannotRun)
}
