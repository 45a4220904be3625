"""The static walker against real bash: a differential test.

Hypothesis writes small shell texts in the part of the language the walker claims to understand;
real bash runs each one in a harness where every external program is a stub that records its argv
and the directory it ran in, and nothing real can run. The walker's view of the same text
(`shell.analyse`, plus the floor's `cd` tracking) must account for every command bash ran:

- it may over-approximate (both branches of an `if`, a loop body that never runs, builtins);
- it must never miss a command that ran, nor mis-state its program;
- where it says a word is static (`Word.static`) bash must have passed exactly that argument, and
  where it says a substitution's output is known (EVAL) bash must have passed that output;
- the directory the command ran in must be one the floor thinks the line may be in.

A disagreement is excused only when the walker marked the text as one it cannot understand
(`Analysis.unparseable`, which no mode allows). Every other one fails with the text, bash's log
and the walker's view.

The harness: PATH holds only the stub directory, so a name bash does not find as a builtin or a
function is a stub or "command not found"; the generator writes no path to a program, no `exec`,
`command -p`, `enable`, `hash`, `source` or `eval`, so nothing but builtins and stubs can run.
Each stub is a bash script (builtins only) that writes its name, `pwd -P` and its arguments,
NUL-separated (arguments cannot hold a NUL, so any byte survives), to a file of its own.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given, note, settings
from hypothesis import strategies as st

from cmdop.core.policy import floor_cmd
from cmdop.core.policy.commands import unwrap
from cmdop.core.policy.shell import EVAL, LIT, RAW, SimpleCommand, Word, analyse

BASH = "/bin/bash"
STUBS = {"alpha": 0, "beta": 0, "gamma": 0, "delta": 1}     # name -> exit status
FUNCS = ("fa", "fb")
VARS = ("V1", "V2")
DIRS = ("d1", "d2", "d1/d3")

pytestmark = pytest.mark.skipif(not os.access(BASH, os.X_OK), reason="needs /bin/bash")

STUB = """#!/bin/bash
here=$(pwd -P)
printf '%s\\0' "${0##*/}" "$here" "$@" > "$STUB_LOG/$$.$RANDOM$RANDOM"
exit {status}
"""


@dataclass
class Harness:
    root: Path
    stubs: Path
    home: Path
    cwd: Path
    log: Path

    def run(self, text: str) -> tuple[list[tuple[str, str, tuple[str, ...]]], subprocess.CompletedProcess[bytes]]:
        """Run `text` in bash; the (program, cwd, args) of every stub that ran."""
        for f in self.log.iterdir():
            f.unlink()
        env = {"PATH": str(self.stubs), "HOME": str(self.home), "STUB_LOG": str(self.log), "LC_ALL": "C"}
        r = subprocess.run([BASH, "--norc", "--noprofile", "-c", text], cwd=self.cwd, env=env,
                           capture_output=True, timeout=30, stdin=subprocess.DEVNULL)  # only a hang guard
        runs = []
        for f in sorted(self.log.iterdir()):
            fields = f.read_bytes().split(b"\0")[:-1]
            name, cwd, *args = (x.decode("utf-8", "surrogateescape") for x in fields)
            runs.append((name, cwd, tuple(args)))
        return runs, r


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Harness:
    root = Path(os.path.realpath(tmp_path_factory.mktemp("walker-vs-bash")))
    stubs, home, cwd, log = root / "stubs", root / "home", root / "cwd", root / "log"
    for d in (stubs, home, cwd, log):
        d.mkdir()
    for name, status in STUBS.items():
        p = stubs / name
        p.write_text(STUB.replace("{status}", str(status)))
        p.chmod(0o755)
    for sub in DIRS:
        (cwd / sub).mkdir(parents=True)
    (cwd / "in1").write_text("input\n")
    return Harness(root, stubs, home, cwd, log)


# ---- the generator -------------------------------------------------------------------------
# Commands are a small AST rendered to text, so here-documents can be placed where bash reads
# their bodies (after the next newline): render() returns (text, bodies still to write).

SAFE = "abcxyz019._-"
lits = st.text(alphabet=SAFE, min_size=1, max_size=4)
quoted_chars = st.text(alphabet="ab $`\"*?{},;|&()<>\\~#=", max_size=5)
dq_piece = st.one_of(
    st.text(alphabet="ab *?{},;|&()<>~#'=", min_size=1, max_size=3),
    st.sampled_from(["\\$", '\\"', "\\\\", "\\`", "$V1", "${V2}", "\\a"]),
)


def words(subs: st.SearchStrategy[str] | None) -> st.SearchStrategy[str]:
    """One shell word; `subs`: the text of a command list to put in `$(...)`."""
    pieces: list[st.SearchStrategy[str]] = [
        lits,
        quoted_chars.map(lambda s: "'" + s.replace("'", "") + "'"),
        st.lists(dq_piece, max_size=3).map(lambda p: '"' + "".join(p) + '"'),
        st.sampled_from(["a\\ b", "\\*", "\\$V1", "x\\;", "\\~"]),
        st.sampled_from(["$V1", "${V2}", '"$V1"', "${V1:-dflt}", "${V2:+alt}", "${#V1}", "${V1%a}",
                         '"${V1:-d f}"', "$V2"]),
        st.sampled_from(["$((1+2))", "$((V1+1))", "$[2*3]"]),
        st.sampled_from(["{a,b}", "x{1..3}", "{a,b}c", "{x}", "{,}"]),
        st.sampled_from(["nomatch*", "zz?q", "[q]zz", "d*", "*3", "d?"]),
        st.sampled_from(["~", "~/x", "x=~", "a:~", "~nouser", "x=~/y", "'~'"]),
        st.tuples(st.sampled_from(["echo", "echo -n", "printf %s", "echo -e"]),
                  st.lists(lits, min_size=1, max_size=2)).map(
            lambda t: "$(" + t[0] + " " + " ".join(t[1]) + ")"),
        st.tuples(st.sampled_from(["echo", "printf %s"]), lits).map(lambda t: '"$(' + t[0] + " " + t[1] + ')"'),
    ]
    if subs is not None:
        pieces += [
            subs.map(lambda s: "$( " + s + " )"),
            subs.map(lambda s: '"$( ' + s + ' )"'),
            simple_text(None).map(lambda s: "`" + s + "`"),
        ]
    one = st.one_of(*pieces)
    return st.one_of(one, st.tuples(one, one).map("".join))


def simple_text(subs: st.SearchStrategy[str] | None) -> st.SearchStrategy[str]:
    """A simple command's text, no here-document (backquote bodies, $(...) lists)."""
    return st.tuples(st.sampled_from(sorted(STUBS)), st.lists(words(None), max_size=2)).map(
        lambda t: " ".join([t[0], *t[1]]))


inner_list = st.lists(simple_text(None), min_size=1, max_size=2).map("; ".join)
_WORD = words(inner_list)


@st.composite
def word(draw: Any) -> str:
    """(A composite only to keep the strategy's repr short.)"""
    return str(draw(_WORD))


WORD = word()

redirect = st.sampled_from(["> o1", ">> o2", "2> o3", "< in1", "&> o4", ">/dev/null", "2>&1", "<<< hs",
                            "<<< \"$V1\"", "<<< $(gamma hs)"])
heredoc_line = st.one_of(
    st.text(alphabet="ab *?{}~'\"", min_size=0, max_size=4),
    st.sampled_from(["$V1", "$(gamma doc)", "`beta doc`", "\\$(delta no)", "${V2:-$(alpha d)}", "$((1+1))"]),
)
heredoc = st.tuples(
    st.sampled_from(["<<EOF", "<<'EOF'", "<<-EOF", '<<"EOF"', "<< EOF"]),
    st.lists(st.lists(heredoc_line, max_size=3).map(" ".join), max_size=2),
).map(lambda t: (t[0], "\n".join(("\t" + line if t[0] == "<<-EOF" else line) for line in t[1]) + "\nEOF"
                 if t[1] else "EOF"))

Node = tuple[Any, ...]


@st.composite
def simple_node(draw: Any) -> Node:
    prog = draw(st.sampled_from([*sorted(STUBS), *FUNCS, "true", "false", ":", "echo"]))
    assigns = draw(st.lists(st.tuples(st.sampled_from(VARS), WORD).map(lambda t: t[0] + "=" + t[1]), max_size=1))
    args = draw(st.lists(WORD, max_size=3))
    redirs = draw(st.lists(redirect, max_size=1))
    doc = draw(st.none() | heredoc)
    words = [prog, *args]
    for r in redirs:        # a redirection may stand anywhere after the assignments
        words.insert(draw(st.integers(0, len(words))), r)
    text = " ".join([*assigns, *words] + ([doc[0]] if doc else []))
    return ("simple", text, [doc[1]] if doc else [])


leaf = st.one_of(
    simple_node(),
    simple_node(),
    st.sampled_from(["d1", "d2", "..", "d1/d3", "nope", "~", "-", '"$V1"']).map(lambda d: ("simple", "cd " + d, [])),
    st.tuples(st.sampled_from(VARS), WORD).map(lambda t: ("simple", t[0] + "=" + t[1], [])),
)


def compound(children: st.SearchStrategy[Node]) -> st.SearchStrategy[Node]:
    body = st.lists(st.tuples(children, st.sampled_from([";", "&&", "||", "\n"])), min_size=1, max_size=3)
    return st.one_of(
        st.lists(children, min_size=2, max_size=3).map(lambda cs: ("pipe", cs)),
        body.map(lambda b: ("sub", b)),
        body.map(lambda b: ("group", b)),
        st.tuples(body, body, st.none() | body).map(lambda t: ("if", *t)),
        st.tuples(st.lists(lits, min_size=1, max_size=2), body).map(lambda t: ("for", *t)),
        st.tuples(st.sampled_from(["false", "delta", "! true"]), body).map(lambda t: ("while", *t)),
        st.tuples(st.sampled_from(FUNCS), body.filter(_calls_no_function)).map(lambda t: ("func", *t)),
        children.map(lambda c: ("not", c)),
        st.tuples(st.sampled_from(["sub", "group"]), body, redirect).map(lambda t: ("redir", *t)),
    )


def _calls_no_function(body: list[tuple[Node, str]]) -> bool:
    """Function bodies call no function (no recursion: every text ends)."""
    return not any(f in repr(body) for f in FUNCS)


def render(node: Node) -> tuple[str, list[str]]:
    kind = node[0]
    if kind == "simple":
        return node[1], list(node[2])
    if kind == "pipe":
        rendered = [render(c) for c in node[1]]
        return " | ".join(t for t, _ in rendered), [b for _, bs in rendered for b in bs]
    if kind == "not":
        negated, later = render(node[1])
        return "! " + negated, later
    if kind == "sub":
        return "( " + render_list(node[1]) + " )", []
    if kind == "group":
        return "{ " + render_list(node[1]) + " }", []
    if kind == "if":
        text = "if " + render_list(node[1]) + " then " + render_list(node[2])
        if node[3] is not None:
            text += " else " + render_list(node[3])
        return text + " fi", []
    if kind == "for":
        return "for x in " + " ".join(node[1]) + "; do " + render_list(node[2]) + " done", []
    if kind == "while":
        return "while " + node[1] + "; do " + render_list(node[2]) + " done", []
    if kind == "func":
        return node[1] + "() { " + render_list(node[2]) + " }", []
    if kind == "redir":
        inner = render(("sub" if node[1] == "sub" else "group", node[2]))[0]
        return inner + " " + node[3], []
    raise AssertionError(kind)


def render_list(items: list[tuple[Node, str]]) -> str:
    """A terminated list (ends in `;` or a newline); here-document bodies follow the newline
    after the command that reads them."""
    out = ""
    for i, (node, op) in enumerate(items):
        text, bodies = render(node)
        out += text
        last = i == len(items) - 1
        sep = ";" if last else op
        if bodies:
            out += (" " + sep if sep != "\n" else "") + "\n" + "".join(b + "\n" for b in bodies)
        else:
            out += ("" if sep in (";", "\n") else " ") + sep + ("" if last else " " if sep != "\n" else "")
    return out


program = st.recursive(leaf, compound, max_leaves=6)
texts = st.lists(st.tuples(program, st.sampled_from([";", "&&", "||", "\n"])), min_size=1, max_size=3).map(
    render_list)


# ---- the comparison ------------------------------------------------------------------------

def _tilde(value: str, home: str) -> str:
    """`value` with bash's tilde expansion: a leading `~` or `~/`, and in a word that looks like
    an assignment (`x=~/y`, `a=b:~`) every `~` after the `=` or a `:`. The walker keeps `~` as
    written in a static word (rules spell it that way; the floor expands it): a spelling."""
    def at_sites(text: str, pattern: str) -> str:
        return re.sub(pattern, lambda m: m.group(1) + home, text)
    out = at_sites(value, r"^()~(?=/|$)")
    if re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", out):
        name, _, rest = out.partition("=")
        out = name + "=" + at_sites(rest, r"(^|:)~(?=[/:]|$)")
    return out


Claim = tuple[str, frozenset[str]]


def _claim(word: Word, home: str) -> Claim | None:
    """What the walker says bash makes of `word`: ("one", {v…}) exactly one argument, one of
    those (static: as written, or with `~` expanded); ("eval", {v}) a known substitution output
    (one argument v, or v split on blanks when unquoted); None: it does not know (any number of
    arguments)."""
    if word.static is not None:
        return ("one", frozenset({word.static, _tilde(word.static, home)}))
    if any(k == EVAL for k, _ in word.segments) and all(k in (LIT, RAW, EVAL) for k, _ in word.segments) \
            and not word.has_glob:
        return ("eval", frozenset({word.text(), _tilde(word.text(), home)}))
    return None


def _fits(claims: list[Claim | None], argv: tuple[str, ...]) -> bool:
    """Can the walker's words produce argv (argv[0] the program's name)?"""

    @lru_cache(maxsize=None)
    def go(i: int, j: int) -> bool:
        if i == len(claims):
            return j == len(argv)
        c = claims[i]
        if c is None:
            return any(go(i + 1, k) for k in range(j, len(argv) + 1))
        kind, values = c

        def same(k: int) -> bool:
            got = list(argv[j:k])
            if i == 0 and got:                  # the program: the stub logs its basename
                got[0] = got[0]
                return any(_as_program(v, kind) in (got, [got[0]] if k == j + 1 else None) for v in values)
            return any((k == j + 1 and got[0] == v) or (kind == "eval" and got == v.split()) for v in values)

        return any(same(k) and go(i + 1, k) for k in range(j + 1 if kind == "one" else j, len(argv) + 1))

    return go(0, 0)


def _as_program(value: str, kind: str) -> list[str]:
    words = value.split() if kind == "eval" else [value]
    if words:
        words[0] = words[0].rstrip("/").rsplit("/", 1)[-1]
    return words


def walker_view(text: str, base: str, home: str) -> tuple[Any, list[tuple[SimpleCommand, tuple[str | None, ...]]]]:
    """The walker's commands, each with the directories the floor thinks it may run in."""
    analysis = analyse(text)
    variables = {n: v.static for n, v in analysis.assignments if n and v.static is not None}
    cwds: list[str | None] = [base]
    out = []
    for cmd in analysis.commands:
        out.append((cmd, tuple(cwds)))
        after = floor_cmd._after_cd(cmd, unwrap(cmd), cwds, home, variables)
        if after != cwds and cmd.repeats and None not in after:
            # A `cd` that may run again (a loop, a function called twice) can go anywhere, as
            # floor_cmd._check_source has it (test_the_floor_tracks_cd_through_loops).
            after = [*after, None]
        cwds = after
    return analysis, out


def disagreements(text: str, runs: list[tuple[str, str, tuple[str, ...]]], base: str, home: str) -> list[str]:
    analysis, view = walker_view(text, base, home)
    if analysis.unparseable:
        return []
    problems = []
    for prog, cwd, args in runs:
        argv = (prog, *args)
        fitting = [(cmd, cwds) for cmd, cwds in view if cmd.words and _fits([_claim(w, home) for w in cmd.words], argv)]
        if not fitting:
            problems.append(f"missed: {argv!r} in {cwd}")
        elif not any(cwd in cwds or None in cwds or cmd.repeats for cmd, cwds in fitting):
            # (`repeats`: in a loop or a function body the command may run again after a later
            # `cd`; the floor judges it again in every directory the line reaches)
            problems.append(f"wrong directory: {argv!r} ran in {cwd}, the floor thinks "
                            f"{sorted({str(c) for _, cs in fitting for c in cs})}")
    return problems


def describe(text: str, base: str, home: str) -> str:
    analysis, view = walker_view(text, base, home)
    lines = [f"opaque: {analysis.opaque!r}"]
    for cmd, cwds in view:
        lines.append(f"  {[w.segments for w in cmd.words]} cwds={list(cwds)}")
    return "\n".join(lines)


def check(harness: Harness, text: str) -> None:
    runs, r = harness.run(text)
    base, home = str(harness.cwd), str(harness.home)
    problems = disagreements(text, runs, base, home)
    if problems:
        raise AssertionError(
            f"the walker disagrees with bash on {text!r}:\n" + "\n".join(problems)
            + f"\nbash ran: {runs!r}\nbash stderr: {r.stderr[-500:]!r}\nthe walker:\n{describe(text, base, home)}")


# The profile's budget (tests/conftest.py: `ci` 300, `dev` 150); WALKER_VS_BASH_EXAMPLES=N to search longer.
_MORE = int(os.environ.get("WALKER_VS_BASH_EXAMPLES", "0"))


@(settings(max_examples=_MORE) if _MORE else (lambda f: f))
@given(text=texts)
def test_the_walker_sees_every_command_bash_runs(harness: Harness, text: str) -> None:
    assume("\0" not in text)
    note(f"text: {text!r}")
    check(harness, text)


# Shrunk examples of every class of disagreement found, kept as regressions (each also has a
# unit test of the walker in tests/unit/test_shell_parse.py).
FOUND = [
    "cd d1 | cd d1 | alpha\nalpha > o1;",            # the grammar reads on across the newline
    "{ cd d1; alpha 0; } && alpha 0 | V1=0 > o1 alpha;",   # words after a compound's redirect
    "! ! alpha;",                                   # the second `!` read as a program
    "! ! V1=0 alpha;",
    "! for x in 0; do alpha; done;",                # `for` read as a program after `!`
    "! { alpha x; }",
    "alpha ~0;",                                    # the directory stack: not a static word
    "alpha ~+ x=~-;",
    "V1=$( alpha ''\\* );",                       # `''\*` is one word
    "'al'\\pha 0;",
    "alpha > o1 0 -x;",                             # words after a redirection target
    "alpha | alpha | alpha > o1 0;",                # the redirection binds to the last command
    "alpha && beta 2> o3 x y;",
    "alpha; ! alpha > o1 0;",
    "alpha 0 <<EOF | alpha 0 ||\nEOF\nbeta <<EOF ;\nEOF\n",   # refused: the grammar loses beta
]


@pytest.mark.parametrize("text", FOUND)
def test_found_disagreements_stay_fixed(harness: Harness, text: str) -> None:
    check(harness, text)



@pytest.mark.parametrize("command", [
    "for d in a b; do rm -rf *; cd ..; done",       # the second rm runs in /home/u
    "f() { rm -rf *; }; cd ..; f",                  # the body runs after the cd
    "for d in a b; do cd ..; done; rm -rf *",       # the loop went up twice: /home/u
])
def test_the_floor_tracks_cd_through_loops(command: str) -> None:
    from cmdop.core.policy.floor import check_command

    assert check_command("cd ..; rm -rf *", "/home/u", "/home/u/p")
    assert check_command("cd ../..; rm -rf *", "/home/u", "/home/u/p/q")
    cwd = "/home/u/p/q" if command.startswith("for d in a b; do cd") else "/home/u/p"
    assert check_command(command, "/home/u", cwd)


def test_the_harness_records_what_ran(harness: Harness) -> None:
    runs, _ = harness.run("cd d1 && alpha 'a b' \"\" $'\\x01'; beta | gamma x")
    assert sorted(runs) == sorted([
        ("alpha", str(harness.cwd / "d1"), ("a b", "", "\x01")),
        ("beta", str(harness.cwd / "d1"), ()),
        ("gamma", str(harness.cwd / "d1"), ("x",)),
    ])
    runs, r = harness.run("ls /; /bin/ls; cat /etc/passwd")     # nothing real is on PATH
    assert runs == [] and b"not found" in r.stderr


def test_the_harness_finds_a_missed_command(harness: Harness) -> None:
    """The comparison itself: a walker that missed a command would be caught."""
    base, home = str(harness.cwd), str(harness.home)
    assert disagreements("alpha x", [("beta", base, ())], base, home)
    assert disagreements("alpha x", [("alpha", base, ("y",))], base, home)
    assert disagreements("alpha x", [("alpha", base + "/d1", ("x",))], base, home)
    assert not disagreements("alpha $V1", [("alpha", base, ("p", "q"))], base, home)
