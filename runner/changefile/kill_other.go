//go:build !unix

package changefile

import "os/exec"

func configureKill(*exec.Cmd) {}
