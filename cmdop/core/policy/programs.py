"""What the gate knows about particular programs, in one table (`PROGRAMS`), so rules mean what
they say (and so the static floor can later read the same facts):

- *Wrappers* `commands.unwrap` peels (`sudo`, `nice`, `xargs`…): which options take a value, how
  many positional words come before the wrapped command, and whether the wrapper changes
  privilege, root or arguments ("privileged": the allow text is then the whole line, and an allow
  rule must name the wrapped program: `sudo systemctl *`, never just `sudo *`).
- *Global options* that come before a program's subcommand (`git -C DIR -c k=v push`,
  `docker --context x rm`, `kubectl -n ns delete`, `apt-get -y remove`): deny rules are also
  tried on the command with them removed, so `deny git push *` meets every spelling.
- *Code-running shapes*: options, config keys, subcommands or program text that make a program
  run code given in its arguments or a file they name (`find -exec`, `git -c core.pager=…`,
  `git -c alias.x=…`, `awk 'BEGIN{system(…)}'`, `sed s/x/y/e`, `perl -e`, `tar --to-command`,
  `rsync -e`, `ssh -o ProxyCommand=…`, `make SHELL=…`, `tmux send-keys`…). An allow rule covers
  such a shape only where its glob spells the shape's token literally (`find * -exec *`,
  `git -c core.pager=less *`), and a command the shape runs is also a part of its own that a rule
  must allow (`rm {}` for `find . -exec rm {} \\;`, `less` for `git -c core.pager=less log`).
- *Other machines* (`remote`, an `Elsewhere`: the option grammar that tells operands from option
  values): `host:path` operands of scp/rsync, URLs given to curl/wget/aria2c/`git clone`, and the
  command `ssh host CMD`, `docker exec C CMD`, `kubectl exec POD -- CMD`, `lxc exec C -- CMD` run
  elsewhere (`elsewhere`). The floor does not judge their paths as this machine's, but still
  reads the remote command for its signatures.

Deliberate choices:
- `ssh host CMD`, `docker exec`, `kubectl exec` run CMD elsewhere: the remote command is not code
  run here, so `ssh web01 *` covers it (it names the host). What ssh itself runs here — a
  `ProxyCommand`, `LocalCommand`, `KnownHostsCommand`, a PKCS#11 provider, an `-F` config — is
  a code-running shape.
- A word the grammar cannot place (an unknown expansion, an option it does not know) is never
  taken for another machine's: `ssh $H cat /etc/shadow` is judged as if all of it were here.
  Option values are this machine's even where they name the container's (`docker exec -w /etc`).
  `distrobox`/`toolbox` share this machine's home: what they run is not elsewhere.
- Code from a file the arguments name counts where the file is not the program's ordinary input:
  `awk -f prog.awk`, `sed -f x.sed`, `git -c include.path=…`, `ssh -F cfg`, `kubectl --kubeconfig`,
  `docker --config` (credential helpers), `vim -S`; `python3 script.py` is the program's purpose
  and does not.
- Config keys that switch code off are not shapes: `git -c core.hooksPath=/dev/null`,
  `-c core.fsmonitor=false`, `-c protocol.ext.allow=never`, `-c credential.helper=`.

Everything here is pure data plus small functions over argv lists (`None` = a word not known
statically); nothing imports from the rest of the policy package.
"""

from __future__ import annotations

import posixpath
import re
from functools import lru_cache

from cmdop.core.policy.pattern import LazyPattern
from cmdop.core.value import Frozen, NamedTuple

# --- the data -------------------------------------------------------------------------------------


class Code(Frozen):
    """One argument shape that makes a program run code.

    kind:
      "option"  an option (`names`, or a short letter of `short` inside a cluster: `-pe`, `-avze`)
                whose value — or, with runs "", whose presence — is code;
      "key"     an option (`names`) whose value is KEY=VALUE, KEY matching `keys` (git -c, ssh -o);
      "setkey"  a positional KEY (matching `keys`) followed by a VALUE: `git config core.pager x`;
      "argv"    an option followed by a command's words up to `;` or `{} +` (find -exec);
      "word"    a positional word (`names`) after which the rest of the line is a command, or
                which runs commands itself (tmux send-keys, git bisect run);
      "text"    tokens (`tokens`, a regex) inside program text: awk's `system(`, sqlite3's `.shell`;
      "assign"  a NAME=VALUE argument with NAME in `names` (make SHELL=…);
      "runner"  the first non-option word is a command the program runs (parallel, screen);
      "first"   an old-style first argument (no dash) matching `keys`: `tar xIf PROG a.tar`.
    runs: what the value is: "shell" (a command line: parsed into parts a rule must allow), "argv"
      (words forming a command), "git" (a git config value: a command line for the keys that run
      one, an alias, a credential helper), "ssh" (a command line for ssh's `*Command` keys), "pipe"
      (`|cmd`: a command line after the bar), "code" (another language), "file" (code in a file),
      "" (nothing to parse further).
    after: only after one of these subcommands ("*": anywhere; (): before the subcommand, or
      anywhere for programs without subcommands).
    unless: a regex (full match, case-insensitive) on the value: such a value runs nothing.
    """

    FIELDS = ("kind", "names", "short", "keys", "tokens", "glob_tokens", "runs", "after", "unless",
              "eq_only", "what")
    kind: str
    names: tuple[str, ...]
    short: str
    keys: str
    tokens: str
    glob_tokens: str  # where a rule's glob spells a "text" token (default: `tokens`)
    runs: str
    after: tuple[str, ...]
    unless: str
    eq_only: bool  # runs code only written as --opt=VALUE (git --exec-path)
    what: str

    def __init__(self, kind: str, names: tuple[str, ...] = (), short: str = "", keys: str = "",
                 tokens: str = "", glob_tokens: str = "", runs: str = "shell",
                 after: tuple[str, ...] = (), unless: str = "", eq_only: bool = False,
                 what: str = "runs a command") -> None:
        self._set(kind=kind, names=names, short=short, keys=keys, tokens=tokens,
                  glob_tokens=glob_tokens, runs=runs, after=after, unless=unless, eq_only=eq_only,
                  what=what)


# The roles of a program's arguments, as the static floor (floor_cmd) reads them. A program the
# table does not know has the default roles: it reads its file arguments (a block device among
# them is a raw read of the disk), no tree, none of these.
DEVICE_ROLES = {
    "reads": "reads a block device given as an argument: its raw bytes hold every file (the default)",
    "writes": "writes a block device given as an argument (tee, cp, shred, wipefs, mkfs…)",
    "operands": "reads or writes the device given as if=/of= (dd and its kin), or as an argument",
    "names": "only names a device, its metadata or partition table (disk administration, listing, "
             "printing text, a wrapper whose wrapped command has its own role)",
}
ROLES = {
    "interpreter": "runs code: given inline (-c/-e), from a script file, or from standard input when given "
                   "no script (`| python3 -`, `| perl`)",
    "stdin-runner": "runs what it reads on standard input as commands (at, batch, script, parallel)",
    "command-runner": "runs a command named later in its arguments with this standard input (`| ssh h sh`)",
    "stdin-script": "reads its script from standard input with `-f -`/`-x -` (make, sed, awk, m4, ed, gdb)",
    "awk": "its first operand is awk program text",
    "text": "its arguments are text to print or search for, never run",
    "lister": "only lists or measures the paths it is given (names, sizes, modes), never their contents",
    "looker": "shows only a file's name or metadata (what `find -exec` may run over a protected tree)",
    "names-consumer": "only shows or counts the names a listing feeds it (`find ~ | head`)",
    "copier": "its last operand is the destination, not a source",
    "pattern": "its first operand is a pattern, unless -e/-f/--regexp/--file give it",
    "setting": "its first operand is a mode, owner or ACL, not a path",
    "remote-paths": "an operand `host:path` (`user@host:path`, `[v6]:path`, `scp://host/path`) names a path on "
                    "another machine, not this machine's floor; its other operands and option values are local",
    "remote-command": "its first operand names another machine (a host, container or pod) and the words after it "
                      "are a command run there: their paths are that machine's, not this machine's floor, while "
                      "the floor's signatures (removing /, a pipe into a shell, a fork bomb) still apply to them",
    "urls": "an operand `scheme://…` (http, https, ftp, ssh…) names another machine, not a path here (a `file:` "
            "URL, for every program, is a path here, read percent-decoded)",
    "archiver": "reads a tree only when creating an archive (tar: c/r/u)",
}


class Elsewhere(Frozen):
    """How a program's arguments name another machine (roles "remote-command", "remote-paths",
    "urls"): the option grammar needed to tell its operands from its options' values. A word that
    may be an option's value is never taken for an operand, so a local file an option names stays
    this machine's: the floor judges it."""

    FIELDS = ("after", "short", "flags", "long", "long_flags", "hostless", "dashdash", "reparse",
              "line", "at_home", "what", "here_if", "here_env")
    after: tuple[str, ...]  # only after one of these subcommands (`docker exec`, `git clone`)
    short: str | None  # short options taking a value there (None: the spec's `short`)
    flags: str | None  # short options taking none (None: every other letter;
                       # else another letter is not understood)
    long: frozenset[str]  # long options taking a value (`--env-file X`)
    long_flags: frozenset[str]  # long options taking none (any other may take the next word)
    hostless: frozenset[str]  # options after which no operand names the machine (podman exec -l)
    dashdash: bool  # the command is what follows `--` (kubectl exec POD -- CMD)
    reparse: bool  # options may follow the host too (ssh HOST -p 22 CMD)
    line: bool  # the command reaches the other side as one line its shell reads
                # again (ssh joins its words); else as argv (docker exec)
    at_home: bool  # the command starts in the remote user's home (ssh)
    what: str  # what the other machine is: host, container, pod
    # An option (as written, with its value: `-o ProxyCommand=…`, `-F cfg`, `-e 'sh -c'`; regex,
    # searched) after which the connection may lead back to this machine, or an environment
    # variable doing so (RSYNC_RSH): then nothing is elsewhere. So is a host on the loopback
    # (`ssh localhost`, `127.1`, `[::1]`): its sshd reads this machine's files.
    here_if: str
    here_env: tuple[str, ...]

    def __init__(self, after: tuple[str, ...] = (), short: str | None = None,
                 flags: str | None = None, long: frozenset[str] = frozenset(),
                 long_flags: frozenset[str] = frozenset(), hostless: frozenset[str] = frozenset(),
                 dashdash: bool = False, reparse: bool = False, line: bool = False,
                 at_home: bool = False, what: str = "host", here_if: str = "",
                 here_env: tuple[str, ...] = ()) -> None:
        self._set(after=after, short=short, flags=flags, long=long, long_flags=long_flags,
                  hostless=hostless, dashdash=dashdash, reparse=reparse, line=line, at_home=at_home,
                  what=what, here_if=here_if, here_env=here_env)


class ProgramSpec(Frozen):
    """One program (with its aliases): its option grammar as far as the gate needs it."""

    FIELDS = ("names", "short", "long", "eq_long", "flags", "glued", "any_flag", "subcommand",
              "options_first", "code", "wrapper", "privileged", "positionals", "abbrev", "versions",
              "device", "tree", "tree_words", "roles", "remote")
    names: tuple[str, ...]
    short: str  # short options taking a value (`-C DIR`, `-uroot`)
    long: frozenset[str]  # long options taking a value (`--git-dir=X`, `--git-dir X`)
    eq_long: frozenset[str]  # long options taking a value only as `--opt=X` (bare: another meaning)
    flags: frozenset[str]  # options without a value (`--no-pager`, `-P`)
    glued: bool  # a short option's value may be glued: `-uroot` (git: no)
    any_flag: bool  # any other leading `-x` is a flag (apt-get -y -q)
    subcommand: bool  # options before the first plain word are global
    options_first: bool  # options end at the first plain word (an interpreter's script)
    code: tuple[Code, ...]
    # wrappers (commands.unwrap)
    wrapper: bool
    privileged: bool  # changes privilege, root or arguments of what it runs
    positionals: int  # words before the wrapped command (timeout DURATION)
    abbrev: bool  # long options may be abbreviated (getopt_long: tar)
    # --- the roles of its arguments, for the static floor (floor_cmd); see ROLES ---
    versions: str  # regex (full match) of the family's versioned names
    device: str  # what it does with a block device given as an argument
    tree: str | None  # option letters that make it work on whole trees ("": always)
    tree_words: tuple[str, ...]  # ... and only after one of these words (restic backup)
    roles: frozenset[str]  # more roles, from ROLES
    remote: Elsewhere | None  # for "remote-command", "remote-paths", "urls": the grammar

    def __init__(self, names: tuple[str, ...], short: str = "", long: frozenset[str] = frozenset(),
                 eq_long: frozenset[str] = frozenset(), flags: frozenset[str] = frozenset(),
                 glued: bool = True, any_flag: bool = False, subcommand: bool = False,
                 options_first: bool = False, code: tuple[Code, ...] = (), wrapper: bool = False,
                 privileged: bool = False, positionals: int = 0, abbrev: bool = False,
                 versions: str = "", device: str = "reads", tree: str | None = None,
                 tree_words: tuple[str, ...] = (), roles: frozenset[str] = frozenset(),
                 remote: Elsewhere | None = None) -> None:
        self._set(names=names, short=short, long=long, eq_long=eq_long, flags=flags, glued=glued,
                  any_flag=any_flag, subcommand=subcommand, options_first=options_first, code=code,
                  wrapper=wrapper, privileged=privileged, positionals=positionals, abbrev=abbrev,
                  versions=versions, device=device, tree=tree, tree_words=tree_words, roles=roles,
                  remote=remote)


def _wrapper(names: str, short: str = "", long: str = "", privileged: bool = False,
             positionals: int = 0, device: str = "names") -> ProgramSpec:
    # (a wrapper's own layer holds the words of what it runs: the wrapped command, checked as
    # its own layer, has the device role; the wrapper only names it)
    return ProgramSpec(tuple(names.split()), short, frozenset(long.split()), wrapper=True,
                       privileged=privileged, positionals=positionals, device=device)


def _roles(text: str) -> frozenset[str]:
    roles = frozenset(text.split())
    unknown = roles - ROLES.keys()
    assert not unknown, unknown
    return roles


# A family's versioned names: its names followed by a version (`python3.11`, `perl5.36`, `php8.2`,
# `node18`, `luajit-2.1`, `guile-3.0`), optionally with an ABI letter or a debug suffix
# (`python3.13t`, `python3.6m`, `python3.11-dbg`). Only families given `versions` fold: a
# version number on any other name is a different program.
def _versions(names: str, suffix: str = r"(?:[dmt]|-dbg)?") -> str:
    return rf"(?:{'|'.join(re.escape(n) for n in names.split())})-?[0-9]+(?:\.[0-9]+)*{suffix}"


def _floor(names: str, device: str = "reads", tree: str | None = None, roles: str = "", versions: str = "",
           tree_words: str = "") -> ProgramSpec:
    """A program the gate knows only for the floor's sake (the roles of its arguments)."""
    return ProgramSpec(tuple(names.split()), versions=versions, device=device, tree=tree,
                       tree_words=tuple(tree_words.split()), roles=_roles(roles))


# git config keys whose value is a command line git runs through the shell (or a program path).
_GIT_SHELL_KEYS = (
    r"core\.(?:pager|editor|sshcommand|askpass|gitproxy|alternaterefscommand|fsmonitor)|pager\..+|"
    r"diff\.external|diff\..+\.(?:command|textconv)|merge\..+\.driver|filter\..+\.(?:clean|smudge|process)|"
    r"gpg(?:\..+)?\.program|sequence\.editor|interactive\.difffilter|"
    r"(?:difftool|mergetool|browser|man)\..+\.(?:cmd|path)|web\.browser|"
    r"remote\..+\.(?:uploadpack|receivepack|vcs)|uploadpack\.packobjectshook|"
    r"sendemail\.(?:.+\.)?(?:sendmailcmd|smtpserver|tocmd|cccmd|headercmd)|submodule\..+\.update")
# git config keys that point git at code elsewhere (hooks, included config, transports, URL rewrites).
_GIT_OTHER_KEYS = (r"core\.hookspath|init\.templatedir|include\.path|includeif\..+\.path|"
                   r"protocol\.(?:.+\.)?allow|url\..+\.(?:insteadof|pushinsteadof)")
_GIT_KEYS = rf"alias\..+|credential(?:\..+)?\.helper|{_GIT_SHELL_KEYS}|{_GIT_OTHER_KEYS}"
# values that switch the code off or run a no-op (`core.fsmonitor=false`, `core.pager=cat`,
# `protocol.ext.allow=never`, `core.hooksPath=/dev/null`, `credential.helper=` resets the list)
_OFF = r"|true|false|no|off|0|never|/dev/null|cat"
_SSH_KEYS = r"proxycommand|localcommand|knownhostscommand|pkcs11provider|securitykeyprovider|include"
_APT_KEYS = r".*(?:invoke|install-pkgs|::bin::.*|::options|runscripts|::helper).*"
# ssh options that may send the connection somewhere else than the host named (back here):
# another config, a proxy command, a HostName; in a cluster only flags come before them (in
# `-oForwardAgent=yes` the F is part of -o's value).
_SSH_VALUES = "bBcDeEFiIJlLmoOpPQRSwW"
_SCP_VALUES = "cDFiJlNoPSXsBRb"
_SSH_KEYS_HERE = r"o\s*=?\s*(?i:hostname|proxycommand|include|proxyusefdpass)\b"
_SSH_HERE = rf"^-[^-\s{_SSH_VALUES}]*(?:F|{_SSH_KEYS_HERE})"
_INLINE = "runs code given inline"
_FROM_FILE = "runs code from a file it names"


def _git_code() -> tuple[Code, ...]:
    return (
        Code("key", ("-c", "--config-env"), keys=_GIT_KEYS, runs="git", unless=_OFF,
             what="runs a command (or points git at code)"),
        Code("option", ("--exec-path",), runs="", eq_only=True, what="runs git commands from a directory"),
        Code("setkey", keys=_GIT_KEYS, runs="", after=("config",), what="configures a command git runs later"),
        Code("key", ("-c", "--config"), keys=_GIT_KEYS, runs="git", after=("clone",), unless=_OFF,
             what="configures a command git runs"),
        Code("option", ("--template",), runs="", after=("clone", "init"), what="installs hooks git runs"),
        Code("option", ("-x", "--exec"), after=("rebase",)),
        Code("option", ("--upload-pack",), after=("fetch", "pull", "clone", "ls-remote")),
        Code("option", ("-u",), after=("clone", "ls-remote")),
        Code("option", ("--receive-pack", "--exec"), after=("push", "archive", "send-pack")),
        Code("option", ("--env-filter", "--tree-filter", "--index-filter", "--parent-filter", "--msg-filter",
                        "--commit-filter", "--tag-name-filter"), after=("filter-branch",)),
        Code("option", ("--sendmail-cmd", "--smtp-server", "--to-cmd", "--cc-cmd", "--header-cmd"),
             after=("send-email",)),
        Code("option", ("-x", "--extcmd"), after=("difftool",)),
        Code("option", ("-O", "--open-files-in-pager"), runs="", after=("grep",)),
        Code("word", ("run",), runs="argv", after=("bisect",)),
        Code("word", ("foreach",), runs="shell", after=("submodule",)),
    )


PROGRAMS: tuple[ProgramSpec, ...] = (
    # --- wrappers: the wrapped command is matched on its own (commands.unwrap) ---
    _wrapper("sudo", "ugpCDhrtTUc", "user group prompt close-from chdir host role type command-timeout other-user",
             privileged=True),
    _wrapper("doas", "uC", privileged=True),
    _wrapper("runuser", "ugGlw", "user group supp-group whitelist-environment", privileged=True),
    _wrapper("chroot", "", "userspec groups", privileged=True, positionals=1),
    _wrapper("xargs", "adEIiLlnPs", "arg-file delimiter eof replace max-lines max-args max-procs max-chars "
             "process-slot-var", privileged=True),
    _wrapper("env", "uCS", "unset chdir split-string block-signal default-signal ignore-signal"),
    _wrapper("nice", "n", "adjustment"),
    _wrapper("ionice", "cnp", "class classdata pid pgid uid"),
    _wrapper("nohup"),
    _wrapper("timeout", "sk", "signal kill-after", positionals=1),
    _wrapper("command"),
    _wrapper("builtin"),
    _wrapper("exec", "a"),
    _wrapper("time", "fo", "format output"),
    _wrapper("stdbuf", "ioe", "input output error"),
    _wrapper("setsid"),
    _wrapper("busybox", device="reads"),
    _wrapper("nocorrect"),
    _wrapper("flock", "wEc", "timeout conflict-exit-code command", positionals=1),
    _wrapper("chrt", "T", "sched-runtime sched-period sched-deadline", positionals=1),
    _wrapper("taskset", "", "cpu-list", positionals=1),
    # strace/ltrace: `-o '|cmd'` runs a command, `-E VAR=x` sets LD_PRELOAD, `-o FILE` writes.
    ProgramSpec(("strace",), "abeEIoOpPsSuX", wrapper=True, privileged=True, device="names",
                code=(Code("option", ("-o",), unless=r"[^|!].*", runs="pipe", what="pipes its output to a command"),)),
    ProgramSpec(("ltrace",), "aAeEnopsSuX", wrapper=True, privileged=True, device="names",
                code=(Code("option", ("-o",), unless=r"[^|!].*", runs="pipe", what="pipes its output to a command"),)),
    _wrapper("unbuffer"),
    _wrapper("watch", "n", "interval", privileged=True),
    _wrapper("systemd-run", "pEuMHdGrPq", "unit property uid gid setenv working-directory description slice",
             privileged=True),
    _wrapper("noglob"),
    # --- programs with global options and code-running shapes ---
    ProgramSpec(("git",), short="Cc", glued=False,
                long=frozenset({"git-dir", "work-tree", "namespace", "super-prefix", "config-env", "attr-source"}),
                eq_long=frozenset({"exec-path", "list-cmds"}),
                flags=frozenset({"-p", "-P", "--paginate", "--no-pager", "--bare", "--no-replace-objects",
                                 "--no-lazy-fetch", "--no-optional-locks", "--no-advice", "--literal-pathspecs",
                                 "--glob-pathspecs", "--noglob-pathspecs", "--icase-pathspecs"}),
                subcommand=True, code=_git_code(), roles=_roles("urls"),
                # (only where no repository's config can rewrite the URL: `fetch`, `push`… read
                # .git/config, whose `url.*.insteadOf` and `core.sshCommand` a command may have set)
                remote=Elsewhere(after=("clone", "ls-remote"), short="bcjouC",
                                 here_if=r"^(?:-c|--config(?:-env)?)(?:\s+|=)?\s*(?i:url\.|core\.sshcommand|"
                                         r"core\.gitproxy|include|ssh\.variant)",
                                 here_env=("GIT_SSH", "GIT_SSH_COMMAND", "GIT_PROXY_COMMAND", "GIT_CONFIG_PARAMETERS",
                                           "GIT_CONFIG_COUNT", "GIT_CONFIG_GLOBAL", "GIT_CONFIG_SYSTEM", "GIT_DIR",
                                           "GIT_CONFIG"))),
    ProgramSpec(("docker", "podman", "nerdctl"), roles=_roles("command-runner remote-command"), short="cHl",
                long=frozenset({"context", "host", "config", "log-level", "tlscacert", "tlscert", "tlskey", "url",
                                "connection", "identity", "root", "runroot", "storage-driver", "cgroup-manager",
                                "namespace", "address"}),
                flags=frozenset({"-D", "--debug", "--tls", "--tlsverify", "--remote", "-r"}), subcommand=True,
                code=(Code("option", ("--config",), runs="file", what="reads a config that runs credential helpers"),),
                remote=Elsewhere(after=("exec",), short="euw", flags="dilt",
                                 long=frozenset({"detach-keys", "env", "env-file", "user", "workdir", "preserve-fds",
                                                 "preserve-fd", "cidfile"}),
                                 long_flags=frozenset({"detach", "interactive", "tty", "privileged", "latest"}),
                                 hostless=frozenset({"-l", "--latest"}), what="container")),
    ProgramSpec(("kubectl", "oc"), roles=_roles("command-runner remote-command"), short="nsv",
                long=frozenset({"namespace", "context", "kubeconfig", "cluster", "user", "server", "token", "as",
                                "as-group", "as-uid", "request-timeout", "v", "certificate-authority",
                                "client-certificate", "client-key", "cache-dir", "tls-server-name", "log-dir",
                                "profile", "profile-output", "password", "username"}),
                flags=frozenset({"--insecure-skip-tls-verify", "--warnings-as-errors", "--match-server-version"}),
                subcommand=True,
                code=(Code("option", ("--kubeconfig",), runs="file", after=("*",),
                           what="reads a kubeconfig whose exec plugins run commands"),),
                remote=Elsewhere(after=("exec",), short="cfn", flags="itq", dashdash=True,
                                 long=frozenset({"container", "filename", "pod-running-timeout", "namespace"}),
                                 long_flags=frozenset({"stdin", "tty", "quiet"}), what="pod")),
    ProgramSpec(("systemctl",), device="names", short="HMtpsnoT",
                long=frozenset({"host", "machine", "type", "property", "signal", "lines", "output", "state",
                                "kill-whom", "kill-value", "job-mode", "root", "image", "what", "boot-loader-entry",
                                "boot-loader-menu", "reboot-argument", "timestamp", "check-inhibitors", "when",
                                "preset-mode", "message", "drop-in"}),
                any_flag=True, subcommand=True),
    ProgramSpec(("apt", "apt-get", "aptitude", "apt-cache", "apt-mark"), short="octa",
                long=frozenset({"option", "config-file", "target-release", "default-release", "host-architecture"}),
                any_flag=True, subcommand=True,
                code=(Code("key", ("-o", "--option"), keys=_APT_KEYS, runs="", what="configures a command apt runs"),
                      Code("option", ("-c", "--config-file"), runs="file", what="reads a config that can run commands"))),
    ProgramSpec(("dnf", "yum", "microdnf", "dnf5"), short="cdexR",
                long=frozenset({"config", "setopt", "installroot", "releasever", "enablerepo", "disablerepo", "exclude",
                                "repo", "repoid", "repofrompath", "forcearch", "debuglevel", "errorlevel", "color",
                                "destdir", "downloaddir", "comment", "advisory", "bz", "cve", "sec-severity"}),
                any_flag=True, subcommand=True),
    ProgramSpec(("find", "gfind", "bfs"), device="names", roles=_roles("lister"), code=(
        Code("argv", ("-exec", "-execdir", "-ok", "-okdir"), runs="argv", what="runs a command on what it finds"),)),
    ProgramSpec(("awk", "gawk", "mawk", "nawk", "busybox-awk"), roles=_roles("awk stdin-script"), short="fvFEilW",
                long=frozenset({"file", "assign", "field-separator", "exec", "include", "load", "source"}), code=(
        # `@` starts gawk's @load/@include and its indirect calls (`f="system"; @f("id")`)
        Code("text", tokens=r"\bsystem\b|(?<!\|)\|(?!\|)|@[A-Za-z_]", runs="code",
             what="runs a command from awk code (system(), a pipe, an extension)"),
        Code("option", ("-f", "--file", "-E", "--exec", "-i", "--include", "-l", "--load"), runs="file",
             what=_FROM_FILE))),
    ProgramSpec(("sed", "gsed"), roles=_roles("stdin-script"), short="efl", long=frozenset({"expression", "file", "line-length"}), code=(
        Code("text", tokens="sed", runs="code", what="runs a command (sed's `e` command or `s///e`)"),
        Code("option", ("-f", "--file"), short="f", runs="file", what=_FROM_FILE))),
    ProgramSpec(("perl",), versions=_versions("perl"), roles=_roles("interpreter"), short="MmIxCdDF", options_first=True, code=(
        Code("option", ("-e", "-E"), short="eE", runs="code", what=_INLINE),)),
    ProgramSpec(("ruby", "jruby", "irb"), versions=_versions("ruby jruby irb"), roles=_roles("interpreter"), short="IrCEFxKTW", options_first=True, code=(
        Code("option", ("-e",), short="e", runs="code", what=_INLINE),)),
    ProgramSpec(("python", "python2", "python3", "pypy", "pypy3", "ipython", "ipython3"), versions=_versions("python pypy ipython"), roles=_roles("interpreter"), short="WXmQ", options_first=True, code=(
        Code("option", ("-c",), short="c", runs="code", what=_INLINE),)),
    ProgramSpec(("node", "nodejs", "bun"), versions=_versions("node nodejs"), roles=_roles("interpreter"), short="rC", options_first=True, code=(
        Code("option", ("-e", "--eval", "-p", "--print"), short="ep", runs="code", what=_INLINE),)),
    ProgramSpec(("deno",), roles=_roles("interpreter"), subcommand=True, code=(Code("word", ("eval",), runs="code", what=_INLINE),)),
    ProgramSpec(("php",), versions=_versions("php"), roles=_roles("interpreter"), short="dcfzt", options_first=True, code=(Code("option", ("-r", "-B", "-R", "-E", "-F", "-d"), short="rBRE", runs="code",
                                      what=_INLINE),)),
    ProgramSpec(("lua", "luajit"), versions=_versions("lua luajit"), roles=_roles("interpreter"), short="l", options_first=True, code=(Code("option", ("-e",), short="e", runs="code", what=_INLINE),)),
    ProgramSpec(("Rscript", "R", "julia", "osascript", "scala", "groovy"), versions=_versions("julia"), roles=_roles("interpreter"), options_first=True, code=(
        Code("option", ("-e", "-E", "--eval", "--print"), runs="code", what=_INLINE),)),
    ProgramSpec(("pwsh", "powershell"), roles=_roles("interpreter"), options_first=True, code=(
        Code("option", ("-c", "-command", "-Command", "-encodedcommand", "-EncodedCommand", "-e", "-ec"), runs="code",
             what=_INLINE),)),
    ProgramSpec(("expect", "guile", "dc"), versions=_versions("guile"), roles=_roles("interpreter"), options_first=True, code=(
        Code("option", ("-c", "-e", "--expression", "-f", "--file"), runs="code", what=_INLINE),)),
    ProgramSpec(("gdb", "lldb"), roles=_roles("interpreter stdin-script"), code=(
        Code("option", ("-ex", "-iex", "--eval-command", "--init-eval-command", "-x", "-ix", "--command",
                        "--init-command", "-o", "--one-line", "-s", "--source"), runs="code", what=_INLINE),)),
    ProgramSpec(("vim", "vi", "nvim", "view", "ex", "gvim", "vimdiff", "rvim"), roles=_roles("interpreter"), code=(
        Code("option", ("-c", "--cmd", "-S", "-u", "-s"), runs="code",
             what="runs editor commands (`:!cmd`) or a script"),
        Code("text", tokens=r"(?:^|(?<= ))\+(?![0-9]*(?: |$))", runs="code", what="runs an editor command (`+!cmd`)"))),
    ProgramSpec(("tar", "gtar", "bsdtar"), tree="", roles=_roles("archiver"), short="bfFgHIKLNTVCX", abbrev=True, code=(
        Code("option", ("--to-command", "--use-compress-program", "--rsh-command", "--rmt-command",
                        "--info-script", "--new-volume-script", "-I", "-F"), short="IF",
             what="runs a command on the archive"),
        Code("key", ("--checkpoint-action",), keys=r"exec", what="runs a command at checkpoints"),
        Code("first", keys=r"(?-i:[A-Za-z]*[IF][A-Za-z]*)", runs="", what="runs a command on the archive"))),
    ProgramSpec(("rsync",), tree="ra", roles=_roles("copier remote-paths"), short="eBfTM", code=(
        Code("option", ("-e", "--rsh"), short="e", what="runs the remote shell command it is given"),),
        remote=Elsewhere(long=frozenset(
            "rsh rsync-path exclude include filter files-from exclude-from include-from password-file log-file "
            "partial-dir temp-dir backup-dir suffix link-dest compare-dest copy-dest chmod chown usermap groupmap "
            "timeout contimeout bwlimit max-size min-size max-delete port block-size modify-window out-format "
            "log-file-format iconv skip-compress compress-level compress-choice checksum-choice sockopts address "
            "protocol info debug outbuf stop-after stop-at remote-option copy-as early-input write-batch "
            "only-write-batch read-batch max-alloc".split()), long_flags=frozenset(
            "archive recursive verbose quiet progress dry-run compress checksum delete delete-before delete-during "
            "delete-delay delete-after delete-excluded partial human-readable stats times perms owner group links "
            "hard-links sparse inplace append append-verify update existing ignore-existing remove-source-files "
            "numeric-ids mkpath xattrs acls one-file-system relative no-relative itemize-changes whole-file "
            "size-only ignore-times fuzzy prune-empty-dirs safe-links copy-links copy-unsafe-links keep-dirlinks "
            "devices specials executability omit-dir-times super fake-super list-only force "
            "ignore-errors backup".split()),
        # a remote shell that is not plain ssh (`-e 'sh -c'`), or ssh sent elsewhere by its options
        here_if=r"^(?:-[^-\seBfTM]*e|--rsh)(?:=|\s+)?(?=[^\s=]|$)(?!(?:\S*/)?ssh(?:\s|$))|"
                rf"^(?:-[^-\seBfTM]*e|--rsh).*(?:\s-[^-\s{_SSH_VALUES}]*F|(?i:proxycommand|hostname|include))",
        here_env=("RSYNC_RSH",))),
    ProgramSpec(("zip",), tree="r", code=(Code("option", ("-TT", "--unzip-command"), what="runs a command to test the archive"),)),
    ProgramSpec(("ssh", "autossh", "slogin"), roles=_roles("command-runner remote-command"),
                short=_SSH_VALUES, code=(
        Code("key", ("-o",), keys=_SSH_KEYS, runs="ssh", what="runs a command here, not on the remote host"),
        Code("option", ("-F", "-I"), runs="file", what="reads a config or library that can run code here")),
                remote=Elsewhere(flags="46AaCfGgKkMNnqsTtVvXxYy", reparse=True, line=True, at_home=True,
                                 here_if=_SSH_HERE)),
    ProgramSpec(("scp", "sftp"), tree="r", roles=_roles("copier remote-paths"), short=_SCP_VALUES, code=(
        Code("key", ("-o",), keys=_SSH_KEYS, runs="ssh", what="runs a command here, not on the remote host"),
        Code("option", ("-F",), runs="file", what="reads a config that can run code here"),
        Code("option", ("-S", "-D"), what="runs the program it names for the connection")),
                remote=Elsewhere(here_if=rf"^-[^-\s{_SCP_VALUES}]*(?:[FSD]|{_SSH_KEYS_HERE})")),
    ProgramSpec(("make", "gmake", "bmake"), roles=_roles("stdin-script"), short="CfIjlOoWE", long=frozenset({"directory", "file", "makefile",
                                                                               "include-dir", "jobs", "eval"}), code=(
        Code("assign", ("SHELL", "MAKESHELL", ".SHELLFLAGS", "MAKEFLAGS", "MFLAGS", "GNUMAKEFLAGS", "CC", "CXX", "CPP",
                        "LD", "AR", "AS", "RM", "MAKE", "INSTALL", "LEX", "YACC", "M4"), runs="",
             what="replaces a program make runs"),
        Code("option", ("--eval", "-E"), runs="code", what="adds makefile code"))),
    ProgramSpec(("tmux",), short="cfLSTs", subcommand=True, code=(
        Code("option", ("-c", "-f"), runs="code", what="runs a command or reads a config of commands"),
        Code("word", ("new-session", "new", "new-window", "neww", "split-window", "splitw", "respawn-pane",
                      "respawnp", "respawn-window", "respawnw", "run-shell", "run", "send-keys", "send",
                      "pipe-pane", "pipep", "if-shell", "if", "display-popup", "popup", "source-file", "source",
                      "set-hook", "bind-key", "bind", "command-prompt", "confirm-before", "default-command",
                      "default-shell"), runs="", after=("*",), what="runs a command in tmux"))),
    ProgramSpec(("screen",), short="cehpSTX", code=(
        Code("option", ("-X", "-Q", "-c"), runs="", what="sends screen commands or reads a config"),
        Code("runner", runs="", what="runs a command in screen"))),
    ProgramSpec(("parallel", "sem"), roles=_roles("stdin-runner"), short="jPSadEILlnNsCe",
                long=frozenset({"jobs", "sshlogin", "arg-file", "delimiter", "eof", "replace", "max-lines",
                                "max-args", "max-replace-args", "max-chars", "colsep", "joblog", "results", "tmpdir",
                                "timeout", "delay", "retries", "workdir", "wd", "env", "tag-string", "tagstring",
                                "basefile", "bf", "return", "transferfile", "tf", "sshloginfile", "slf", "memfree",
                                "load", "nice", "block", "block-size", "recstart", "recend", "header", "termseq",
                                "limit", "halt", "ssh", "id", "semaphorename", "jobslot", "rpl", "tmux-length"}), code=(
        Code("runner", names=(":::", "::::", ":::+", "::::+"), runs="", what="runs a command for every input"),)),
    ProgramSpec(("sqlite3", "sqlite"), roles=_roles("interpreter"), code=(
        Code("text", tokens=r"\.(?:shell|system|load|excel|www)\b|\bload_extension\b|\bedit\s*\(|"
                            r"\.(?:once|output|import|read|o)\s+['\"]?\|", runs="code",
             glob_tokens=r"\.(?:shell|system|load|excel|www|once|output|import|read|o)\b|\bload_extension\b|\bedit\b",
             what="runs a command (.shell, .system, a pipe) or loads code"),)),
    ProgramSpec(("man",), roles=_roles("text"), code=(Code("option", ("-P", "--pager"), what="runs the pager it names"),
                                Code("option", ("-H", "--html"), runs="", what="runs a browser"))),
    ProgramSpec(("su",), code=(Code("option", ("-c", "--command", "--session-command"), runs="",
                                    what="runs a command as another user"),)),
    ProgramSpec(("fd", "fdfind"), code=(
        Code("argv", ("-x", "--exec", "-X", "--exec-batch"), runs="argv", what="runs a command on what it finds"),)),
    ProgramSpec(("rg",), tree="", roles=_roles("pattern text"), code=(Code("option", ("--pre",), what="runs a preprocessor on every file"),)),
    ProgramSpec(("script",), roles=_roles("stdin-runner"), short="cEIOqT", code=(Code("option", ("-c", "--command"), what="runs a command"),)),
    ProgramSpec(("nc", "ncat", "netcat", "nc.traditional", "nc.openbsd"), code=(
        Code("option", ("-e", "-c", "--exec", "--sh-exec", "--lua-exec"), what="runs a command for the connection"),)),
    ProgramSpec(("socat",), code=(
        Code("text", tokens=r"(?i)\b(?:exec|system):", runs="code", what="runs a command for the connection"),)),
    # launchers whose first plain word is the program they run: a rule must spell it
    *(ProgramSpec((name,), short=short, code=(Code("runner", runs="", what="runs a command"),),
                  roles=_roles("command-runner" if name in ("nsenter", "unshare", "firejail", "bwrap") else ""))
      for name, short in (("nsenter", "tSG"), ("unshare", "SGRw"), ("setpriv", ""), ("firejail", ""), ("bwrap", ""),
                          ("chpst", "ugUe/nlmdofcprt"), ("runcon", "turl"), ("ssh-agent", "aEPt"),
                          ("dbus-run-session", ""), ("valgrind", ""), ("entr", ""))),
    ProgramSpec(("crontab",), short="u", code=(Code("runner", runs="", what="installs commands cron runs"),)),
    # --- programs known for the floor's sake: the roles of their arguments ---
    # block devices written (`tee`, `dd of=`, `cp`/`mv` targets, `shred`, `mkfs*`)
    _floor("tee", device="writes", roles="names-consumer"),
    _floor("cp", device="writes", tree="rRa", roles="copier"),
    _floor("mv", device="writes", tree="", roles="copier"),
    _floor("install pv truncate shred wipefs blkdiscard mke2fs mkswap badblocks sgdisk sfdisk ddrescue flashrom "
           "sg_format nvme-format", device="writes"),
    _floor("mkfs", device="writes", versions=r"mkfs.+"),
    _floor("dd dcfldd dc3dd", device="operands"),
    # readers: what any program does with a file argument (the default); listed for the other roles
    _floor("cat head tail less more nl", roles="names-consumer"),
    _floor("tac strings xxd od hexdump hd base64 base32 xz bzip2 lz4 split sha256sum md5sum dump "
           "zcat bzcat xzcat zless zmore"),
    # URL fetchers: a `scheme://` operand is another machine; option values (`-o FILE`, `-K cfg`) are local
    ProgramSpec(("curl",), short="AbcCdDeEFHKmoPQrtTuUwxXyYz", roles=_roles("urls"), remote=Elsewhere(
        long=frozenset("output data data-raw data-binary data-urlencode header user user-agent request form cookie "
                       "cookie-jar config cacert capath cert key proxy referer max-time connect-timeout retry url "
                       "upload-file write-out output-dir range resolve connect-to interface limit-rate dump-header "
                       "netrc-file json trace trace-ascii stderr time-cond proxy-user oauth2-bearer".split()),
        long_flags=frozenset("silent show-error location fail fail-with-body insecure verbose include head "
                             "compressed remote-name remote-name-all progress-bar globoff get http1.1 http2 "
                             "create-dirs no-progress-meter remote-header-name".split()))),
    ProgramSpec(("wget", "wget2"), short="oaiBeOtTwQPUlARDXI", roles=_roles("urls"), remote=Elsewhere(
        long=frozenset("output-document output-file append-output input-file base execute tries timeout wait quota "
                       "directory-prefix user-agent level accept reject domains exclude-directories "
                       "include-directories header user password post-data post-file load-cookies save-cookies "
                       "ca-certificate certificate private-key referer".split()),
        long_flags=frozenset("quiet verbose no-verbose continue recursive mirror no-parent no-clobber timestamping "
                             "server-response spider no-check-certificate page-requisites convert-links "
                             "adjust-extension show-progress".split()))),
    ProgramSpec(("aria2c",), short="dDoilxsjkmtTMU", roles=_roles("urls"), remote=Elsewhere(
        long=frozenset("dir out input-file log max-connection-per-server split max-concurrent-downloads "
                       "min-split-size max-tries timeout torrent-file metalink-file user-agent".split()))),
    _floor("jq yq look", roles="text"),
    _floor("partclone", versions=r"partclone\..+"),
    _floor("gzip pigz zstd", tree="r"),
    # whole trees read, copied out or changed (the floor's "recursive … of a directory holding
    # protected files"): option letters that make them recursive, "" = always
    _floor("grep egrep fgrep", tree="rR", roles="pattern text names-consumer"),
    _floor("zgrep", tree="rR", roles="pattern text"),
    _floor("ugrep ug", tree="rR", roles="pattern text"),
    _floor("rgrep ag ack", tree="", roles="pattern text"),
    _floor("7z 7za 7zr 7zz", tree=""),
    _floor("pax", tree="w"),
    _floor("restic", tree="", tree_words="backup"),
    _floor("borg", tree="", tree_words="create"),
    _floor("kopia", tree="", tree_words="create"),
    _floor("rar", tree="", tree_words="a u"),
    _floor("tarsnap", tree="c"),
    _floor("duplicity", tree="", roles="remote-paths"),
    _floor("rdiff-backup", tree="", roles="copier"),
    _floor("rclone", tree="", roles="copier"),
    _floor("chmod chown chgrp setfacl chattr", tree="R", roles="setting"),
    _floor("srm wipe", tree="r"),
    # interpreters, REPLs and editors with a "run a shell command" command (`!cmd`, `.shell`)
    _floor("tclsh wish", roles="interpreter", versions=_versions("tclsh wish")),
    _floor("jshell", roles="interpreter", versions=_versions("jshell")),
    _floor("clisp sbcl ghci erl jrunscript source .", roles="interpreter"),
    _floor("ed", roles="interpreter stdin-script"),
    _floor("m4", roles="stdin-script"),
    _floor("at batch", roles="stdin-runner"),
    _floor("machinectl systemd-nspawn sg distrobox toolbox sshpass proot", roles="command-runner"),
    # (distrobox and toolbox share this machine's home: what they run is not elsewhere)
    ProgramSpec(("lxc", "incus"), roles=_roles("command-runner remote-command"), subcommand=True, any_flag=True,
                long=frozenset({"project"}),
                remote=Elsewhere(after=("exec",), short="", flags="tTn",
                                 long=frozenset({"env", "cwd", "user", "group", "mode"}),
                                 long_flags=frozenset({"force-interactive", "force-noninteractive",
                                                       "disable-stdin"}), what="container")),
    ProgramSpec(("lxc-attach",), roles=_roles("command-runner remote-command"), short="nPeEsuvgLf",
                remote=Elsewhere(dashdash=True, what="container")),
    # only print text, list, measure or show metadata: a device named is not read
    _floor("echo printf", device="names", roles="text looker"),
    _floor("logger wall notify-send figlet cowsay apropos", device="names", roles="text"),
    _floor("ls stat du realpath readlink basename dirname lsattr getfacl", device="names", roles="lister looker"),
    _floor("dir vdir tree df namei", device="names", roles="lister"),
    _floor("test true false", device="names", roles="looker"),
    _floor("[", device="names", roles="looker"),    # (the parser reads `[ … ]` as a test expression)
    _floor("wc sort uniq cut tr column rev fold fzf", roles="names-consumer"),
    # disk administration: names a device, reads or changes its metadata or partition table, never
    # copies its bytes out (fdisk -l, parted, growpart, resize2fs, lvextend, cryptsetup, smartctl…)
    _floor("fdisk cfdisk gdisk parted partprobe partx growpart resize2fs e2fsck tune2fs dumpe2fs e2label "
           "xfs_repair xfs_growfs xfs_info xfs_admin btrfs lsblk blkid blockdev smartctl hdparm sdparm nvme "
           "mount umount swapon swapoff cryptsetup mdadm losetup kpartx dmsetup pvcreate pvremove pvresize pvs "
           "pvdisplay pvmove pvchange pvck vgcreate vgextend vgreduce vgs vgdisplay lvcreate lvextend lvresize "
           "lvreduce lvremove lvs lvdisplay lvchange udevadm eject file findmnt journalctl zpool lsof fuser fstrim",
           device="names"),
    _floor("fsck", device="names", versions=r"fsck\..+"),
    # removing a device node, linking one (the floor's own rules see to `rm -rf /` and links to /dev)
    _floor("rm unlink rmdir", device="names"),
    _floor("ln"),
    # shell builtins the floor reads: cd moves the directory paths resolve against; alias, trap
    # and eval hold command text; set/read/mapfile fill positional parameters and arrays
    _floor("cd pushd popd alias trap eval set read mapfile readarray", device="names"),
)

def _index() -> dict[str, ProgramSpec]:
    out: dict[str, ProgramSpec] = {}
    for spec in PROGRAMS:
        for n in spec.names:
            assert n not in out, f"{n} is in two ProgramSpecs"
            out[n] = spec
    return out


_BY_NAME = _index()


@lru_cache(maxsize=1)
def _by_version() -> tuple[tuple[re.Pattern[str], ProgramSpec], ...]:
    """(compiled `versions` regex, spec) in PROGRAMS order; compiled on first use, not at import."""
    return tuple((re.compile(spec.versions), spec) for spec in PROGRAMS if spec.versions)


# Cached (bounded): the floor asks about the same few names many times per command.
@lru_cache(maxsize=4096)
def lookup(name: str) -> ProgramSpec | None:
    """The spec for program `name` (any path; versioned names fold to their family by the family's
    `versions` regex: `python3.12`, `pypy3.10`, `perl5.36`, `php8.2`, `node18`, `mkfs.ext4`)."""
    base = posixpath.basename(name.rstrip("/")) or name
    spec = _BY_NAME.get(base)
    if spec is None:
        spec = next((s for rx, s in _by_version() if rx.fullmatch(base)), None)
    return spec


def family(name: str) -> str:
    """The family name of program `name` (its spec's first name), or its basename when unknown."""
    spec = lookup(name)
    return spec.names[0] if spec is not None else (posixpath.basename(name.rstrip("/")) or name)


def has_role(name: str, role: str) -> bool:
    """Does program `name` have `role` (one of ROLES)?"""
    spec = lookup(name)
    return spec is not None and role in spec.roles


def device_role(name: str) -> str:
    """What program `name` does with a block device given as an argument (DEVICE_ROLES); an
    unknown program reads it."""
    spec = lookup(name)
    return spec.device if spec is not None else "reads"


def wrappers() -> dict[str, ProgramSpec]:
    """The wrappers `commands.unwrap` peels, by name."""
    return {n: spec for spec in PROGRAMS if spec.wrapper for n in spec.names}


# --- global options -------------------------------------------------------------------------------

def _option_arity(spec: ProgramSpec, word: str, nxt: bool) -> int | None:
    """How many words the global option `word` takes (1 or 2), or None when it is not one."""
    if word.startswith("--") and len(word) > 2:
        name, eq, _ = word[2:].partition("=")
        if word in spec.flags and not eq:
            return 1
        if name in spec.long:
            return 1 if eq else 2
        if name in spec.eq_long:
            return 1 if eq else None
        return 1 if spec.any_flag and not eq else None
    if word.startswith("-") and len(word) > 1:
        if word in spec.flags:
            return 1
        if len(word) == 2 and word[1] in spec.short:
            return 2
        if spec.glued and word[1] in spec.short:
            return 1
        if spec.any_flag:
            # a cluster of flags, possibly ending in one that takes a value: `-qqy`, `-yo X`
            last = next((i for i, ch in enumerate(word[1:], 1) if ch in spec.short), None)
            if last is None:
                return 1
            return 2 if last == len(word) - 1 else 1
    return None


def subcommand_index(spec: ProgramSpec, argv: list[str | None]) -> int | None:
    """Index of the subcommand (the first word after the global options), or None when a word
    before it is unknown or not a known global option (the program would stop there)."""
    i = 1
    while i < len(argv):
        w = argv[i]
        if w is None:
            return None
        if not w.startswith("-") or w == "-":
            return i
        if w == "--":
            return i + 1 if i + 1 < len(argv) else None
        n = _option_arity(spec, w, i + 1 < len(argv))
        if n is None:
            return None
        i += n
    return None


def without_globals(argv: list[str | None]) -> list[str | None] | None:
    """argv with the program's global options removed (`git -C x -c k=v push` → `git push`), or
    None when the program has none there or they cannot be read."""
    spec = lookup(argv[0] or "") if argv else None
    if spec is None or not spec.subcommand:
        return None
    i = subcommand_index(spec, argv)
    if i is None or i <= 1:
        return None
    return argv[:1] + argv[i:]


# --- code-running shapes --------------------------------------------------------------------------

class Site(NamedTuple):
    """Where a command runs code: a rule must spell `token` (at `offset` in word `word`)."""

    word: int
    offset: int
    token: str
    shown: str                  # what explain shows: `-c core.pager=…`
    what: str                   # why it matters: "runs a command"
    runs: str = ""              # "shell": `text` is a command line; "argv": words span[0]:span[1]
    text: str | None = None
    span: tuple[int, int] = (0, 0)


def _short(word: str, letters: str, stop: str = "") -> int:
    """Index of the first of `letters` in a short-option cluster `word` (`-lne` → 3), or -1; a
    letter of `stop` (an option taking the rest of the word as its value: `-Mfeature`) ends it."""
    if not word.startswith("-") or word.startswith("--") or len(word) < 2 or not letters:
        return -1
    for i, ch in enumerate(word[1:], 1):
        if ch in letters:
            return i
        if ch in stop or not ch.isalnum():
            return -1
    return -1


def _option_value(code: Code, spec: ProgramSpec, argv: list[str | None], i: int
                  ) -> tuple[bool, str | None, int, int]:
    """Does argv[i] give one of `code`'s options? (hit, value, index of the value's word, offset of
    the value in it). A value of None is unknown (a dynamic or missing word)."""
    w = argv[i] or ""
    nxt = argv[i + 1] if i + 1 < len(argv) else None
    glued = spec.glued or bool(code.after)      # git's subcommands accept `-xmake`, its globals do not
    for name in code.names:
        if w == name:
            if code.eq_only:
                return False, None, 0, 0
            return True, nxt, i + 1, 0
        if name.startswith("-") and w.startswith(name + "=") and (name.startswith("--") or len(name) > 2):
            return True, w[len(name) + 1:], i, len(name) + 1
        if len(name) == 2 and name[0] == "-" and glued and w.startswith(name) and len(w) > 2 \
                and not w.startswith("--") and not code.eq_only:
            return True, w[2:], i, 2
        if spec.abbrev and name.startswith("--") and w.startswith("--") and len(w.partition("=")[0]) >= 5:
            key, eq, val = w.partition("=")
            if name.startswith(key):
                return True, (val if eq else nxt), (i if eq else i + 1), (len(key) + 1 if eq else 0)
    at = _short(w, code.short, "".join(c for c in spec.short if c not in code.short))
    if at > 0:
        if at + 1 < len(w):
            return True, w[at + 1:], i, at + 1
        return True, nxt, i + 1, 0
    return False, None, 0, 0


def _matches(pattern: str, text: str) -> bool:
    return bool(pattern) and re.fullmatch(pattern, text, re.IGNORECASE | re.DOTALL) is not None


def _region(code: Code, spec: ProgramSpec, argv: list[str | None], sub: int | None) -> range:
    """The words `code` applies to."""
    if spec.options_first:
        end = _first_plain(spec, argv, 1)
        return range(1, end if end is not None else len(argv))
    if not spec.subcommand or code.after == ("*",):
        return range(1, len(argv))
    if not code.after:
        return range(1, sub if sub is not None else len(argv))
    if sub is None or argv[sub] not in code.after:
        return range(0)
    return range(sub + 1, len(argv))


def _first_plain(spec: ProgramSpec, argv: list[str | None], start: int, stop: tuple[str, ...] = ()) -> int | None:
    """Index of the first word from `start` that is not an option (nor an option's value)."""
    i = start
    while i < len(argv):
        w = argv[i]
        if w is None:
            return None
        if w in stop:
            return i
        if w == "--":
            return i + 1 if i + 1 < len(argv) else None
        if not w.startswith("-") or w == "-":
            return i
        if w.startswith("--"):
            i += 2 if ("=" not in w and w[2:] in spec.long) else 1
            continue
        at = _short(w, spec.short)
        i += 2 if at == len(w) - 1 else 1
    return None


def _sed_e(script: str) -> list[int]:
    """Offsets of GNU sed's `e` command and of `e` flags of `s` commands in `script`; `[-1]` for a
    script we cannot read (the caller then counts every `e` in it)."""
    out: list[int] = []
    i, n = 0, len(script)

    def regex_end(j: int, delim: str) -> int:
        while j < n and script[j] != delim:
            if script[j] == "\\":
                j += 1
            elif script[j] == "\n":
                return -1
            j += 1
        return j if j < n else -1

    while i < n:
        c = script[i]
        if c in " \t\n;{}!":
            i += 1
            continue
        if c == "#":
            i = script.find("\n", i)
            i = n if i < 0 else i
            continue
        # addresses: N, $, /re/, \cREc, first~step, addr,+N
        while i < n and (script[i].isdigit() or script[i] in "$,~+/\\ IM"):
            if script[i] in "/\\":
                delim = "/" if script[i] == "/" else (script[i + 1] if i + 1 < n else "")
                start = i + 1 if script[i] == "/" else i + 2
                end = regex_end(start, delim) if delim else -1
                if end < 0:
                    return [-1]
                i = end + 1
            else:
                i += 1
        if i >= n:
            break
        c = script[i]
        if c in "!{}; \t\n":
            continue
        if c == "e":
            out.append(i)
            i = script.find("\n", i)
            i = n if i < 0 else i
        elif c in "sy":
            if i + 1 >= n or script[i + 1] in "\\\n":
                return [-1]
            delim = script[i + 1]
            j = i + 2
            for _ in range(2):
                j = regex_end(j, delim)
                if j < 0:
                    return [-1]
                j += 1
            if c == "s":
                while j < n and (script[j].isalnum() or script[j] in "eE"):
                    if script[j] == "e":
                        out.append(j)
                    if script[j] == "w":          # `w FILE` runs to the end of the line
                        j = n if script.find("\n", j) < 0 else script.find("\n", j)
                        break
                    j += 1
            i = j
        elif c in "aicrRwWbtTv:qQlLF=dDgGhHnNpPxzZ":
            if c in "aicrRwWbtTv:":
                ends = [k for k in (script.find("\n", i), script.find(";", i) if c in "btTv:" else -1) if k >= 0]
                i = min(ends) if ends else n
            else:
                i += 1
                while i < n and script[i].isdigit():
                    i += 1
        else:
            return [-1]
    return out


def _text_words(code: Code, spec: ProgramSpec, argv: list[str | None], start: int) -> list[int]:
    """Indexes of the words holding program text (awk's program, sed's script) or, for programs
    whose every argument may hold commands (sqlite3, vim's `+cmd`), all of them."""
    name = lookup(argv[0] or "")
    if name is None:
        return []
    base = name.names[0]
    if base in ("awk", "sed"):
        out = []
        given = False
        i = start
        while i < len(argv):
            w = argv[i]
            if w is None:
                i += 1
                continue
            if base == "awk" and (w in ("-e", "--source") or w.startswith("--source=")):
                given = True
                if w.startswith("--source="):
                    out.append(i)
                elif i + 1 < len(argv):
                    out.append(i + 1)
                i += 2 if "=" not in w else 1
                continue
            if base == "sed" and (w in ("-e", "--expression") or w.startswith("--expression=")
                                  or (_short(w, "e") > 0)):
                given = True
                at = _short(w, "e")
                if w.startswith("--expression=") or (at > 0 and at + 1 < len(w)):
                    out.append(i)
                elif i + 1 < len(argv):
                    out.append(i + 1)
                i += 1 if (w.startswith("--expression=") or (at > 0 and at + 1 < len(w))) else 2
                continue
            if w in ("-f", "--file") or w.startswith("--file=") or (_short(w, "f") > 0) or \
                    (base == "awk" and (w in ("-E", "--exec") or w.startswith("--exec="))):
                given = True
            if w == "--":
                i += 1
                break
            if w.startswith("-") and w != "-":
                i += 2 if (len(w) == 2 and w[1] in spec.short) or w[2:] in spec.long else 1
                continue
            break
        if not given and i < len(argv):
            out.append(i)
        return out
    return list(range(start, len(argv)))


def _text_offsets(code: Code, word: str) -> list[int]:
    if code.tokens == "sed":
        found = _sed_e(word)
        # a script we cannot read: every `e` in it may be the command (a rule must spell them)
        return [m.start() for m in re.finditer("e", word)] if found == [-1] else found
    return [m.start() for m in re.finditer(code.tokens, word)]


def _shown(word: str, limit: int = 40) -> str:
    return word if len(word) <= limit else word[:limit - 1] + "…"


def sites(argv: list[str | None]) -> list[Site]:
    """The code-running shapes in one command's argv (argv[0] the program; `None` = a word not
    known statically). Empty for programs the table does not know."""
    if not argv or argv[0] is None:
        return []
    spec = lookup(argv[0])
    if spec is None or not spec.code:
        return []
    sub = subcommand_index(spec, argv) if spec.subcommand else None
    found: list[Site] = []
    for code in spec.code:
        region = _region(code, spec, argv, sub)
        if not region:
            continue
        if code.kind == "text":
            for i in _text_words(code, spec, argv, region.start):
                w = argv[i]
                if w is None or i not in region:
                    continue
                for off in _text_offsets(code, w):
                    token = w[off:off + 12]
                    found.append(Site(i, off, token, _shown(w), code.what))
            continue
        if code.kind == "first":
            w = argv[1] if len(argv) > 1 else None
            if w is not None and not w.startswith("-") and _matches(code.keys, w):
                found.append(Site(1, 0, w, w, code.what))
            continue
        if code.kind == "runner":
            at = _first_plain(spec, argv, region.start, code.names)
            if at is not None and at < len(argv) and argv[at] is not None:
                found.append(Site(at, 0, argv[at] or "", _shown(" ".join(w or "?" for w in argv[at:])), code.what))
            continue
        i = region.start
        while i < region.stop:
            w = argv[i]
            if w is None:
                i += 1
                continue
            site = _site_at(code, spec, argv, i, sub)
            if site is not None:
                found.append(site)
                if code.kind in ("argv",) and site.span[1] > i:
                    i = site.span[1]
                    continue
                if code.kind == "word" and code.runs:
                    break
            i += 1
    return found


def _site_at(code: Code, spec: ProgramSpec, argv: list[str | None], i: int, sub: int | None) -> Site | None:
    w = argv[i] or ""
    if code.kind == "option":
        hit, value, vi, voff = _option_value(code, spec, argv, i)
        if not hit or (value is not None and _matches(code.unless, value)):
            return None
        shown = _shown(w if vi == i else f"{w} {value if value is not None else '?'}")
        if code.runs == "pipe":
            return Site(i, 0, w, shown, code.what, "shell", value[1:] if value else value)
        return Site(i, 0, w.partition("=")[0] if vi == i and w.startswith("--") else w, shown, code.what,
                    "shell" if code.runs == "shell" else "", value)
    if code.kind == "key":
        hit, value, vi, voff = _option_value(code, spec, argv, i)
        if not hit or value is None:
            return None
        sep = re.search(r"[=\s]", value)
        key = value[:sep.start()] if sep else value
        val: str | None = value[sep.end():] if sep else ""
        if code.runs == "git" and not sep:
            val = "true"                         # `git -c key` is key=true
        if w.startswith("--config-env"):
            val = None                           # the value comes from an environment variable
        if not _matches(code.keys, key) or (val is not None and _matches(code.unless, val)):
            return None
        opt = w if vi != i else w[:voff].rstrip("=")
        shown = f"{opt} {key}=…"
        if vi == i and not w.startswith("--"):
            voff = 0                             # `-oProxyCommand=…`: a rule spells the whole word
        runs, text = "", None
        if code.runs == "git":
            lowered = key.lower()
            if lowered.startswith("alias."):
                return _git_alias(argv, i, vi, voff, key, val, sub, shown, code.what)
            if re.fullmatch(r"credential(?:\..+)?\.helper", lowered):
                runs, text = "shell", _git_helper(val)
            elif re.fullmatch(_GIT_SHELL_KEYS, lowered):
                runs, text = "shell", (val[1:] if val and val.startswith("!") else val)
        elif code.runs == "ssh" and key.lower() in ("proxycommand", "localcommand", "knownhostscommand"):
            runs, text = "shell", val
        elif code.runs == "shell":
            runs, text = "shell", (val[len("exec="):] if val and val.startswith("exec=") else val)
        return Site(vi, voff, key, shown, code.what, runs, text)
    if code.kind == "setkey":
        if w.startswith("-") or not _matches(code.keys, w):
            return None
        rest = [a for a in argv[i + 1:] if a is None or not a.startswith("-")]
        before = [a for a in argv[(sub or 0) + 1:i] if a is not None]
        reads = {"--get", "--get-all", "--get-regexp", "--get-urlmatch", "-l", "--list", "get", "list",
                 "--unset", "--unset-all", "unset", "--remove-section", "remove-section"}
        if not rest or reads.intersection(before):
            return None
        return Site(i, 0, w, f"config {w} …", code.what)
    if code.kind == "argv":
        if w not in code.names:
            return None
        end = i + 1
        while end < len(argv) and not (argv[end] == ";" or (argv[end] == "+" and argv[end - 1] == "{}")):
            end += 1
        return Site(i, 0, w, _shown(" ".join(a or "?" for a in argv[i:end + 1])), code.what, "argv",
                    span=(i + 1, end))
    if code.kind == "word":
        if w not in code.names:
            return None
        if code.runs == "argv":
            return Site(i, 0, w, f"{w} …", code.what, "argv", span=(i + 1, len(argv)))
        if code.runs == "shell":
            rest = argv[i + 1:]
            while rest and rest[0] is not None and rest[0].startswith("-"):
                rest = rest[1:]
            text = None if any(a is None for a in rest) else " ".join(a or "" for a in rest)
            return Site(i, 0, w, f"{w} …", code.what, "shell", text)
        return Site(i, 0, w, f"{w} …", code.what)
    if code.kind == "assign":
        name, eq, _ = w.partition("=")
        if not eq or name not in code.names:
            return None
        return Site(i, 0, name, f"{name}=…", code.what)
    return None


def _git_helper(value: str | None) -> str | None:
    """The command a credential helper value runs: `!cmd`, a path, or `git credential-NAME`."""
    if value is None:
        return None
    if value.startswith("!"):
        return value[1:]
    if "/" in value.split(" ", 1)[0]:
        return value
    return "git credential-" + value


def _git_alias(argv: list[str | None], i: int, vi: int, voff: int, key: str, val: str | None,
               sub: int | None, shown: str, what: str) -> Site:
    """`git -c alias.NAME=VALUE NAME ARGS`: the alias runs `!VALUE ARGS` through the shell, or is
    `git VALUE ARGS` — which may itself run code or be a command a deny rule refuses."""
    name = key.partition(".")[2]
    used = sub is not None and argv[sub] == name
    if not used:
        return Site(vi, voff, key, shown, "defines a git alias")
    if val is None or any(a is None for a in argv[(sub or 0) + 1:]):
        return Site(vi, voff, key, shown, what, "shell", None)
    import shlex  # here, not at the top: its import costs every start half a millisecond

    args = " ".join(shlex.quote(a or "") for a in argv[(sub or 0) + 1:])
    text = val[1:] if val.startswith("!") else "git " + val
    return Site(vi, voff, key, shown, "runs a command (a git alias)", "shell", (text + " " + args).strip())


# --- rule globs: where a rule spells a token --------------------------------------------------------

def _token_of(code: Code, spec: ProgramSpec, token: str) -> bool:
    if code.kind in ("option",):
        if token in code.names or (_short(token, code.short) > 0):
            return True
        if any(len(n) == 2 and token.startswith(n) and len(token) > 2 for n in code.names):
            return True
        if spec.abbrev and token.startswith("--") and len(token) >= 5:
            return any(n.startswith(token) for n in code.names)
        return False
    if code.kind in ("key", "setkey"):
        if _matches(code.keys, token):
            return True
        return any(len(n) == 2 and token.startswith(n) and _matches(code.keys, token[2:]) for n in code.names)
    if code.kind in ("argv", "word", "assign"):
        return token in code.names
    if code.kind == "first":
        return _matches(code.keys, token)
    return False


def is_token(program: str, token: str) -> bool:
    """Does `token` (a whole option, key or word as a rule spells it) name a code-running shape of
    `program`? Used to find where a rule's glob spells a token."""
    spec = lookup(program)
    return spec is not None and any(_token_of(c, spec, token) for c in spec.code)


def text_tokens(program: str, text: str) -> list[int]:
    """Offsets in `text` (a literal stretch of a rule's glob) of in-text tokens of `program`
    (awk's `system`, sqlite3's `.shell`, sed's `e`)."""
    spec = lookup(program)
    if spec is None:
        return []
    out: list[int] = []
    for code in spec.code:
        if code.kind != "text":
            continue
        if code.tokens == "sed":
            out.extend(m.start() for m in re.finditer("e", text))
        else:
            out.extend(m.start() for m in re.finditer(code.glob_tokens or code.tokens, text))
    return out


# --- other machines: remote paths, URLs, remote commands ---------------------------------------------

class Remote(NamedTuple):
    """What one command's arguments name on other machines (`elsewhere`)."""

    paths: tuple[int, ...] = ()             # operands naming a path or URL on another machine
    host: int | None = None                 # the word naming the machine a command runs on
    command: tuple[int, int] | None = None  # the span of words run there
    line: bool = False                      # they reach it as one command line (ssh), else as argv
    at_home: bool = False                   # they start in the remote user's home directory
    what: str = "host"


_NOWHERE = Remote()
_URL = LazyPattern(r"([A-Za-z][A-Za-z0-9+.-]*)://")


def remote_url(word: str) -> bool:
    """Is `word` a URL naming another machine (any scheme but `file`)?"""
    m = _URL.match(word)
    return m is not None and m.group(1).lower() != "file"


def url_host(url: str) -> str:
    """The host of `scheme://[user@]host[:port]/…` (an IPv6 host in brackets)."""
    authority = re.split(r"[/?#]", url.partition("://")[2], maxsplit=1)[0].rpartition("@")[2]
    if authority.startswith("["):
        return authority.partition("]")[0] + "]"
    return authority.partition(":")[0]


# Names and addresses of this machine's loopback (and of "any address", which connects here),
# for a host holding an unknown expansion ("\x00", the floor's mark) to be tried against.
_HERE_SAMPLES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback", "x.localhost", "127.0.0.1",
                 "127.1", "0", "0.0.0.0", "::1", "::", "::ffff:127.0.0.1", "2130706433", "0x7f000001", "0177.1")


def _inet_aton_first(text: str) -> int | None:
    """The first byte of the IPv4 address `text` is to inet_aton (`127.1`, `0x7f.1`, `0177.0.0.1`,
    `2130706433`), or None when it is not one."""
    parts = text.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    values = []
    for part in parts:
        try:
            if part[:2] in ("0x", "0X"):
                values.append(int(part[2:], 16))
            elif len(part) > 1 and part[0] == "0":
                values.append(int(part[1:], 8))
            else:
                values.append(int(part, 10))
        except ValueError:
            return None
    if any(v > 255 for v in values[:-1]) or values[-1] >= 256 ** (5 - len(values)):
        return None
    return values[0] if len(values) > 1 else values[0] >> 24


def may_be_here(host: str) -> bool:
    """Can `host` (`user@host`, `[::1]`, `ssh://user@host:22`) be this machine? Loopback names and
    addresses in any spelling inet_aton and getaddrinfo accept (`127.1`, `0x7f.1`, `2130706433`,
    `[::ffff:127.0.0.1]`, `*.localhost`), "any address" (`0`, `0.0.0.0`, `::`), and a host with an
    unknown part that could be one of them. (This machine's own names and other addresses are
    not known to the pure core: an allow rule for `ssh` is the policy's word on which hosts may
    be reached.)"""
    h = host.partition("://")[2] if "://" in host else host
    h = h.rpartition("@")[2].strip().lower().rstrip(".")
    if h.startswith("["):
        h = h[1:].partition("]")[0]
    elif h.count(":") == 1:
        h = h.partition(":")[0]                       # ssh://host:22
    h = h.partition("%")[0]                           # an IPv6 zone
    if "\x00" in h:
        rx = re.compile("".join(".*" if ch == "\x00" else re.escape(ch) for ch in h), re.DOTALL)
        return any(rx.fullmatch(sample) for sample in _HERE_SAMPLES)
    if h in ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback") or h.endswith(".localhost"):
        return True
    import ipaddress  # here: ~1 ms to import, and only host checks need it

    try:
        ip = ipaddress.ip_address(h)
    except ValueError:
        pass
    else:
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return ip.is_loopback or ip.is_unspecified
    if re.fullmatch(r"(?:0x[0-9a-f]+|[0-9]+)(?:\.(?:0x[0-9a-f]+|[0-9]+)){0,3}", h):
        return _inet_aton_first(h) in (0, 127)
    return False


def host_path(word: str) -> int:
    """Where the `:` of `host:path` is in `word`, as scp and rsync read it (OpenSSH's `colon()`): a
    `:` before any `/`, not first; a bracketed IPv6 host (`[::1]:x`, `user@[::1]:x`) may hold
    colons. 0 when `word` is a local path (`./a:b`, `/x:y`, `:x`)."""
    if not word or word[0] == ":":
        return 0
    bracket = word[0] == "["
    for i, ch in enumerate(word):
        if ch == "@" and word[i + 1:i + 2] == "[":
            bracket = True
        if ch == "]" and bracket and word[i + 1:i + 2] == ":":
            return i + 1
        if ch == ":" and not bracket:
            return i
        if ch == "/":
            return 0
    return 0


def _option_words(spec: ProgramSpec, e: Elsewhere, word: str) -> int | None:
    """How many words option `word` takes (1, or 2 with a separate value); None when the grammar
    does not know it (it may take the next word)."""
    short = spec.short if e.short is None else e.short
    if word.startswith("--"):
        name, eq, _ = word[2:].partition("=")
        if eq or name in e.long_flags:
            return 1
        return 2 if name in e.long else None
    for k, ch in enumerate(word[1:], 1):
        if ch in short:
            return 1 if k < len(word) - 1 else 2
        if e.flags is not None and ch not in e.flags:
            return None
    return 1


def _reroutes(e: Elsewhere, argv: list[str | None], i: int, n: int) -> bool:
    """Does the option at argv[i] (taking `n` words) send the connection somewhere unknown (here)?"""
    if not e.here_if:
        return False
    value = argv[i + 1] if n == 2 and i + 1 < len(argv) else ""
    return value is None or re.search(e.here_if, f"{argv[i]} {value}" if n == 2 else argv[i] or "") is not None


def _operands(spec: ProgramSpec, e: Elsewhere, argv: list[str | None], start: int, stop: int) -> list[int] | None:
    """Indexes in argv[start:stop] of words that are surely operands: never an option, nor a word
    an option (or an unknown word, which may be one) could take as its value. None when an option
    may send the connection back here (`Elsewhere.here_if`; an unknown word may be such an option)."""
    out: list[int] = []
    i, done = start, False
    while i < stop:
        w = argv[i]
        if w is None:
            if e.here_if:
                return None
            i += 2
        elif not done and w == "--":
            done, i = True, i + 1
        elif not done and w.startswith("-") and w != "-":
            n = _option_words(spec, e, w)
            if _reroutes(e, argv, i, n or 1):
                return None
            i += 2 if n is None else n
        else:
            out.append(i)
            i += 1
    return out


def _hostless(e: Elsewhere, word: str) -> bool:
    if word in e.hostless:
        return True
    return not word.startswith("--") and any("-" + ch in e.hostless for ch in word[1:])


def _command(spec: ProgramSpec, e: Elsewhere, argv: list[str | None], start: int) -> tuple[int | None, int] | None:
    """(index of the word naming the machine, start of the command run there), or None when the
    words cannot be read that far (an unknown word or option before the command)."""
    if e.dashdash:
        end = next((k for k in range(start, len(argv)) if argv[k] == "--"), None)
        if end is None:
            return None
        ops = _operands(spec, e, argv, start, end)
        if ops is None:
            return None
        return (ops[0] if ops else None), end + 1
    i, done, host, hostless = start, False, None, False
    while i < len(argv):
        w = argv[i]
        if w is None:
            return None
        if not done and w == "--":
            done, i = True, i + 1
            continue
        if not done and w.startswith("-") and w != "-":
            n = _option_words(spec, e, w)
            if n is None or _reroutes(e, argv, i, n):
                return None
            hostless = hostless or _hostless(e, w)
            i += n
            continue
        if host is None and not hostless:
            host, i = i, i + 1
            if e.reparse:
                continue
            if i < len(argv) and argv[i] == "--":
                i += 1
        break
    if host is None and not hostless:
        return None
    if host is not None and e.what == "host" and may_be_here(argv[host] or ""):
        return None
    return host, min(i, len(argv))


def elsewhere(argv: list[str | None]) -> Remote:
    """The words of one command (argv[0] the program; `None` = a word not known statically, or
    one that may start with `-`) that name another machine, by the program's roles: `host:path`
    operands (scp, rsync), URLs (curl, wget, git clone), the command run on a host, container or
    pod (ssh, docker/podman exec, kubectl exec, lxc exec). Empty for every other program."""
    spec = lookup(argv[0]) if argv and argv[0] is not None else None
    e = spec.remote if spec is not None else None
    if spec is None or e is None:
        return _NOWHERE
    start = 1
    if e.after:
        sub = subcommand_index(spec, argv) if spec.subcommand else 1
        if sub is None or sub >= len(argv) or argv[sub] not in e.after:
            return _NOWHERE
        if any(w is None or _reroutes(e, argv, i, 2 if w in ("-c", "--config", "--config-env") else 1)
               for i, w in enumerate(argv[1:sub], 1) if e.here_if):
            return _NOWHERE                       # a global option rerouting it (`git -c core.sshCommand=…`)
        start = sub + 1
    if "remote-command" in spec.roles:
        found = _command(spec, e, argv, start)
        if found is None:
            return _NOWHERE
        host, at = found
        return Remote(host=host, command=(at, len(argv)), line=e.line, at_home=e.at_home, what=e.what)
    ops = _operands(spec, e, argv, start, len(argv)) or []
    paths = []
    for k in ops:
        w = argv[k] or ""
        colon = host_path(w) if "remote-paths" in spec.roles else 0
        if remote_url(w):
            if not may_be_here(url_host(w)):
                paths.append(k)
        elif colon and not may_be_here(w[:colon]):
            paths.append(k)
    return Remote(paths=tuple(paths), what=e.what) if paths else _NOWHERE


def runner_index(argv: list[str | None]) -> int | None:
    """For a program that runs its first plain word as a command (parallel, screen): its index."""
    spec = lookup(argv[0] or "") if argv else None
    if spec is None:
        return None
    for code in spec.code:
        if code.kind == "runner":
            return _first_plain(spec, argv, 1, code.names)
    return None


__all__ = ["Code", "ProgramSpec", "PROGRAMS", "ROLES", "DEVICE_ROLES", "Site", "lookup", "family", "has_role",
           "device_role", "wrappers", "subcommand_index", "without_globals",
           "sites", "is_token", "text_tokens", "runner_index", "Elsewhere", "Remote", "elsewhere", "host_path",
           "remote_url", "url_host", "may_be_here"]
