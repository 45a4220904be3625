"""An index over compiled rules so one decision costs a few dict lookups and a handful of regex
matches, whatever the number of rules (issue 3: growth from 10 to 10,000 rules ≤ 2×).

Buckets per tool:
- `any`: rules without an argument (`execute_command`), always candidates;
- commands: by the literal program name (first word) of the glob; globs whose first word has a
  wildcard go to `generic`;
- paths: by the literal directory prefix of the glob (`/srv/app/` for `/srv/app/**/*.log`); a
  target looks up each of its ancestor directories;
- hosts: literal globs by exact name, others `generic`.
Candidates are matched with their precompiled regex; the result keeps file order.
"""

from __future__ import annotations

from cmdop.core.policy.rules import Rule, command_key, path_key


class _ToolIndex:
    __slots__ = ("any", "keyed", "generic")

    def __init__(self) -> None:
        self.any: list[Rule] = []
        self.keyed: dict[str, list[Rule]] = {}
        self.generic: list[Rule] = []


class RuleSet:
    """An immutable-after-build, indexed collection of rules of one scope.

    Rules are indexed per (tool, group) where group is "deny" or "grant" (allow and ask), so
    deny matching never looks at allow rules and a tool without deny rules costs one dict miss.
    """

    def __init__(self, rules: list[Rule]) -> None:
        self.rules: tuple[Rule, ...] = tuple(rules)
        self._index: dict[tuple[str, str], _ToolIndex] = {}
        for r in self.rules:
            idx = self._index.setdefault((r.tool, "deny" if r.action == "deny" else "grant"), _ToolIndex())
            if r.glob is None:
                idx.any.append(r)
                continue
            if r.kind == "command":
                key = command_key(r.glob)
            elif r.kind == "path":
                key = path_key(r.glob)
            else:
                key = r.glob if not any(c in r.glob for c in "*?[\\") else None
            if key is None:
                idx.generic.append(r)
            else:
                idx.keyed.setdefault(key, []).append(r)

    def __len__(self) -> int:
        return len(self.rules)

    def has(self, tool: str, group: str) -> bool:
        """Are there rules of `group` ("deny" | "grant") for `tool`?"""
        return (tool, group) in self._index

    def candidates(self, tool: str, group: str, kind: str, text: str | None) -> list[Rule]:
        """Rules of `group` that could match `text` for `tool` (a superset of the matches)."""
        idx = self._index.get((tool, group))
        if idx is None:
            return []
        out = list(idx.any)
        if text is None:
            return out
        keyed = idx.keyed
        if keyed:
            if kind == "command":
                bucket = keyed.get(text.split(" ", 1)[0])
                if bucket:
                    out.extend(bucket)
            elif kind == "path":
                pos = 0
                while pos >= 0:
                    bucket = keyed.get(text[:pos + 1])
                    if bucket:
                        out.extend(bucket)
                    pos = text.find("/", pos + 1)
                bucket = keyed.get(text + "/")
                if bucket:
                    out.extend(bucket)
            else:
                bucket = keyed.get(text)
                if bucket:
                    out.extend(bucket)
        if idx.generic:
            out.extend(idx.generic)
        return out

    def matching(self, tool: str, group: str, kind: str, operation: str, text: str | None) -> list[Rule]:
        """Rules of `group` matching (operation, text), in file order."""
        found = [r for r in self.candidates(tool, group, kind, text) if r.matches(operation, text)]
        if len(found) > 1:
            found.sort(key=lambda r: r.order)
        return found
