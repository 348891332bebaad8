package main

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
)

// runShell is the fake container's process table: it runs argv with the
// given streams and returns the exit code. stdin is nil when the caller did
// not ask for it (exec without -i). It knows echo, cat, true, false,
// sleep, exit and "sh -c SCRIPT" where SCRIPT is commands joined by ";" or
// "&&" (enough for "sh -c 'echo x; exit 3'"); anything else exits 127.
func runShell(argv []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(argv) == 0 {
		fmt.Fprintln(stderr, "fakeapi shell: no command")
		return 126
	}
	cmd := argv[0]
	if i := strings.LastIndexByte(cmd, '/'); i >= 0 {
		cmd = cmd[i+1:] // /bin/sh and sh are the same
	}
	switch cmd {
	case "echo":
		fmt.Fprintln(stdout, strings.Join(argv[1:], " "))
		return 0
	case "cat":
		if stdin != nil {
			io.Copy(stdout, stdin)
		}
		return 0
	case "true":
		return 0
	case "false":
		return 1
	case "exit":
		if len(argv) > 1 {
			n, _ := strconv.Atoi(argv[1])
			return n & 0xff
		}
		return 0
	case "sleep":
		if len(argv) > 1 {
			if f, err := strconv.ParseFloat(argv[1], 64); err == nil {
				time.Sleep(time.Duration(f * float64(time.Second)))
			}
		}
		return 0
	case "sh", "bash", "ash":
		if len(argv) >= 3 && argv[1] == "-c" {
			return runScript(argv[2], stdin, stdout, stderr)
		}
		if stdin != nil { // "sh" reading a script from stdin
			b, _ := io.ReadAll(stdin)
			return runScript(string(b), nil, stdout, stderr)
		}
		return 0
	}
	fmt.Fprintf(stderr, "fakeapi shell: %s: not found\n", argv[0])
	return 127
}

// runScript runs "a; b && c" left to right. "exit N" ends the script; after
// "&&" a non-zero status skips the rest, as sh does.
func runScript(script string, stdin io.Reader, stdout, stderr io.Writer) int {
	status := 0
	for _, stmt := range strings.Split(script, ";") {
		for i, part := range strings.Split(stmt, "&&") {
			if i > 0 && status != 0 {
				break
			}
			words := splitWords(part)
			if len(words) == 0 {
				continue
			}
			status = runShell(words, stdin, stdout, stderr)
			if words[0] == "exit" {
				return status
			}
		}
	}
	return status
}

// splitWords splits on blanks, honouring single and double quotes.
func splitWords(s string) []string {
	var words []string
	var cur strings.Builder
	inWord := false
	var quote byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case quote != 0 && c == quote:
			quote = 0
		case quote != 0:
			cur.WriteByte(c)
		case c == '\'' || c == '"':
			quote, inWord = c, true
		case c == ' ' || c == '\t' || c == '\n':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words
}
