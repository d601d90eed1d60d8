"""Namespaces named like top-level domains (CVE-2022-2837, `--refuse-tld-namespaces`).

With `ndots:5` a pod resolving `example.com` tries `example.com.svc.<zone>` before the
name itself: Service `example` in namespace `com`. Whoever may create that namespace
captures every pod's lookups of `*.com` names, and the spec makes the answer legal. With
the option the compiler publishes nothing under `<ns>.svc.<zone>` for such a namespace,
so those names answer NXDOMAIN from the index as any absent name does: the decision is
made when the namespace appears, never per query.

The TLDs are those of the ICANN part of the public suffix list, from the snapshot the
`publicsuffixlist` package ships (no network). It is read only when the option is on
(~50 ms, once a process).
"""

from __future__ import annotations

import logging
from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from publicsuffixlist import PublicSuffixList

log = logging.getLogger("clusterdns")

OPTION = "--refuse-tld-namespaces"

#: namespaces already warned about in this process: a reload compiles them again, silently
_warned: set[str] = set()


@cache
def _suffixes() -> PublicSuffixList:
    """The shipped snapshot, parsed on first use (only with the option on)."""
    from publicsuffixlist import PublicSuffixList

    return PublicSuffixList(only_icann=True, accept_unknown=False)


def is_tld(label: str) -> bool:
    """Is `label` a top-level domain? A wildcard-only TLD (`*.ck`) counts: the list
    makes its root public too; a name of several labels never does."""
    label = label.lower()
    return bool(label) and "." not in label and _suffixes().is_public(label)


def refused(namespace: str, zone: str) -> bool:
    """Whether the names under `<namespace>.svc.<zone>` are withheld; the first time a
    namespace is, a warning names it and the option (once a process)."""
    if not is_tld(namespace):
        return False
    if namespace not in _warned:
        _warned.add(namespace)
        log.warning(
            "namespace %s is a top-level domain: names under %s.svc.%s answer NXDOMAIN (%s, CVE-2022-2837)",
            namespace,
            namespace,
            zone,
            OPTION,
        )
    return True


__all__ = ["is_tld", "refused"]
