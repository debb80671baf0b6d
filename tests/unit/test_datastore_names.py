"""Name rules of the datastore drivers that need no server: grant escaping, reserved names."""

from __future__ import annotations

import pytest

from haku.datastore.base import DataStoreError, InvalidName, refuse_reserved
from haku.datastore.mysql import check_password, grant_identifier, quote_identifier


def test_grant_identifiers_escape_the_wildcards() -> None:
    assert grant_identifier("w_x") == "`w\\_x`"
    assert grant_identifier("w%x") == "`w\\%x`"
    assert grant_identifier("plain-name") == quote_identifier("plain-name") == "`plain-name`"
    assert grant_identifier("a`b_c") == "`a``b\\_c`"


def test_reserved_names_are_refused_with_a_clear_message() -> None:
    with pytest.raises(InvalidName, match=r"the tenant schema 'postgres' is reserved"):
        refuse_reserved("postgres", "postgres", "schema", ["postgres"])
    with pytest.raises(InvalidName, match=r"'MySQL' \(stored as 'MySQL'\)|'MySQL' is reserved"):
        refuse_reserved("MySQL", "MySQL", "schema", ["mysql"], casefold=True)
    with pytest.raises(InvalidName, match="is reserved"):
        refuse_reserved("pg_monitor", "pg_monitor", "user", [], prefixes=("pg_",))
    refuse_reserved("MySQL", "MySQL", "schema", ["mysql"])  # case matters unless casefold
    refuse_reserved("tenant-a", "tenant-a", "schema", ["postgres"], prefixes=("pg_",))


@pytest.mark.parametrize("password", ["a@b", "a/b", "a:b", "a?b", "a b", "", None])
def test_mysql_passwords_kine_cannot_carry_are_refused(password: str | None) -> None:
    with pytest.raises(DataStoreError):
        check_password(password)
    assert check_password("0123456789abcdef") == "0123456789abcdef"
