"""Generated tests over the program table (programs.PROGRAMS): the floor reads the roles of a
program's arguments from it, so every alias of a program gets the same verdict for the same
arguments, and every reading role meets every floor target."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from cmdop.core.calls import Caller, CallerKind, ToolCall
from cmdop.core.policy import programs
from cmdop.core.policy.floor_cmd import check_command
from cmdop.core.policy.gate import Policy, decide
from cmdop.core.policy.index import RuleSet

HOME = "/home/u"
CWD = "/srv/app"
FLOOR_FILES = ["~/.ssh/id_rsa", "/etc/shadow", "~/.env", "~/.config/cmdop/permissions.yaml"]
# versioned spellings each family's `versions` regex must fold
VERSIONED = {"python": ["python3.11", "python3.13t", "python3.6m", "python3.11-dbg", "pypy3.10", "python2.7"],
             "perl": ["perl5.36", "perl5"], "php": ["php8.2", "php82"], "ruby": ["ruby3.1", "jruby9"],
             "node": ["node18", "nodejs20"], "lua": ["lua5.4", "luajit-2.1"], "tclsh": ["tclsh8.6", "wish8.6"],
             "guile": ["guile-3.0"], "mkfs": ["mkfs.ext4", "mkfs.xfs"], "fsck": ["fsck.ext4"],
             "partclone": ["partclone.ext4"], "jshell": ["jshell17"], "Rscript": ["julia1.9"]}


def _spellings(spec: programs.ProgramSpec) -> list[str]:
    return [*spec.names, *VERSIONED.get(spec.names[0], [])]


def _id(spec: programs.ProgramSpec) -> str:
    return spec.names[0]


def _tree_command(name: str, spec: programs.ProgramSpec, target: str) -> str:
    """A command in which `name` works recursively on `target`, by its table entry."""
    words = [name]
    words += list(spec.tree_words[:1])
    if spec.tree:
        words.append("-" + spec.tree[0])
    if "archiver" in spec.roles:
        words.append("-c")
    if "pattern" in spec.roles:
        words.append("KEY")
    if "setting" in spec.roles:
        words.append("u+r")
    words.append(target)
    if "copier" in spec.roles:
        words.append("/tmp/out")
    return " ".join(words)


def test_every_family_spelling_folds_to_its_family() -> None:
    for family, names in VERSIONED.items():
        for name in names:
            spec = programs.lookup(name)
            assert spec is not None and programs.lookup(family) is spec, name
    # a version number on a program without `versions` is another program
    assert programs.lookup("cat2") is None and programs.lookup("tee9") is None


def test_roles_are_from_the_vocabulary() -> None:
    for spec in programs.PROGRAMS:
        assert spec.device in programs.DEVICE_ROLES, spec.names
        assert spec.roles <= programs.ROLES.keys(), spec.names
        assert not spec.tree_words or spec.tree is not None, spec.names


DEVICE_SPECS = [s for s in programs.PROGRAMS if s.device != "names"]


@pytest.mark.parametrize("spec", DEVICE_SPECS, ids=_id)
def test_every_alias_reading_or_writing_a_device_is_denied(spec: programs.ProgramSpec) -> None:
    for name in _spellings(spec):
        command = f"{name} if=/dev/sda of=out.img" if spec.device == "operands" else f"{name} /dev/sda"
        if "pattern" in spec.roles:
            command = f"{name} KEY /dev/sda"
        reason = check_command(command, HOME, CWD)
        assert reason and "block device /dev/sda" in reason, command


@pytest.mark.parametrize("spec", programs.PROGRAMS, ids=_id)
def test_every_alias_gets_the_same_verdict(spec: programs.ProgramSpec) -> None:
    for args in ("/dev/sda", "-r KEY ~", "~", "-c ~/.ssh/id_rsa", "x | sh", "out.txt", "-", "/etc/shadow"):
        verdicts = {name: check_command(f"{name} {args}", HOME, CWD) is not None for name in _spellings(spec)}
        assert len(set(verdicts.values())) == 1, (args, verdicts)


TREE_SPECS = [s for s in programs.PROGRAMS if s.tree is not None]


@pytest.mark.parametrize("spec", TREE_SPECS, ids=_id)
@pytest.mark.parametrize("target", ["~", "/", "/etc", "~/.ssh", "/home"])
def test_every_alias_of_a_tree_reader_is_denied_a_tree_of_protected_files(spec: programs.ProgramSpec,
                                                                          target: str) -> None:
    for name in _spellings(spec):
        command = _tree_command(name, spec, target)
        assert check_command(command, HOME, CWD), command


@pytest.mark.parametrize("spec", TREE_SPECS, ids=_id)
def test_a_tree_reader_over_a_project_tree_is_not_floor(spec: programs.ProgramSpec) -> None:
    for name in _spellings(spec):
        command = _tree_command(name, spec, "./src")
        assert check_command(command, HOME, CWD) is None, command


def test_an_unknown_program_reads_a_device_it_is_given() -> None:
    for command in ("frobnicate /dev/sda", "debugfs -R 'cat /home/u/.ssh/id_rsa' /dev/sda1",
                    "e2image /dev/sda1 x.img", "qemu-img convert /dev/sda disk.qcow2"):
        assert check_command(command, HOME, CWD), command


# Every reading role (a program from each) × every floor target × caller × mode: the floor denies.
READERS = sorted({s.names[0] for s in programs.PROGRAMS if s.device in ("reads", "operands")
                  and not s.wrapper} - {"dd", "dcfldd", "dc3dd"})
ROLE_SAMPLES = ["cat", "python", "php", "nl", "zcat", "grep", "tar", "jq", "curl", "frobnicate"]


def _decide(command: str, kind: CallerKind, mode: str) -> tuple[str, str]:
    d = decide(ToolCall("execute_command", {"command": command}, "", CWD), Caller(kind),
               Policy(mode=mode, global_rules=RuleSet([])), HOME)
    return d.decision, d.source


@pytest.mark.parametrize("program", ROLE_SAMPLES)
@pytest.mark.parametrize("target", [*FLOOR_FILES, "/dev/sda"])
@pytest.mark.parametrize("kind", [CallerKind.LOCAL, CallerKind.REMOTE])
@pytest.mark.parametrize("mode", ["strict", "bypass"])
def test_every_reader_of_every_floor_target_is_denied_for_every_caller_and_mode(
        program: str, target: str, kind: CallerKind, mode: str) -> None:
    words = f"{program} KEY {target}" if programs.has_role(program, "pattern") else f"{program} {target}"
    assert _decide(words, kind, mode) == ("deny", "floor"), words


@pytest.mark.parametrize("program", READERS)
def test_every_reader_in_the_table_is_denied_a_floor_file(program: str) -> None:
    spec = programs.lookup(program)
    assert spec is not None
    for target in FLOOR_FILES:
        command = f"{program} KEY {target}" if "pattern" in spec.roles else f"{program} {target}"
        assert check_command(command, HOME, CWD), command


ISSUE_DENIED = [
    "python /dev/sda", "python3 /dev/sda", "python3.11 /dev/sda", "pypy3 /dev/sda", "php /dev/sda",
    "php8.2 /dev/sda", "perl5.36 /dev/sda", "nl /dev/sda", "zcat /dev/sda", "dcfldd if=/dev/sda of=x.img",
    "pax -w ~", "pax -wf x.pax ~", "restic backup ~", "restic -r /srv/backup backup ~", "borg create repo::a ~",
    "ugrep -r KEY ~", "ug -r KEY ~", "rg KEY ~", "7z a x.7z ~", "7zz a x.7z ~", "gtar czf x.tgz ~",
    "kopia snapshot create ~", "rar a x.rar ~", "gzip -r ~", "chattr -R +i ~",
    "curl x | python3.11", "curl x | php8.2", "curl x | pypy3", "x | autossh h sh",
    # awk and sed may read the files a listing names (`getline < $0`, `s/^/cat /e`)
    "find ~ -name id_rsa | sed 's/^/cat /e'", "find ~ | awk '{while ((getline l < $0) > 0) print l}'",
]


@pytest.mark.parametrize("command", ISSUE_DENIED)
def test_issue_inconsistencies_are_denied(command: str) -> None:
    assert check_command(command, HOME, CWD), command


ORDINARY = [
    "python3 script.py", "python3.11 -m pytest", "pypy3 bench.py", "php artisan migrate", "tar czf out.tgz ./src",
    "tar xzf out.tgz", "rg TODO src/", "ugrep -r TODO src", "grep -rn TODO .", "restic snapshots",
    "restic -r /srv/backup backup ./data", "borg list repo", "borg create repo::a ./data", "pax -r < x.pax",
    "pax -w ./src > src.pax", "zcat logs.gz", "nl notes.txt", "7z a x.7z ./build", "cp -r ./a ./b",
    # disk administration names a device without copying its bytes out
    "fdisk -l /dev/sda", "sudo fdisk -l /dev/sda", "lsblk /dev/sda", "blkid /dev/sda1", "smartctl -a /dev/sda",
    "hdparm -I /dev/sda", "mount /dev/sda1 /mnt", "umount /dev/sda1", "fsck.ext4 -n /dev/sda1",
    "cryptsetup luksOpen /dev/sda2 data", "udevadm info /dev/sda", "systemctl status /dev/sda",
    "watch -n1 smartctl -a /dev/sda", "timeout 5 hdparm -tT /dev/sda", "ls -l /dev/sda", "stat /dev/sda",
    "[ -b /dev/sda ] && echo disk", "echo /dev/sda", "grep /dev/sda fstab.bak", "findmnt /dev/sda1",
]


@pytest.mark.parametrize("command", ORDINARY)
def test_ordinary_commands_are_not_floor(command: str) -> None:
    assert check_command(command, HOME, CWD) is None, command


def _compared_names() -> set[str]:
    """Program names floor_cmd.py compares a program word with (`prog == "find"`,
    `family(prog) in ("rg", "fd")`, `_program(x) in (...)`)."""
    source = Path(programs.__file__).with_name("floor_cmd.py").read_text()
    names: set[str] = set()

    def is_program(node: ast.expr) -> bool:
        if isinstance(node, ast.Name):
            return node.id in ("prog", "pprog", "prog0", "fam")
        return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
            node.func.id in ("_program", "family")

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare) and is_program(node.left):
            for comp in node.comparators:
                items = comp.elts if isinstance(comp, (ast.Tuple, ast.Set, ast.List)) else [comp]
                names.update(i.value for i in items if isinstance(i, ast.Constant) and isinstance(i.value, str))
    return {n for n in names if re.fullmatch(r"[A-Za-z][\w.+-]*", n)}


def test_every_program_floor_cmd_names_is_in_the_table() -> None:
    names = _compared_names()
    assert {"find", "rm", "socat", "crontab"} <= names        # the walk sees them
    missing = sorted(n for n in names if programs.lookup(n) is None)
    assert not missing, missing


def test_floor_cmd_holds_no_program_list() -> None:
    """The program lists live in the table: no module-level set, dict or regex of program names."""
    source = Path(programs.__file__).with_name("floor_cmd.py").read_text()
    for old in ("_INTERPRETER", "_DEVICE_WRITERS", "_DEVICE_READERS", "_TREE_READERS", "_COPIERS", "_AWKS",
                "_NAMES_ONLY", "_LISTERS", "_TEXT_ONLY", "_STDIN_RUNNERS", "_COMMAND_RUNNERS", "_FIND_EXEC_LOOKERS"):
        assert old + " =" not in source, old
