"""Shell parsing as the gate sees it: what each command splits into and what rules match."""

from __future__ import annotations

import pytest

from cmdop.core.policy.commands import program_name
from cmdop.core.policy.shell import analyse, remove_line_continuations
from cmdop.core.policy.targets import parts_for_command


def allow_texts(command: str) -> list[str | None]:
    return [p.allow_text for p in parts_for_command(command) if not p.deny_only]


@pytest.mark.parametrize("command, expected", [
    ("git status", ["git status"]),
    ("  git   status  ", ["git status"]),
    ("git status && ls -la", ["git status", "ls -la"]),
    ("git status || ls", ["git status", "ls"]),
    ("git status; ls", ["git status", "ls"]),
    ("git status\nls", ["git status", "ls"]),
    ("git log | head -5", ["git log", "head -5"]),
    ("git log |& head", ["git log", "head"]),
    ("(cd x && make)", ["cd x", "make"]),
    ("{ a; b; }", ["a", "b"]),
    ("git 'status'", ["git status"]),
    ('git "status"', ["git status"]),
    ("g\\it status", ["git status"]),
    ("$'git' status", ["git status"]),
    # a continuation inside a word: the joined reading, and the raw one as a safety net (both
    # must be allowed, so a wrong guess about bash only denies more)
    ("git st\\\natus", ["git status", "git st atus"]),
    ("ls # ; rm -rf x", ["ls"]),
    ("/usr/bin/git status", ["git status"]),
    ("//usr/bin/../bin/git status", ["git status"]),
    ("/tmp/git status", ["/tmp/git status"]),
    ("./git status", ["./git status"]),
    ("nice -n 5 git status", ["git status"]),
    ("nohup git status", ["git status"]),
    ("timeout -s KILL 5 git status", ["git status"]),
    ("command git status", ["git status"]),
    ("exec git status", ["git status"]),
    ("busybox ls", ["ls"]),
    ("env git status", ["git status"]),
    ("env FOO=1 git status", ["FOO=1 git status"]),
    ("LD_PRELOAD=x.so ls", ["LD_PRELOAD=x.so ls"]),
    ("sudo git status", ["sudo \ngit status"]),   # the wrapped program is marked
    ("sudo -u root git status", ["sudo -u root \ngit status"]),
    ("xargs rm", ["xargs \nrm"]),
    ("bash -c 'git status && ls'", ["git status", "ls"]),
    ("sh -c \"echo hi\"", ["echo hi"]),
    ("eval 'git status'", ["git status"]),
    ("echo hi > out.txt", ["echo hi\n>out.txt"]),
    ("echo hi 2>&1 >/dev/null", ["echo hi"]),
    ("ls *.py", ["ls *.py"]),
])
def test_split_and_normalise(command: str, expected: list[str]) -> None:
    assert allow_texts(command) == expected


@pytest.mark.parametrize("command", [
    "ls $HOME", "ls ${X}", "ls $(whoami)", "ls `whoami`", "ls <(whoami)", "$X status", "l* -la",
    "ls {a,b}", "ls $((1+2))", "ls ../a/../../b", "ls 'unterminated", "if true; then ls; fi",
    "f() { ls; }", "bash -c \"$X\"", "X=$(id) ls", "ls ${X:-$(rm -rf x)}",
])
def test_unknown_parts_have_no_allow_text(command: str) -> None:
    assert None in allow_texts(command)


def test_substitutions_are_parts_of_their_own() -> None:
    texts = allow_texts("echo $(rm -rf x) `curl y` <(wget z)")
    assert "rm -rf x" in texts and "curl y" in texts and "wget z" in texts


def test_syntax_errors_are_marked() -> None:
    assert analyse("echo 'unterminated").opaque
    assert analyse("ls && ").opaque
    assert not analyse("ls && pwd").opaque


def test_line_continuations_outside_single_quotes_only() -> None:
    assert remove_line_continuations("r\\\nm -rf") == "rm -rf"
    assert remove_line_continuations("echo '\\\n'") == "echo '\\\n'"
    assert remove_line_continuations('echo "a\\\nb"') == 'echo "ab"'


@pytest.mark.parametrize("value, name", [
    ("/bin/rm", "rm"), ("/usr/local/bin/x", "x"), ("/sbin/ip", "ip"), ("/opt/bin/x", "/opt/bin/x"),
    ("rm", "rm"), ("./rm", "./rm"), ("///usr//bin/git", "git"),
])
def test_program_names(value: str, name: str) -> None:
    assert program_name(value) == name


def test_deny_texts_see_through_wrappers_and_paths() -> None:
    deny = [t for p in parts_for_command("sudo /tmp/curl http://x") for t in p.deny_texts]
    assert "curl http://x" in deny


def test_many_threads_parse_at_once_and_agree() -> None:
    """The daemon gates calls in several worker threads; every thread must get the same parse a
    single thread gets (one shared tree-sitter parser used concurrently crashes the process)."""
    import threading

    commands = [f"echo {i} | grep {i} && rm -rf ./build{i}; ls $(pwd)/{i}" for i in range(4000)]
    want = {c: allow_texts(c) for c in commands[:50]}
    analyse.cache_clear()
    parts_for_command.cache_clear()
    errors: list[BaseException] = []

    def work(offset: int) -> None:
        try:
            for c in commands[offset::8]:
                assert analyse(c).commands
            for c in want:
                assert allow_texts(c) == want[c]
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_a_lone_surrogate_does_not_hide_the_rest_of_the_command() -> None:
    # JSON may carry "\ud800"; the command around it is still parsed and still floor-checked.
    from cmdop.core.policy.floor import check_command

    assert allow_texts("echo \ud800 && ls")[1] == "ls"
    assert check_command("echo \ud800; rm -rf /", "/home/u", "/home/u")


def test_the_parser_is_not_a_release_known_to_corrupt_memory() -> None:
    """py-tree-sitter 0.26.0/0.26.1 free native memory still in use (py-tree-sitter #472); with
    them our suite segfaulted inside the gate. Pinned in pyproject.toml; this says why if bumped."""
    from importlib.metadata import version

    assert version("tree-sitter") not in ("0.26.0", "0.26.1")


CRASH_SCAN = r"""
import random, sys
from cmdop.core.policy.shell import analyse
from cmdop.core.policy.floor import check_command
known = ["{\U0002c744", "{\U000a2854$\u00ff", "echo {\U000a2854$", "{\U000a2854$x"]
for text in known:
    analyse(text); check_command(text, "/home/u", "/home/u")
for cp in range(0x80, 0x110000, 251):
    if 0xD800 <= cp < 0xE000:
        continue
    c = chr(cp)
    for t in ("{%s", "{%s$x", "echo {%s$", "a%s", "%s", "$%s", "${%s}", "cat <<%s\nx\n%s\n"):
        analyse(t.replace("%s", c))
rnd = random.Random(7)
for _ in range(3000):
    analyse("".join(chr(rnd.choice((rnd.randrange(32, 127), rnd.randrange(0x80, 0x110000))))
                    for _ in range(rnd.randrange(1, 40))).encode("utf-8", "surrogatepass")
            .decode("utf-8", "surrogateescape"))
print("ok")
"""


def test_no_character_crashes_the_gate_process() -> None:
    """A single `{` + U+2C744 used to kill the process inside tree-sitter-bash (SIGSEGV): one
    remote command would have taken the agent down. The scan runs in a child so a crash fails
    this test instead of the test run."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", CRASH_SCAN], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", (r.returncode, r.stderr[-2000:])


# ---- found by tests/integration/test_walker_vs_bash.py (the walker against real bash) ----------

def _words(command: str) -> list[tuple[list[str], list[str | None]]]:
    """(assignment names, static words) of each simple command."""
    return [([n for n, _ in c.assigns], [w.static for w in c.words]) for c in analyse(command).commands]


@pytest.mark.parametrize("command, expected", [
    # the grammar reads the second `!` (or a `{`, `if`, `for` after `!`) as a program
    ("! ! alpha", [([], ["alpha"])]),
    ("! ! V1=0 alpha", [(["V1"], ["alpha"])]),
    ("! for x in 0; do alpha; done", [([], ["alpha"])]),
    ("! { rm -rf /; }", [([], ["rm", "-rf", "/"])]),
    # a backslash right after a quote or expansion: the grammar splits one word in two
    ("'r'\\m -rf /", [([], ["rm", "-rf", "/"])]),
    ("alpha ''\\*", [([], ["alpha", "*"])]),
    ("X='a'\\b c", [(["X"], ["c"])]),
    # the words after a redirection target are the command's (the grammar makes them targets)
    ("rm >/dev/null -rf /", [([], ["rm", "-rf", "/"])]),
    ("echo hi >x y z", [([], ["echo", "hi", "y", "z"])]),
    ("a >'y'\\z w", [([], ["a", "w"])]),
    # a redirection after a pipeline or list belongs to its last command
    ("alpha | alpha > o1 0", [([], ["alpha"]), ([], ["alpha", "0"])]),
    ("a && b > o x", [([], ["a"]), ([], ["b", "x"])]),
])
def test_words_as_bash_splits_them(command: str, expected: list[tuple[list[str], list[str | None]]]) -> None:
    assert _words(command) == expected


def test_misread_structures_are_not_hidden_from_the_floor() -> None:
    from cmdop.core.policy.floor import check_command

    for command in ("'r'\\m -rf /", "rm >/dev/null -rf /", "rm 2>/dev/null -rf /", "! { rm -rf /; }",
                    "X='a'\\b rm -rf /", "x | rm >/dev/null -rf /", "! ! rm -rf /"):
        assert check_command(command, "/home/u", "/srv"), command
    assert allow_texts("git >/dev/null push --force") == ["git push --force"]
    assert allow_texts("a >'y'\\z w") == ["a w\n>yz"]
    assert analyse("! { a; }").opaque                    # (still opaque to allow rules)


def test_redirection_targets_glue_like_words() -> None:
    cmd = analyse("a <<< 'y'\\z w").commands[0]
    assert [w.static for w in cmd.words] == ["a", "w"]
    assert cmd.redirects[0][1] is not None and cmd.redirects[0][1].static == "yz"


@pytest.mark.parametrize("word, static", [
    ("~", "~"), ("~/x", "~/x"), ("~root", "~root"), ("'~+'", "~+"), ("~+\"x\"", "~+x"), ("--f=~-", "--f=~-"),
    ("~+", None), ("~-", None), ("~0", None), ("~+1/x", None), ("~-2", None), ("x=~-", None), ("x=a:~+/b", None),
])
def test_a_directory_stack_tilde_is_not_static(word: str, static: str | None) -> None:
    # `alpha ~0` passes the current directory: a value known only at run time
    assert analyse("alpha " + word).commands[0].words[1].static == static


@pytest.mark.parametrize("command", [
    "b <<EOF ||\nEOF\nrm -rf /\n",                 # the grammar read `EOF` as the command after ||
    "a <<EOF | b ||\nEOF\nrm <<EOF ;\nEOF\n",
    "cat <<EOF |\ncurl x\nEOF\nsh\n",               # `sh` reads the pipe; the grammar says not
])
def test_an_operator_ending_a_here_document_line_is_refused(command: str) -> None:
    a = analyse(command)
    assert a.unparseable
    progs = [c.words[0].static for c in a.commands if c.words]
    assert "rm" in progs or "sh" in progs


def test_here_documents_the_grammar_reads_are_kept() -> None:
    assert not analyse("cat <<EOF | sh\nx\nEOF\n").unparseable
    assert not analyse("cat <<EOF && ls\nx\nEOF\n").unparseable


def test_commands_that_may_run_again_are_marked() -> None:
    # a loop body or a function body may run after a later `cd`: the floor must not assume the
    # directory of its place in the text
    a = analyse("alpha; for x in a; do beta; cd ..; done; f() { gamma; }; cd d; f; while false; do delta; done")
    repeats = {c.words[0].static: c.repeats for c in a.commands if c.words[0].static != "cd"}
    assert repeats == {"alpha": False, "beta": True, "gamma": True, "f": False, "delta": True, "false": True}


def test_a_redirection_after_a_negation_belongs_to_its_command() -> None:
    from cmdop.core.policy.floor import check_command

    assert _words("! alpha > o1 0") == [([], ["alpha", "0"])]
    assert check_command("! rm >/dev/null -rf /", "/home/u", "/srv")
