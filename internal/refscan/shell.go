package refscan

import "strings"

// shellRef is an image named in a shell command.
type shellRef struct {
	text  string
	index int    // byte index in the script
	cmd   string // "docker pull", "docker run"
}

// runValueFlags are docker/podman run flags that take a separate value; the
// image is the first word that is neither a flag nor such a value.
var runValueFlags = map[string]bool{
	"-e": true, "--env": true, "--env-file": true, "-v": true, "--volume": true,
	"-p": true, "--publish": true, "--name": true, "-w": true, "--workdir": true,
	"-u": true, "--user": true, "--network": true, "--net": true, "--entrypoint": true,
	"--platform": true, "--mount": true, "-l": true, "--label": true, "--add-host": true,
	"-m": true, "--memory": true, "--cpus": true, "-h": true, "--hostname": true,
	"--pull": true, "--restart": true, "--cap-add": true, "--cap-drop": true,
	"--tmpfs": true, "--device": true, "--gpus": true, "--ulimit": true, "--log-driver": true,
	"--shm-size": true, "--health-cmd": true, "--security-opt": true, "--ipc": true, "--pid": true,
}

var pullValueFlags = map[string]bool{"--platform": true}

// shellImages finds the images of "docker|podman pull|run" commands in a
// script. It is deliberately narrow: anything it is not sure about is not
// reported, because an invented reference is worse than a missed one here.
func shellImages(script string) []shellRef {
	type word struct {
		text string
		i    int
	}
	var words []word
	flush := func(w []word) []shellRef {
		var out []shellRef
		for k := 0; k+1 < len(w); k++ {
			tool := w[k].text
			if tool != "docker" && tool != "podman" {
				continue
			}
			j := k + 1
			if j+1 < len(w) && (w[j].text == "image" || w[j].text == "container") {
				j++
			}
			verb := w[j].text
			flags := runValueFlags
			switch verb {
			case "pull":
				flags = pullValueFlags
			case "run", "create":
			default:
				continue
			}
			for j++; j < len(w); j++ {
				t := w[j].text
				if t == `\` {
					continue
				}
				if strings.HasPrefix(t, "-") {
					if !strings.Contains(t, "=") && flags[t] {
						j++
					}
					continue
				}
				if strings.ContainsAny(t[:1], `"'`) {
					break // quoted: not sure of the exact text
				}
				out = append(out, shellRef{text: t, index: w[j].i, cmd: tool + " " + verb})
				break
			}
		}
		return out
	}
	var out []shellRef
	for i := 0; i < len(script); {
		c := script[i]
		switch {
		case c == ' ' || c == '\t':
			i++
		case c == '\\' && i+1 < len(script) && script[i+1] == '\n':
			i += 2 // line continuation
		case c == '\n' || c == ';' || c == '|' || c == '&' || c == '(' || c == ')':
			out = append(out, flush(words)...)
			words = words[:0]
			i++
		default:
			j := i
			for j < len(script) && !strings.ContainsRune(" \t\n;|&()", rune(script[j])) {
				j++
			}
			words = append(words, word{script[i:j], i})
			i = j
		}
	}
	return append(out, flush(words)...)
}
