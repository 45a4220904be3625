"""The floor judges a simple command once for all the directories where the answer cannot differ
(floor_cmd: "one simple command in many directories"). What that rests on is checked here
against the checks themselves: a command `_blind` says is blind gets the same answer from
`_check_simple` in every neutral directory (and in the unknown one, for `unknown`), and a line
`_invariant` says is invariant gets the same answer from `_check` in all of them — for the
adversarial suite, tricky words and generated commands."""

from __future__ import annotations

import shlex

from hypothesis import given, settings
from hypothesis import strategies as st

from cmdop.core.policy import floor_cmd as fc
from cmdop.core.policy.adversarial import ADVERSARIAL
from cmdop.core.policy.commands import unwrap
from cmdop.core.policy.shell import analyse

HOME = "/home/u"
EXTRAS = ((), ("/srv/state/cmdop", "/opt/cmdop"))
# Neutral directories, and places that are not: the protected trees, what lies above them, the
# top level, devices, /proc, globs, relative or unfolded spellings.
NEUTRAL = ("/srv/app", "/srv/app/sub", "/opt/x/y", "/var/tmp/z", "/tmp/w", "/private/x", "/srv/state/other", "/data",
           "/work")
NOT_NEUTRAL = (None, "/", "/etc", "/etc/ssh", "/usr", "/var", "/home", HOME, HOME + "/proj", HOME + "/.config",
               HOME + "/Library", "/dev", "/dev/shm/x", "/proc/1", "/private", "/private/etc/x", "/System/y",
               "/srv/ap*", "srv/app", "/srv/../etc", "/srv//app", "/srv/app/", "/srv/.ssh", "/srv/état")
NOT_NEUTRAL_WITH_EXTRA = ("/srv/state", "/srv/state/cmdop", "/srv/state/cmdop/x", "/opt/cmdop", "/opt")
WORDS = ["x", "app", "-la", "-rf", "-r", "-n", "5", "--all", "--no-pager", "etc", "usr", "var", "Library",
         "Keychains", ".config", "cmdop", "systemd", "user", ".", "..", "./x", "../x", "../../etc", "a/../..",
         ".env", ".ssh", ".ssh/id_rsa", "x/.env", ".bashrc", "~", "~/x", "~/.ssh", "~+", "~-", "~root",
         "~root/..", "*", ".*", "*.py", "[.]env", "e*", "/*", "/etc", "/etc/passwd", "/dev/sda", "/dev/null",
         "sda", "stdin", "fd/0", "dev/sda", "$X", '"$X"/etc', "$X/etc", "${X}x", "-C", "-Cetc", "-C..",
         "--directory=..", "--directory=etc", "of=sda", "of=/dev/sda", "if=../dev/sda", "a:..", "a,..",
         "x@..", "a=.env", "file:../x", "file:///etc/passwd", "http://h/x", "h:/etc", "-delete", "-exec",
         "{}", "+", ";", "-name", "-o", "src", "a b", "rm -rf ..", "cat .env", "x | sh", "cd .. && rm -rf x",
         "cat ../.env", "tar czf - ..", "ls x", "--cmd=rm -r ..", "-s", "--recursive", "rm", "sh", "-c",
         "x;rm", 'open("../etc/passwd")', "print('.env')", "X=../..; cat $X/etc/passwd", "cd x; rm -rf *",
         "-R", "-a", "czf", "cf", "-", "/srv/app", "/srv/app/x", "shadow", "/proc/self/fd/0", "proc", "dev",
         "'", "\\x", "$(echo ..)", "`echo x`"]
PROGRAMS = ["rm", "find", "tar", "cp", "chmod", "ln", "ln -s", "grep", "grep -r", "ls", "du", "cat", "echo",
            "dd", "tee", "mv", "rsync -a", "zip -r", "sudo rm", "env", "nice", "git", "curl", "docker",
            "python3 -c", "awk", "sed", "rg", "fd", "xargs", "unlink", "rmdir", "shred", "mkfs", "cd", "X=1",
            "$X", "./run", "make", "kubectl", "ssh h", "fdisk", "wc", "sort", "ls -d", "strace", "xyz", "eval",
            "watch", "flock l", "timeout 5"]
# Lines where one condition of `_blind` or `_invariant` alone keeps the answers apart.
TRICKY = ["eval cd x\\;rm -rf \\*", "eval 'cd x; rm -rf *'", "strace rm -rf usr", "xyz rm -rf usr",
          "xyz sh -c 'cat ../.env'", "python3 -c 'open(\"../etc/passwd\")'",
          "python3 -c 'open(\"../../etc/passwd\")'", "awk 'BEGIN{print \"../../etc/x\"}'",
          "docker run x 'X=../..; cat $X/etc/passwd'", "docker run x 'cd ../..; cat etc/passwd'",
          "docker run x 'rm -rf usr'", "xyz 'f() { cat ../../etc/passwd; }; f'", "xyz \"$(cat ../../etc/x)\"",
          "find -delete", "find . -delete", "rm -rf *", "rm -rf .", "xargs rm -rf < list", "tar -C .. -czf x .",
          "ln -s . /tmp/l", "cp -r . /tmp/x", "cat ./../../etc/passwd", "echo x | xargs cat ../../etc/passwd",
          "echo usr | xargs rm -rf", "echo -rf usr | xargs rm", "echo ../../etc | xargs cat", "rm usr",
          "rm -f usr", "xyz rm usr", "xyz rm -r usr", "find usr -name x", "find usr -delete", "find -exec rm {} +",
          "parallel rm -rf ::: usr", "find /srv -name '*.py' | xargs rm -rf", "xargs -a list rm -rf",
          "echo usr | xargs -I{} xyz -rf {}"]


def _judged_alike(text: str, extra: tuple[str, ...]) -> None:
    """For each simple command of `text` (a line that sets no variable): blind → one answer."""
    analysis = analyse(text)
    if analysis.assignments or analysis.functions or any(c.assigns for c in analysis.commands):
        return
    tainted = fc._tainted(analysis)
    argvs = fc._Argvs(HOME, {})
    for cmd in analysis.commands:
        un = unwrap(cmd)
        stdin = cmd.stdin
        for unknown in (False, True):
            if fc._blind(cmd, un, argvs, {}, HOME, 0, extra) < (fc.BLIND_UNKNOWN if unknown else fc.BLIND_NEUTRAL):
                continue
            places = [*NEUTRAL, *([None] if unknown else [])]
            answers = {fc._check_simple(cmd, un, stdin, {}, HOME, cwd, 0, extra, tainted, argvs) for cwd in places}
            assert len(answers) == 1, (text, unknown, answers)
    for cmd in analysis.commands:       # the lines its arguments hold
        for w in argvs(cmd.words):
            for _, line in fc._lines_in(w):
                for unknown in (False, True):
                    if fc._invariant(line, HOME, 1, extra) >= (fc.BLIND_UNKNOWN if unknown else fc.BLIND_NEUTRAL):
                        places = [*NEUTRAL, *([None] if unknown else [])]
                        answers = {fc._check(line, HOME, cwd, 1, extra) for cwd in places}
                        assert len(answers) == 1, (line, unknown, answers)


def test_neutral_directories() -> None:
    for extra in EXTRAS:
        assert all(fc._neutral(d, HOME, extra) for d in NEUTRAL)
        assert not any(fc._neutral(d, HOME, extra) for d in NOT_NEUTRAL)
    assert all(fc._neutral(d, HOME, ()) for d in NOT_NEUTRAL_WITH_EXTRA)
    assert not any(fc._neutral(d, HOME, EXTRAS[1]) for d in NOT_NEUTRAL_WITH_EXTRA)


def test_cwd_free_words() -> None:
    free = ["x", "-la", "etc", ".", "./x", ".env", "x/.env", "*", "*.py", "$X", "/etc", "/x/../..", "~", "~/x",
            "-Cetc", "of=/dev/sda", "a:b", "http://h/x", "--x=y"]
    bound = ["..", "../x", "a/../..", "~+", "~root", "-C..", "--directory=..", "a:..", "a,..", "x@..", "file:x",
             "if=../dev/sda", "état", "x=~+"]
    assert all(fc._cwd_free(w.replace("$X", fc.UNKNOWN), HOME) == fc.BLIND_UNKNOWN for w in free)
    assert not any(fc._cwd_free(w, HOME) for w in bound)
    assert fc._cwd_free(fc.UNKNOWN + "/etc", HOME) == fc.BLIND_NEUTRAL


def test_adversarial_commands_are_judged_alike_where_blind() -> None:
    for extra in EXTRAS:
        for tool, target, _, _ in ADVERSARIAL:
            if tool == "execute_command":
                _judged_alike(target, extra)


def test_tricky_lines_are_judged_alike_where_blind() -> None:
    for extra in EXTRAS:
        for text in TRICKY:
            _judged_alike(text, extra)


def test_tricky_words_are_judged_alike_where_blind() -> None:
    for prog in PROGRAMS:
        for w in WORDS:
            q = shlex.quote(w) if " " in w else w
            _judged_alike(f"{prog} {q}", EXTRAS[1])
            _judged_alike(f"{prog} -rf {q} /srv/app", ())
            _judged_alike(f"echo {q} | {prog} x", ())


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(PROGRAMS), st.lists(st.sampled_from(WORDS), max_size=4),
                          st.sampled_from([" && ", " | ", "; ", " > ", " < "])), min_size=1, max_size=4),
       st.sampled_from(EXTRAS))
def test_generated_commands_are_judged_alike_where_blind(parts: list[tuple[str, list[str], str]],
                                                        extra: tuple[str, ...]) -> None:
    text = "".join(f"{prog} {' '.join(shlex.quote(w) if ' ' in w else w for w in words)}{sep}"
                   for prog, words, sep in parts) + "true"
    _judged_alike(text, extra)
