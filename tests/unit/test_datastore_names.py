"""Name rules of the datastore drivers that need no server: grant escaping, reserved names."""

from __future__ import annotations

import re

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


# ---------------------------------------------------------------- owners

UID = "0f9a2c1e-7b7d-4c55-9a51-5e2b8d6f0a01"


@pytest.mark.parametrize("owner", ["", "x" * 65, "uid\n", "uid\x7f", "üid", 42])
def test_a_tenant_owner_is_1_to_64_printable_ascii(owner: object) -> None:
    from haku.datastore import Tenant

    with pytest.raises(InvalidName, match="owner"):
        Tenant("s", "u", owner=owner)  # type: ignore[arg-type]


def test_a_tenant_owner_is_optional() -> None:
    from haku.datastore import Tenant

    assert Tenant("s", "u").owner is None
    assert Tenant("s", "u", "pw", UID).owner == UID
    assert Tenant("s", "u", owner="x" * 64).owner == "x" * 64


def test_in_use_errors_name_the_holder_and_the_way_out() -> None:
    import pickle

    from haku.datastore import DataStoreError, InUse, SchemaInUse, UserInUse

    schema = SchemaInUse("shared", UID, "PostgreSQL database 'shared-x'")
    user = UserInUse("admin", UID)
    for error, reason, field in ((schema, "SchemaInUse", "spec.dataStoreSchema"),
                                 (user, "UserInUse", "spec.dataStoreUsername")):
        assert isinstance(error, InUse) and isinstance(error, DataStoreError)
        assert error.reason == reason and error.holder == UID
        assert UID in str(error) and field in str(error) and "delete that tenant" in str(error)
        copy = pickle.loads(pickle.dumps(error))  # noqa: S301 (crosses processes intact)
        assert type(copy) is type(error) and copy.holder == UID and str(copy) == str(error)
    assert "'shared'" in str(schema) and "shared-x" in str(schema)
    assert "user 'admin'" in str(user)


def test_etcd_users_are_per_incarnation() -> None:
    from haku.datastore.base import owner_tag
    from haku.datastore.etcd import USER_LIMIT, incarnation_user, owner_key

    other = "6d1e9b3a-2f0c-4e8a-b7d4-91c3a5e7f102"
    tagged = incarnation_user("tenant-a", UID)
    assert tagged == f"tenant-a.{owner_tag(UID)}" and re.fullmatch(r"[0-9a-f]{8}",
                                                                   owner_tag(UID))
    assert tagged == incarnation_user("tenant-a", UID)  # stable
    assert tagged != incarnation_user("tenant-a", other)
    for long in ("u" * 64, "u" * 200, "ü" * 40):
        name = incarnation_user(long, UID)
        assert len(name) <= USER_LIMIT and name.endswith(f".{owner_tag(UID)}"), name
        assert name != incarnation_user(long + "x", UID)
    # Owner records are outside every tenant's prefix (which all start with '/').
    assert not owner_key("schema", "a").startswith(b"/")
    assert owner_key("user", "a/b") == b"haku.dev/owner/user/a/b"


def test_postgres_owner_marks() -> None:
    from haku.datastore.postgres import MARKER, marked_owner, owner_mark

    assert owner_mark(UID) == f"haku tenant {UID}"
    assert marked_owner(owner_mark(UID)) == UID
    assert marked_owner(MARKER) is None and marked_owner(None) is None
    assert marked_owner("someone's comment") is None


def test_mysql_grant_patterns_are_what_mysql_db_holds() -> None:
    from haku.datastore.mysql import grant_pattern

    assert grant_pattern("w_x%y") == "w\\_x\\%y"
    assert grant_identifier("w_x") == f"`{grant_pattern('w_x')}`"
