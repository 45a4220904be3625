"""The floor: the hard-coded deny list checked before anything else, for every
caller in every mode. No rule, mode, flag or environment variable changes it.

`check_path` covers files, directories and prefixes (floor_paths.py); `check_command` covers shell
commands (floor_cmd.py). Both are pure and return the floor reason or None.
"""

from __future__ import annotations

from cmdop.core.policy.floor_cmd import check_command
from cmdop.core.policy.floor_paths import (
                                           FLOOR_ABS_PREFIXES,
                                           FLOOR_DIRS,
                                           FLOOR_FILES,
                                           FLOOR_HOME_PREFIXES,
                                           check_path,
                                           check_pattern,
)

__all__ = [
                                           "FLOOR_ABS_PREFIXES",
                                           "FLOOR_DIRS",
                                           "FLOOR_FILES",
                                           "FLOOR_HOME_PREFIXES",
                                           "check_command",
                                           "check_path",
                                           "check_pattern",
]
