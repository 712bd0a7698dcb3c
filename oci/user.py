"""Users and groups as a container's rootfs defines them (``/etc/passwd``, ``/etc/group``).

The files are read through ``rootpath`` (an image's symlinks stay inside its rootfs)
and parsed as libc reads them: ``name:password:uid:gid:gecos:home:shell`` and
``name:password:gid:member,member``; malformed lines are skipped, as runc's
``user`` package skips them.
"""

from __future__ import annotations

from dataclasses import dataclass

from .rootpath import read_file

__all__ = ["PasswdEntry", "GroupEntry", "Accounts", "UserError"]


class UserError(ValueError):
    """A user or group that the rootfs does not define; the message names it."""


@dataclass(frozen=True)
class PasswdEntry:
    name: str
    uid: int
    gid: int
    home: str


@dataclass(frozen=True)
class GroupEntry:
    name: str
    gid: int
    members: tuple[str, ...]


def _passwd(data: bytes | None) -> list[PasswdEntry]:
    out = []
    for line in (data or b"").decode("utf-8", "replace").splitlines():
        parts = line.split(":")
        if len(parts) < 4 or not parts[0] or parts[0].startswith("#"):
            continue
        try:
            out.append(PasswdEntry(parts[0], int(parts[2]), int(parts[3]),
                                   parts[5] if len(parts) > 5 else ""))
        except ValueError:
            continue
    return out


def _group(data: bytes | None) -> list[GroupEntry]:
    out = []
    for line in (data or b"").decode("utf-8", "replace").splitlines():
        parts = line.split(":")
        if len(parts) < 3 or not parts[0] or parts[0].startswith("#"):
            continue
        try:
            members = tuple(m for m in (parts[3].split(",") if len(parts) > 3 else ()) if m)
            out.append(GroupEntry(parts[0], int(parts[2]), members))
        except ValueError:
            continue
    return out


class Accounts:
    """The accounts of one rootfs."""

    def __init__(self, passwd: list[PasswdEntry], groups: list[GroupEntry]) -> None:
        self.passwd, self.groups = passwd, groups

    @classmethod
    def of_rootfs(cls, root: str) -> "Accounts":
        return cls(_passwd(read_file(root, "/etc/passwd")), _group(read_file(root, "/etc/group")))

    def user_by_name(self, name: str) -> PasswdEntry | None:
        return next((u for u in self.passwd if u.name == name), None)

    def user_by_uid(self, uid: int) -> PasswdEntry | None:
        return next((u for u in self.passwd if u.uid == uid), None)

    def group_by_name(self, name: str) -> GroupEntry | None:
        return next((g for g in self.groups if g.name == name), None)

    def groups_of(self, name: str) -> list[int]:
        """The gids of the groups that list *name* as a member, in file order."""
        return [g.gid for g in self.groups if name in g.members]

    def uid_of(self, user: str) -> PasswdEntry:
        """A user by name, or by number (a number need not be in /etc/passwd)."""
        if user.isdigit():
            entry = self.user_by_uid(int(user))
            return entry or PasswdEntry("", int(user), 0, "")
        entry = self.user_by_name(user)
        if entry is None:
            raise UserError(f'no user "{user}" in the image\'s /etc/passwd')
        return entry

    def gid_of(self, group: str) -> int:
        if group.isdigit():
            return int(group)
        entry = self.group_by_name(group)
        if entry is None:
            raise UserError(f'no group "{group}" in the image\'s /etc/group')
        return entry.gid
