"""Rules mean what they say (programs.py, targets.py, rules.py, explain.py).

1. An allow rule never covers code its program runs from arguments or config: each code-running
   shape is NOT allowed by the program's broad rule and IS allowed by a rule that spells it (with
   what it runs allowed on its own).
2. A command such a shape runs is a part of its own: it needs its own rule, meets deny rules,
   and behind a privileged wrapper is covered by the wrapper's rule instead.
3. Deny rules see through global options and wrappers, in every combination (tables and
   Hypothesis), with real git as a differential check of where git's global options end.
4. explain says which option kept a rule from applying.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cmdop.core.calls import Caller, CallerKind, ToolCall
from cmdop.core.policy import programs
from cmdop.core.policy.explain import explain
from cmdop.core.policy.gate import Policy, decide
from cmdop.core.policy.index import RuleSet
from cmdop.core.policy.rules import literal_rules, parse_rule
from cmdop.core.policy.targets import parts_for_command

HOME = "/home/u"
CWD = "/home/u/proj"


def policy(*rules: tuple[str, str], mode: str = "strict") -> Policy:
    return Policy(mode=mode, global_rules=RuleSet([parse_rule(r, a, home=HOME, order=i)
                                                   for i, (r, a) in enumerate(rules)]))


def decision(p: Policy, command: str) -> tuple[str, str]:
    d = decide(ToolCall("execute_command", {"command": command}, "", CWD), Caller(CallerKind.REMOTE), p, HOME)
    return d.decision, d.source


def allows(command: str, *globs: str) -> bool:
    return decision(policy(*((f"execute_command({g})", "allow") for g in globs)), command) == ("allow", "rule")


# (command, the program's broad rule, a rule that spells the code, rules for what the code runs)
CODE: list[tuple[str, str, str, tuple[str, ...]]] = [
    # git: config that runs commands, aliases, options of subcommands
    ("git -c core.pager='less -R' log", "git *", "git -c core.pager=* *", ("less *",)),
    ("git -c core.pager='sh -c id' log", "git *", "git -c core.pager=* *", ("sh *", "id")),
    ("git -c core.sshCommand='ssh -i key' fetch", "git *", "git -c core.sshCommand=* *", ("ssh *",)),
    ("git -c core.editor=vim commit", "git *", "git -c core.editor=vim commit", ("vim",)),
    ("git -c sequence.editor=vim rebase -i HEAD~2", "git *", "git -c sequence.editor=vim *", ("vim",)),
    ("git -c core.fsmonitor=/usr/bin/watchman status", "git *", "git -c core.fsmonitor=* status", ("watchman",)),
    ("git -c diff.external=difft diff", "git *", "git -c diff.external=difft diff *", ("difft",)),
    ("git -c diff.x.textconv=strings log -p", "git *", "git -c diff.x.textconv=strings *", ("strings",)),
    ("git -c filter.lfs.smudge='tr a b' checkout .", "git *", "git -c filter.lfs.smudge=* *", ("tr *",)),
    ("git -c alias.x='!ls -la' x", "git *", "git -c alias.x=* x", ("ls *",)),
    ("git -c alias.st=status st", "git *", "git -c alias.st=status st", ("git status",)),
    ("git -c credential.helper=store push", "git *", "git -c credential.helper=store *", ("git credential-store",)),
    ("git -c credential.helper='!pass-helper get' fetch", "git *", "git -c credential.helper=* *", ("pass-helper *",)),
    ("git -c gpg.program=/usr/bin/gpg2 commit -S -m x", "git *", "git -c gpg.program=* *", ("gpg2 *",)),
    ("git -c core.hooksPath=./hooks commit -m x", "git *", "git -c core.hooksPath=* *", ()),
    ("git -c include.path=../x.cfg status", "git *", "git -c include.path=* *", ()),
    ("git -c protocol.ext.allow=always clone ext::x", "git *", "git -c protocol.ext.allow=always *", ()),
    ("git -c url.ext::x.insteadOf=https:// fetch", "git *", "git -c url.ext::x.insteadOf=* *", ()),
    ("git --config-env=core.pager=MYPAGER log", "git *", "git --config-env=core.pager=MYPAGER *", None),
    ("git --exec-path=/tmp/x log", "git *", "git --exec-path=/tmp/x *", ()),
    ("git config core.pager less", "git *", "git config core.pager *", ()),
    ("git config --global alias.co checkout", "git *", "git config --global alias.co *", ()),
    ("git clone -c core.fsmonitor=./x repo", "git *", "git clone -c core.fsmonitor=* *", ("./x",)),
    ("git clone --template=/tmp/t repo", "git *", "git clone --template=* *", ()),
    ("git rebase -x 'make test' main", "git *", "git rebase -x * main", ("make *",)),
    ("git rebase --exec='make test' main", "git *", "git rebase --exec=* *", ("make *",)),
    ("git bisect run make test", "git *", "git bisect run *", ("make *",)),
    ("git submodule foreach 'git pull'", "git *", "git submodule foreach *", ("git pull",)),
    ("git fetch --upload-pack='cat x' origin", "git *", "git fetch --upload-pack=* *", ("cat *",)),
    ("git push --receive-pack=rp origin", "git *", "git push --receive-pack=* *", ("rp",)),
    ("git difftool -x meld", "git *", "git difftool -x meld", ("meld",)),
    ("git filter-branch --tree-filter 'rm -f x' HEAD", "git *", "git filter-branch --tree-filter * *", ("rm *",)),
    ("git grep -O vim TODO", "git *", "git grep -O *", ()),
    # find runs a command per file
    ("find . -name '*.tmp' -exec rm {} \\;", "find *", "find * -exec *", ("rm *",)),
    ("find . -exec rm {} +", "find *", "find * -exec *", ("rm *",)),
    ("find . -execdir grep -l x {} +", "find *", "find * -execdir *", ("grep *",)),
    ("find . -ok rm {} \\;", "find *", "find * -ok *", ("rm *",)),
    ("find . -okdir rm {} \\;", "find *", "find * -okdir *", ("rm *",)),
    # wrappers that run their argument: the rule must spell the program
    ("xargs sh", "xargs *", "xargs sh *", ()),
    ("xargs -0 rm -f", "xargs *", "xargs -0 rm *", ()),
    ("sudo systemctl restart nginx", "sudo *", "sudo systemctl restart *", ()),
    ("sudo -u www-data php artisan migrate", "sudo *", "sudo -u * php *", ()),
    ("doas rm x", "doas *", "doas rm *", ()),
    ("watch -n 5 df -h", "watch *", "watch -n 5 df *", ()),
    ("env -C /tmp ls", "env *", "env -C * ls *", ()),
    ("strace -f ls", "strace *", "strace -f ls *", ()),
    ("strace -o '|cat' ls", "strace *", "strace -o * ls *", ()),
    ("parallel gzip ::: a b", "parallel *", "parallel gzip *", ()),
    ("parallel ::: 'ls' 'id'", "parallel *", "parallel ::: *", ()),
    ("screen -dmS s top", "screen *", "screen -dmS s top *", ()),
    # interpreters given code inline, and programs with a command language
    ("awk '{system(\"ls\")}' f", "awk *", "awk *system(*", ()),
    ("awk '{print | \"sort\"}' f", "awk *", "awk *|*", ()),
    ("awk 'BEGIN { \"date\" | getline d }'", "awk *", "awk *|*", ()),
    ("gawk '@load \"x\"; {print}' f", "gawk *", "gawk *@load*", ()),
    ("gawk 'BEGIN { f = \"system\"; @f(\"id\") }'", "gawk *", "gawk *system*@f(*", ()),
    ("awk -f prog.awk data", "awk *", "awk -f * *", ()),
    ("sed -i 's/a/b/e' f", "sed *", "sed -i s/a/b/e *", ()),
    ("sed -n '1e ls' f", "sed *", "sed -n 1e* *", ()),
    ("sed -e '/x/e date' f", "sed *", "sed -e /x/e* *", ()),
    ("sed -f script.sed f", "sed *", "sed -f * *", ()),
    ("perl -e 'print 1'", "perl *", "perl -e *", ()),
    ("perl -lne 'print if /x/' f", "perl *", "perl -lne *", ()),
    ("ruby -e 'puts 1'", "ruby *", "ruby -e *", ()),
    ("python3 -c 'print(1)'", "python3 *", "python3 -c *", ()),
    ("python3.12 -c 'print(1)'", "python3.12 *", "python3.12 -c *", ()),
    ("node -e 'console.log(1)'", "node *", "node -e *", ()),
    ("php -r 'echo 1;'", "php *", "php -r *", ()),
    ("vim -c '!ls' f", "vim *", "vim -c * *", ()),
    ("vim '+!ls' f", "vim *", "vim +!ls *", ()),
    ("gdb -ex 'shell ls' ./a.out", "gdb *", "gdb -ex * *", ()),
    ("dc -e '!ls'", "dc *", "dc -e *", ()),
    ("sqlite3 db '.shell ls'", "sqlite3 *", "sqlite3 * .shell *", ()),
    ("sqlite3 db '.system ls'", "sqlite3 *", "sqlite3 * .system *", ()),
    ("sqlite3 db \".once '|cat'\"", "sqlite3 *", "sqlite3 * .once *", ()),
    ("sqlite3 db 'select load_extension(\"x\")'", "sqlite3 *", "sqlite3 * *load_extension*", ()),
    # archivers, sync, ssh, make, tmux, man, apt, kubectl
    ("tar --to-command='cat' -xf a.tar", "tar *", "tar --to-command=* *", ("cat",)),
    ("tar --to-com=cat -xf a.tar", "tar *", "tar --to-com=* *", ("cat",)),
    ("tar --checkpoint=1 --checkpoint-action=exec='echo hi' -cf a.tar src", "tar *",
     "tar * --checkpoint-action=exec=* *", ("echo *",)),
    ("tar -I zstd -xf a.tar", "tar *", "tar -I * *", ("zstd",)),
    ("tar --use-compress-program=pigz -cf a.tgz src", "tar *", "tar --use-compress-program=* *", ("pigz",)),
    ("tar xIf zstd a.tar", "tar *", "tar xIf *", ()),
    ("rsync -e 'ssh -p 2222' -a src host:dst", "rsync *", "rsync -e * *", ("ssh *",)),
    ("rsync -avze ssh src host:", "rsync *", "rsync -avze * *", ("ssh *",)),
    ("rsync --rsh='ssh -p 2' src host:", "rsync *", "rsync --rsh=* *", ("ssh *",)),
    ("ssh -o ProxyCommand='nc %h %p' web01", "ssh *", "ssh -o ProxyCommand=* *", ("nc *",)),
    ("ssh -oProxyCommand='nc %h %p' web01", "ssh *", "ssh -oProxyCommand=* *", ("nc *",)),
    ("ssh -o 'LocalCommand ls' -o PermitLocalCommand=yes web01", "ssh *", "ssh -o LocalCommand * *", ("ls *",)),
    ("ssh -F ./cfg web01", "ssh *", "ssh -F * *", ()),
    ("scp -S /usr/bin/ssh a host:", "scp *", "scp -S * *", ("ssh *",)),
    ("make SHELL=/bin/bash all", "make *", "make SHELL=* *", ()),
    ("make CC='sh -c id' all", "make *", "make CC=* *", ()),
    ("make --eval='x: ; ls' x", "make *", "make --eval=* *", ()),
    ("tmux new -d top", "tmux *", "tmux new *", ()),
    ("tmux send-keys -t s 'ls' Enter", "tmux *", "tmux send-keys *", ()),
    ("tmux -f ./conf ls", "tmux *", "tmux -f * *", ()),
    ("man -P cat ls", "man *", "man -P cat *", ("cat",)),
    ("zip -T -TT 'unzip -t' a.zip f", "zip *", "zip -T -TT * *", ("unzip *",)),
    ("apt-get -o APT::Update::Pre-Invoke::=ls update", "apt-get *", "apt-get -o APT::Update::Pre-Invoke::=* *", ()),
    ("apt-get -c ./apt.conf update", "apt-get *", "apt-get -c * *", ()),
    ("kubectl --kubeconfig ./k get pods", "kubectl *", "kubectl --kubeconfig * *", ()),
    ("kubectl get pods --kubeconfig=./k", "kubectl *", "kubectl get pods --kubeconfig=*", ()),
    ("docker --config ./d ps", "docker *", "docker --config * *", ()),
    ("su -c 'systemctl restart x' root", "su *", "su -c * *", ()),
    ("fd -e py -x rm", "fd *", "fd * -x *", ("rm",)),
    ("rg --pre ./pre.sh TODO", "rg *", "rg --pre * *", ("./pre.sh",)),
    ("script -q -c 'ls' /dev/null", "script *", "script -q -c * *", ("ls",)),
    ("nc -l -p 9 -e /bin/sh", "nc *", "nc * -e *", ("sh",)),
    ("unshare -r sh", "unshare *", "unshare -r sh *", ()),
    ("nsenter -t 1 -m -u sh", "nsenter *", "nsenter -t 1 -m -u sh *", ()),
    ("crontab jobs.txt", "crontab *", "crontab jobs.txt", ()),
]


@pytest.mark.parametrize("command, broad, named, inner", CODE, ids=[c[0] for c in CODE])
def test_a_broad_rule_does_not_cover_code_the_program_runs(command: str, broad: str, named: str,
                                                            inner: tuple[str, ...] | None) -> None:
    assert not allows(command, broad, *(inner or ())), command
    if inner is not None:
        assert allows(command, named, *inner), (command, named)


@pytest.mark.parametrize("command, broad, named, inner", [c for c in CODE if c[3]], ids=[c[0] for c in CODE if c[3]])
def test_what_the_code_runs_needs_a_rule_of_its_own(command: str, broad: str, named: str,
                                                    inner: tuple[str, ...]) -> None:
    assert not allows(command, named), (command, named)


def test_a_value_from_the_environment_is_never_known() -> None:
    assert not allows("git --config-env=core.pager=MYPAGER log", "git --config-env=core.pager=MYPAGER *", "*")


@pytest.mark.parametrize("command", ["git\\ status", "'git status'", '"git status" -s', "'git push' origin",
                                     "sudo 'systemctl restart' x"])
def test_a_program_name_with_a_space_is_named_by_no_rule(command: str) -> None:
    """One word `git\\ status` is a program named "git status" to bash (found by a black-box
    pass): the text "git status" must not let `git *` or `git status` allow it."""
    assert not allows(command, "git *", "git status", "git push *", "sudo *", "sudo systemctl *")
    assert allows("git status", "git *") and allows('"git" status', "git *")


# Arguments that look like code but are not: the broad rule still covers them.
NOT_CODE = [
    ("git -c color.ui=always status", "git *"),
    ("git -c user.name=a -c user.email=b commit -m x", "git *"),
    ("git -c core.hooksPath=/dev/null commit -m x", "git *"),
    ("git -c core.fsmonitor=false status", "git *"),
    ("git -c protocol.ext.allow=never fetch", "git *"),
    ("git -c core.pager=cat log", "git *"),
    ("git -C . --no-pager log", "git *"),
    ("git --exec-path", "git *"),
    ("git config --get core.pager", "git *"),
    ("git config core.pager", "git *"),
    ("git fetch -u origin", "git *"),
    ("git commit -m 'run: find . -exec rm {} \\;'", "git *"),
    ("git log --grep=alias.x", "git *"),
    ("find . -name '*.py' -print", "find *"),
    ("find . -name x -delete", "find *"),
    ("awk '{print $1}' f", "awk *"),
    ("awk '$1 || $2' f", "awk *"),
    ("awk -F'|' '{print $2}' f", "awk *"),
    ("sed -n 's/e/E/p' f", "sed *"),
    ("sed -i.bak 's/one/two/g' f", "sed *"),
    ("sed '/^#/d; s/a/b/w out' f", "sed *"),
    ("python3 x.py -c 1", "python3 *"),
    ("python3 -m pytest -q", "python3 *"),
    ("perl -Mstrict x.pl", "perl *"),
    ("perl -Mfeature=say x.pl", "perl *"),
    ("node app.js -e", "node *"),
    ("tar -xzf a.tar", "tar *"),
    ("tar czf a.tgz src", "tar *"),
    ("rsync -av a b", "rsync *"),
    ("ssh web01 uptime", "ssh *"),
    ("ssh web01 'rm -rf /tmp/x'", "ssh web01 *"),
    ("ssh -o ConnectTimeout=5 -p 22 web01", "ssh *"),
    ("ssh -S /tmp/sock web01", "ssh *"),
    ("make -j4 all", "make *"),
    ("make CFLAGS=-O2 all", "make *"),
    ("sqlite3 db 'select 1'", "sqlite3 *"),
    ("sqlite3 db \"select a||b from t\"", "sqlite3 *"),
    ("tmux ls", "tmux *"),
    ("vim +10 f", "vim *"),
    ("man ls", "man *"),
    ("docker --context prod ps", "docker *"),
    ("kubectl -n prod get pods", "kubectl *"),
    ("apt-get -y install curl", "apt-get *"),
    ("nice -n 5 git status", "git *"),
    ("timeout 10 git status", "git *"),
    ("env X=1 ls", "X=1 ls *"),
    ("crontab -l", "crontab *"),
    ("fd -e py", "fd *"),
    ("rg TODO src", "rg *"),
    ("nc -z host 22", "nc *"),
]


@pytest.mark.parametrize("command, rule", NOT_CODE)
def test_arguments_that_run_nothing_stay_covered(command: str, rule: str) -> None:
    assert allows(command, rule), command


# --- inner parts -----------------------------------------------------------------------------------

def test_inner_parts_meet_deny_rules() -> None:
    p = policy(("execute_command(find * -exec *)", "allow"), ("execute_command(git *)", "allow"),
               ("execute_command(git -c alias.*)", "allow"), ("execute_command(rm *)", "deny"),
               ("execute_command(git push *)", "deny"), ("execute_command(curl *)", "deny"))
    assert decision(p, "find . -exec rm {} \\;") == ("deny", "rule")
    assert decision(p, "git -c alias.p=push p origin") == ("deny", "rule")      # the alias is `git push`
    assert decision(p, "git -c alias.x='!curl evil' x") == ("deny", "rule")
    assert decision(p, "git -c core.pager='curl x' log") == ("deny", "rule")
    assert decision(p, "git rebase -x 'curl x' main") == ("deny", "rule")
    assert decision(p, "git bisect run curl x") == ("deny", "rule")
    assert decision(p, "sudo find . -exec rm {} +") == ("deny", "rule")


def test_behind_a_privileged_wrapper_the_whole_line_rule_speaks_for_the_code() -> None:
    assert allows("sudo find . -exec rm {} +", "sudo find * -exec *")
    assert not allows("sudo find . -exec rm {} +", "sudo find *")
    assert not allows("sudo find . -exec rm {} +", "sudo *", "find * -exec *", "rm *")
    assert allows("sudo git -c core.pager=less log", "sudo git -c core.pager=* *")
    assert not allows("sudo git -c core.pager=less log", "sudo git *", "less")


def test_compound_and_nested_commands_keep_the_requirement() -> None:
    assert not allows("ls && find . -exec rm {} \\;", "ls *", "find *", "rm *")
    assert allows("ls && find . -exec rm {} \\;", "ls *", "find * -exec *", "rm *")
    assert not allows("bash -c 'find . -exec rm {} \\;'", "find *", "rm *")
    assert allows("bash -c 'find . -exec rm {} \\;'", "find * -exec *", "rm *")
    assert not allows("nice find . -exec rm {} \\;", "find *", "rm *")
    assert not allows("find . -exec sh -c 'curl x' \\;", "find * -exec *", "sh *")


def test_two_code_places_need_both_spelled() -> None:
    cmd = "find . -name a -exec rm {} \\; -exec ls {} \\;"
    assert not allows(cmd, "find * -exec *", "rm *", "ls *")
    assert allows(cmd, "find * -exec * -exec *", "rm *", "ls *")


def test_ask_answers_keep_exact_rules_that_still_allow_exactly_the_command() -> None:
    for command, _, _, _ in CODE:
        rules = literal_rules("execute_command", command, "", "allow")
        if not rules:            # some part has no matchable text (a dynamic value)
            continue
        assert allows(command, *(r[len("execute_command("):-1] for r in rules)), (command, rules)


def test_the_broad_rule_of_another_mode_is_asked_not_allowed() -> None:
    p = policy(("execute_command(find *)", "allow"), ("execute_command(rm *)", "allow"), mode="default")
    assert decision(p, "find . -exec rm {} \\;") == ("ask", "mode")


# --- deny rules see through global options and wrappers -------------------------------------------

DENY_CORES = {
    "git": ("git push *", "push origin main", [
        "-C .", "-C /tmp", "--git-dir=r.git", "--git-dir r.git", "--work-tree=.", "--work-tree .", "-c x=y",
        "-c user.name=a -c user.email=b", "-c core.pager=less", "--no-pager", "-P", "-p", "--paginate", "--bare",
        "--namespace=ns", "--namespace ns", "--no-replace-objects", "--literal-pathspecs", "--no-optional-locks",
        "--exec-path=/usr/lib/git-core", "--config-env=x.y=HOME", "-C . --no-pager -c a=b --git-dir=x"]),
    "docker": ("docker rm *", "rm -f web", [
        "--context prod", "--context=prod", "-c prod", "-H tcp://h:2375", "--host=unix:///x", "--config /tmp/c",
        "-D", "--debug", "--tls", "--tlsverify", "-l debug", "--log-level=debug", "--context prod -D"]),
    "kubectl": ("kubectl delete *", "delete pod x", [
        "-n ns", "--namespace ns", "--namespace=ns", "--context c", "--kubeconfig k", "--kubeconfig=k",
        "-s https://x", "--server=https://x", "--insecure-skip-tls-verify", "-v 9", "--as admin",
        "-n ns --context c"]),
    "systemctl": ("systemctl stop *", "stop nginx", [
        "--user", "--system", "-H host", "--host=h", "-M m", "--no-pager", "--no-ask-password", "-q",
        "--no-block", "--now", "--user --no-pager", "-t service"]),
    "apt-get": ("apt-get remove *", "remove nginx", [
        "-y", "-q", "-qq", "--yes", "--assume-yes", "-yq", "-o Dpkg::Options::=--force-confdef",
        "-c ./apt.conf", "-t stable", "-y -o APT::Get::Assume-Yes=true"]),
}
PREFIXES = ["", "sudo ", "sudo -u u ", "sudo -E -u root ", "doas ", "env X=1 ", "env -i X=1 -u VAR ", "nice ",
            "nice -n 5 ", "timeout 10 ", "timeout -s KILL 5 ", "nohup ", "stdbuf -oL ", "ionice -c3 ",
            "chrt 10 ", "taskset 0x1 ", "setsid ", "command ", "exec ", "time ", "xargs ", "xargs -0 ",
            "watch -n 1 ", "flock /tmp/l ", "sudo env X=1 nice -n 5 "]
SPELLINGS = ["{p}", "/usr/bin/{p}", "/tmp/{p}", "\\{p}", "'{p}'"]
DENY_POLICY = policy(*((f"execute_command({rule})", "deny") for rule, _, _ in DENY_CORES.values()),
                     *((f"execute_command({p} *)", "allow") for p in DENY_CORES))


def deny_case(program: str, globals_: str, prefix: str = "", spelling: str = "{p}") -> str:
    _, core, _ = DENY_CORES[program]
    return f"{prefix}{spelling.format(p=program)} {globals_} {core}".replace("  ", " ")


@pytest.mark.parametrize("program, option", [(p, o) for p, (_, _, opts) in DENY_CORES.items() for o in opts])
def test_deny_rules_see_through_every_global_option(program: str, option: str) -> None:
    assert decision(DENY_POLICY, deny_case(program, option)) == ("deny", "rule")


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("spelling", SPELLINGS)
def test_deny_rules_see_through_wrappers_and_program_paths(prefix: str, spelling: str) -> None:
    for program, (_, _, opts) in DENY_CORES.items():
        command = deny_case(program, opts[-1], prefix, spelling)
        assert decision(DENY_POLICY, command) == ("deny", "rule"), command


@given(st.sampled_from(sorted(DENY_CORES)), st.data())
@settings(max_examples=300, deadline=None)
def test_deny_rules_meet_every_combination(program: str, data: st.DataObject) -> None:
    opts = DENY_CORES[program][2]
    chosen = data.draw(st.lists(st.sampled_from(opts), min_size=0, max_size=3))
    prefix = data.draw(st.sampled_from(PREFIXES))
    spelling = data.draw(st.sampled_from(SPELLINGS))
    shell = data.draw(st.sampled_from(["{c}", "bash -c {q}", "sh -c {q}", "ls && {c}", "{c} | cat"]))
    command = deny_case(program, " ".join(chosen), prefix, spelling)
    command = shell.format(c=command, q=shlex.quote(command))
    assert decision(DENY_POLICY, command) == ("deny", "rule"), command


def test_global_options_an_unknown_option_ends_are_not_guessed_past() -> None:
    # git refuses `-C/tmp` (no glued value): it runs nothing, and nothing is stripped
    assert programs.without_globals(["git", "-C/tmp", "push"]) is None
    assert programs.without_globals(["git", "--frobnicate", "push"]) is None
    assert programs.without_globals(["git", "--exec-path", "push"]) is None     # prints the path and exits
    assert programs.without_globals(["git", "-C", "x", "push"]) == ["git", "push"]


# Real git as a differential check of where its global options end.
GIT_FORMS_OK = ["-C {d}", "-C {d} -C .", "--git-dir={d}/.git", "--git-dir {d}/.git", "--work-tree={d}",
                "--work-tree {d}", "-c a.b=c", "-c a.b", "--no-pager", "-P", "-p", "--paginate", "--bare",
                "--namespace=ns", "--namespace ns", "--no-replace-objects", "--literal-pathspecs",
                "--glob-pathspecs", "--icase-pathspecs", "--config-env=a.b=HOME", "--config-env a.b=HOME",
                "--exec-path={exec_path}", "-C {d} --no-pager -c x.y=z --git-dir={d}/.git"]
GIT_FORMS_BAD = ["-C{d}", "-ca.b=c", "--exec-path {d}", "--frobnicate", "-Z"]


@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
@pytest.mark.parametrize("form", GIT_FORMS_OK + GIT_FORMS_BAD)
def test_git_global_options_are_parsed_as_real_git_does(form: str, tmp_path: object) -> None:
    d = str(tmp_path)
    exec_path = subprocess.run(["git", "--exec-path"], capture_output=True, text=True, check=True).stdout.strip()
    argv = ["git", *shlex.split(form.format(d=d, exec_path=exec_path)), "version"]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": d, "GIT_TRACE": "1",
           "GIT_CONFIG_NOSYSTEM": "1", "LC_ALL": "C"}
    real = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=d, timeout=30)
    ran_version = real.returncode == 0 and "built-in: git version" in real.stderr
    ours = programs.without_globals(argv)
    if form in GIT_FORMS_OK:
        assert ran_version, (argv, real.stderr)
    assert (ours == ["git", "version"]) == ran_version, (argv, ours, real.returncode, real.stderr[-300:])


# --- explain ----------------------------------------------------------------------------------------

def explained(command: str, *rules: tuple[str, str]) -> str:
    p = policy(*rules)
    _, lines = explain(ToolCall("execute_command", {"command": command}, "", CWD), Caller(CallerKind.REMOTE), p, HOME)
    return "\n".join(lines)


def test_explain_says_which_option_kept_a_rule_from_applying() -> None:
    text = explained("git -c core.pager='sh -c id' log", ("execute_command(git *)", "allow"))
    assert "'git *' does not cover '-c core.pager=…': that runs a command" in text
    assert "add a rule that spells it" in text
    assert "code: '-c core.pager=…' runs a command" in text
    assert "(run by 'git -c core.pager=…')" in text
    text = explained("find . -exec rm {} \\;", ("execute_command(find *)", "allow"))
    assert "'find *' does not cover '-exec rm {} ;': that runs a command on what it finds" in text
    text = explained("sudo rm -rf build", ("execute_command(sudo *)", "allow"))
    assert "'sudo *' does not cover 'rm': that is the program sudo runs; add a rule that spells it" in text


def test_explain_of_a_rule_that_spells_the_code_shows_what_still_needs_a_rule() -> None:
    text = explained("find . -exec rm {} \\;", ("execute_command(find * -exec *)", "allow"))
    assert "MATCHES 'find . \\n-exec rm {} ;'" in text
    assert "'rm {}' (run by 'find -exec rm {} ;')" in text
    assert "decision: deny (source mode)" in text


def test_explain_shows_deny_matching_the_stripped_spelling() -> None:
    text = explained("git -C . -c a=b push origin", ("execute_command(git push *)", "deny"))
    assert "MATCHES 'git push origin'" in text


# --- the table itself -------------------------------------------------------------------------------

def test_every_program_name_is_in_one_spec() -> None:
    names = [n for spec in programs.PROGRAMS for n in spec.names]
    assert len(names) == len(set(names))


def test_shapes_the_floor_already_refuses_are_marked_too() -> None:
    # socat EXEC:/SYSTEM: is floor today; the table marks it all the same, for the day it is not
    (part,) = parts_for_command("socat TCP-LISTEN:9 exec:date")
    assert part.allow_text == "socat TCP-LISTEN:9 \nexec:date"
    assert part.code and part.code[0][2] == "runs a command for the connection"


def test_code_places_are_marked_in_the_allow_text_and_nowhere_else() -> None:
    (outer, *inner) = parts_for_command("git -c core.pager=less log")
    assert outer.allow_text == "git -c \ncore.pager=less log"
    assert outer.deny_texts == ("git -c core.pager=less log", "git log")
    assert [p.allow_text for p in inner] == ["less"]
    assert parts_for_command("git status")[0].code == ()


@given(st.sampled_from([c[0] for c in CODE]),
       st.sampled_from(["*", "* *", "git *", "find *", "awk *", "sed *", "sudo *", "xargs *", "tar *", "ssh *",
                        "make *", "perl *", "python3 *", "tmux *", "sqlite3 *", "rsync *", "watch *", "*-*",
                        "git -c *", "find * -*", "*=*", "* * *"]))
@settings(max_examples=400, deadline=None)
def test_no_glob_without_a_spelled_token_covers_code(command: str, glob: str) -> None:
    inner = next(c[3] for c in CODE if c[0] == command) or ()
    assert not allows(command, glob, *inner, "*"), (command, glob)


# --- robustness -------------------------------------------------------------------------------------

TOKENS = ["-c", "-C", "-e", "-exec", ";", "+", "{}", "-o", "core.pager=x", "alias.x=!y", "--to-command", "-I", "x",
          "-", "--", "a=b", "*", "?", "[a]", "|", "s/a/b/e", "e", "{system(1)}", ".shell", "+!x", ":::", "-xmake",
          "--exec-path=/x", "--config-env=a.b=C", "-oProxyCommand=y", "sudo", "xargs", "nice", "env", "-u", "run",
          "foreach", "config", "clone", "rebase", "push", "> f", "2>&1", "$X", "'a b'"]
PROGRAM_NAMES = sorted(n for spec in programs.PROGRAMS for n in spec.names)


@given(st.sampled_from(PROGRAM_NAMES), st.lists(st.sampled_from(TOKENS), max_size=8))
@settings(max_examples=500, deadline=None)
def test_reading_commands_and_rules_never_raises(program: str, words: list[str]) -> None:
    from cmdop.core.policy.rules import RuleError
    argv: list[str | None] = [program, *(None if w.startswith("$") else w for w in words)]
    programs.sites(argv)
    programs.without_globals(argv)
    command = " ".join([program, *words])
    assert parts_for_command(command)
    for action in ("allow", "ask", "deny"):
        try:
            parse_rule(f"execute_command({command})", action, home=HOME)
        except RuleError:
            pass


@given(st.sampled_from(PROGRAM_NAMES), st.lists(st.sampled_from(TOKENS), max_size=6),
       st.lists(st.sampled_from(TOKENS + ["*", "* *"]), max_size=6))
@settings(max_examples=500, deadline=None)
def test_marking_a_glob_changes_nothing_for_text_without_code(program: str, words: list[str], glob: list[str]) -> None:
    from cmdop.core.policy import pattern
    from cmdop.core.policy.rules import RuleError, _command_glob, compile_code_glob
    text = " ".join([program, *words]).replace(">", "").replace("\n", "")
    try:
        g = _command_glob(" ".join([program, *glob]))
        plain = pattern.compile_command(g)
    except (RuleError, pattern.GlobError):
        return
    assert bool(plain.match(text)) == bool(compile_code_glob(g).match(text)), (g, text)


def test_a_refused_command_that_runs_code_is_kept_as_its_own_exact_rule() -> None:
    rules = literal_rules("execute_command", "find . -exec rm {} \\;", "", "deny")
    assert rules == ["execute_command(find . -exec rm {} ;)"]
    p = policy(("execute_command(find * -exec *)", "allow"), ("execute_command(rm *)", "allow"),
               (rules[0][len("execute_command("):-1].join(("execute_command(", ")")), "deny"))
    assert decision(p, "find . -exec rm {} \\;") == ("deny", "rule")
    assert decision(p, "find . -exec rm -f {} \\;") == ("allow", "rule")
