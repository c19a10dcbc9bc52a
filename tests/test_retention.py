"""The retention plan (cryophile/retention.py): restic's forget rules per
prefix, chains held, minimum storage durations; properties over many
random histories."""

from __future__ import annotations

import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cryophile.retention import (
    DELETE, HELD, KEEP, Duration, Item, Policy, Prices, Stored, item_key, plan,
)

UTC = datetime.timezone.utc
T0 = datetime.datetime(2026, 1, 1, tzinfo=UTC)
NOW = datetime.datetime(2027, 6, 1, tzinfo=UTC)


def item(n: int, hours: float, prefix: str = "p", objects=(), queued=False) -> Item:
    return Item(f"U{n:04d}", prefix, T0 + datetime.timedelta(hours=hours), tuple(objects),
                queued)


def no_parent(item):
    return None


def actions(decisions) -> dict[str, str]:
    return {d.item.ulid: d.action for d in decisions}


def test_keep_last_and_daily_as_restic_does():
    items = [item(i, h) for i, h in enumerate([0, 1, 25, 26, 49, 50, 51])]
    got = plan(items, Policy(last=2, daily=2), NOW, no_parent)
    assert [(d.item.ulid, d.action, d.reasons) for d in got] == [
        ("U0006", KEEP, ["last", "daily"]),
        ("U0005", KEEP, ["last"]),
        ("U0004", DELETE, []),
        ("U0003", KEEP, ["daily"]),
        ("U0002", DELETE, []),
        ("U0001", DELETE, []),
        ("U0000", DELETE, []),
    ]


def test_weekly_monthly_yearly_and_within():
    items = [item(i, d * 24) for i, d in enumerate([0, 3, 10, 40, 400, 401])]
    got = actions(plan(items, Policy(weekly=1, monthly=2, yearly=5), NOW, no_parent))
    # 2026-01-01, -01-04, -01-11, -02-10, 2027-02-05, -02-06: the newest of
    # each year is 2026-02-10, which also is the newest of its month
    assert got == {"U0005": KEEP, "U0004": DELETE, "U0003": KEEP, "U0002": DELETE,
                   "U0001": DELETE, "U0000": DELETE}
    within = actions(plan(items, Policy(within=Duration.parse("1y")), NOW, no_parent))
    assert within == {"U0005": KEEP, "U0004": KEEP, "U0003": KEEP, "U0002": DELETE,
                      "U0001": DELETE, "U0000": DELETE}


def test_each_prefix_on_its_own():
    items = [item(0, 0, "a"), item(1, 1, "a"), item(2, 0, "b"), item(3, 5, "b")]
    got = actions(plan(items, Policy(last=1), NOW, no_parent))
    assert got == {"U0001": KEEP, "U0000": DELETE, "U0003": KEEP, "U0002": DELETE}


def test_bases_of_kept_archives_are_held():
    items = [item(i, i) for i in range(5)]
    parents = {"p/U0004": "p/U0003", "p/U0003": "p/U0001", "p/U0002": "p/U0001"}
    got = plan(items, Policy(last=1), NOW, lambda i: parents.get(item_key(i)))
    assert [(d.item.ulid, d.action, d.reasons) for d in got] == [
        ("U0004", KEEP, ["last"]),
        ("U0003", HELD, ["base of U0004"]),
        ("U0002", DELETE, []),
        ("U0001", HELD, ["base of U0003"]),
        ("U0000", DELETE, []),
    ]


def test_queued_archives_are_kept_with_their_bases_and_count_for_nothing():
    items = [item(0, 0), item(1, 1), item(2, 2, queued=True)]
    got = plan(items, Policy(last=1), NOW, lambda i: "p/U0000" if i.ulid == "U0002" else None)
    assert [(d.item.ulid, d.action, d.reasons) for d in got] == [
        ("U0002", KEEP, ["not yet frozen"]),
        ("U0001", KEEP, ["last"]),
        ("U0000", HELD, ["base of U0002"]),
    ]


def test_minimum_storage_duration_holds_unless_allowed_and_shows_the_charge():
    now = T0 + datetime.timedelta(days=30)
    young = [Stored("GLACIER", 10 ** 9, T0), Stored("STANDARD", 1000, T0)]
    items = [item(0, 0, objects=young), item(1, 1)]
    held = plan(items, Policy(last=1), now, no_parent)
    d = held[1]
    assert d.action == HELD
    # 60 of 90 days left, 1 GB at 0.0036 per GB-month: 2 months' worth
    assert d.charge == pytest.approx(2 * 0.0036)
    assert "GLACIER: stored 30 of its minimum 90 days" in d.reasons[0]
    allowed = plan(items, Policy(last=1), now, no_parent, allow_early_delete=True)
    assert allowed[1].action == DELETE and allowed[1].charge == pytest.approx(2 * 0.0036)
    old = plan(items, Policy(last=1), T0 + datetime.timedelta(days=91), no_parent)
    assert old[1].action == DELETE and old[1].charge == 0
    deep = Prices(min_days=lambda c: {"DEEP_ARCHIVE": 180}.get(c, 0),
                  per_gb_month=lambda c: 1.0)
    items = [item(0, 0, objects=[Stored("DEEP_ARCHIVE", 3 * 10 ** 9, T0)]), item(1, 1)]
    d = plan(items, Policy(last=1), now, no_parent, deep)[1]
    assert d.action == HELD and d.charge == pytest.approx(150 / 30 * 3)


def test_no_rule_no_plan():
    with pytest.raises(ValueError):
        plan([item(0, 0)], Policy(), NOW, no_parent)


@pytest.mark.parametrize("text,expected", [
    ("1y", Duration(1)), ("2m3d", Duration(0, 2, 3)), ("4h", Duration(0, 0, 0, 4)),
    ("1y2m3d4h", Duration(1, 2, 3, 4))])
def test_durations(text, expected):
    assert Duration.parse(text) == expected
    assert str(expected) == text


@pytest.mark.parametrize("text", ["", "1w", "h", "1d1y", "-1d"])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        Duration.parse(text)


def test_months_back_clamp_to_the_month_end():
    t = datetime.datetime(2026, 3, 31, 12, tzinfo=UTC)
    assert Duration(months=1).before(t) == datetime.datetime(2026, 2, 28, 12, tzinfo=UTC)
    assert Duration(years=1, hours=13).before(t) == datetime.datetime(2025, 3, 30, 23,
                                                                     tzinfo=UTC)


# --- properties ----------------------------------------------------------------------

policies = st.builds(
    Policy, last=st.integers(0, 4), hourly=st.integers(0, 4), daily=st.integers(0, 4),
    weekly=st.integers(0, 3), monthly=st.integers(0, 3), yearly=st.integers(0, 2),
    within=st.one_of(st.none(), st.builds(Duration, days=st.integers(1, 20)))
).filter(lambda p: not p.empty)


@st.composite
def histories(draw):
    n = draw(st.integers(1, 25))
    hours = draw(st.lists(st.integers(0, 24 * 500), min_size=n, max_size=n))
    prefixes = draw(st.lists(st.sampled_from(["a", "b"]), min_size=n, max_size=n))
    ages = draw(st.lists(st.integers(0, 200), min_size=n, max_size=n))
    classes = draw(st.lists(st.sampled_from(["GLACIER", "DEEP_ARCHIVE", "STANDARD"]),
                            min_size=n, max_size=n))
    queued = draw(st.lists(st.booleans().map(lambda b: b and draw(st.booleans())),
                           min_size=n, max_size=n))
    # backup --ulid can give archives under two prefixes the same ULID
    twins = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    ulids: list[str] = []
    for i in range(n):
        taken = {(prefixes[j], ulids[j]) for j in range(i)}
        twin = i and twins[i] and (prefixes[i], ulids[i - 1]) not in taken
        ulids.append(ulids[i - 1] if twin else f"U{i:04d}")
    items = [Item(ulids[i], prefixes[i], T0 + datetime.timedelta(hours=hours[i]),
                  (Stored(classes[i], 1000, NOW - datetime.timedelta(days=ages[i])),),
                  queued[i]) for i in range(n)]
    # each archive's parent (if any) is an older one: chains as backups make them
    # (by key, PREFIX/ULID, as prune names them)
    parents = {}
    for i, it in enumerate(items):
        older = [item_key(o) for o in items if o.time < it.time]
        if older and draw(st.booleans()):
            parents[item_key(it)] = draw(st.sampled_from(older))
    return items, parents


def ancestors(ulid, parents):
    seen = []
    while (ulid := parents.get(ulid)) and ulid not in seen:
        seen.append(ulid)
    return seen


@settings(max_examples=120, deadline=None)
@given(histories(), policies, st.booleans())
def test_never_deletes_what_a_surviving_archive_needs(history, policy, early):
    items, parents = history
    got = plan(items, policy, NOW, lambda i: parents.get(item_key(i)), allow_early_delete=early)
    deleted = {item_key(d.item) for d in got if d.action == DELETE}
    for d in got:
        if d.action != DELETE:
            assert not deleted & set(ancestors(item_key(d.item), parents)), d
    assert all(not d.item.queued for d in got if d.action == DELETE)
    if not early:
        assert all(not d.early for d in got if d.action == DELETE)


@settings(max_examples=120, deadline=None)
@given(histories(), policies)
def test_keep_counts_are_obeyed(history, policy):
    items, parents = history
    got = plan(items, policy, NOW, lambda i: parents.get(item_key(i)), allow_early_delete=True)
    for prefix in ("a", "b"):
        mine = [d for d in got if d.item.prefix == prefix and not d.item.queued]
        newest = sorted(mine, key=lambda d: (d.item.time, d.item.ulid), reverse=True)
        assert all(d.action == KEEP for d in newest[:policy.last])
        for rule in ("hourly", "daily", "weekly", "monthly", "yearly"):
            assert sum(rule in d.reasons for d in mine) <= getattr(policy, rule)
            if getattr(policy, rule) and newest:
                assert rule in newest[0].reasons          # the newest is always one
        for d in mine:        # nothing kept without a reason, nothing deleted with one
            assert (d.action == KEEP) == bool(d.reasons and d.action != HELD)


@settings(max_examples=120, deadline=None)
@given(histories(), policies, st.booleans())
def test_planning_again_after_the_deletions_deletes_nothing(history, policy, early):
    items, parents = history
    parent_of = lambda i: parents.get(item_key(i))          # noqa: E731
    first = plan(items, policy, NOW, parent_of, allow_early_delete=early)
    survivors = [d.item for d in first if d.action != DELETE]
    second = plan(survivors, policy, NOW, parent_of, allow_early_delete=early)
    assert [d.action for d in second] == [d.action for d in first if d.action != DELETE]
    assert [d.reasons for d in second] == [d.reasons for d in first if d.action != DELETE]


@settings(max_examples=120, deadline=None)
@given(histories(), policies, st.booleans())
def test_planning_one_prefix_holds_the_bases_of_the_others(history, policy, early):
    """Only prefix "a" is planned; "b"'s archives stay and hold their bases
    (an incremental stored under another prefix than its base)."""
    items, parents = history
    mine = [i for i in items if i.prefix == "a"]
    others = [i for i in items if i.prefix != "a"]
    got = plan(mine, policy, NOW, lambda i: parents.get(item_key(i)), allow_early_delete=early,
               others=others)
    assert sorted(d.item.ulid for d in got) == sorted(i.ulid for i in mine)
    deleted = {item_key(d.item) for d in got if d.action == DELETE}
    for survivor in [*others, *(d.item for d in got if d.action != DELETE)]:
        assert not deleted & set(ancestors(item_key(survivor), parents)), survivor
    alone = plan(mine, policy, NOW, lambda i: parents.get(item_key(i)), allow_early_delete=early)
    assert deleted <= {item_key(d.item) for d in alone if d.action == DELETE}


def test_a_base_held_for_another_prefix_names_it():
    base, child = item(1, 0, "a"), item(2, 5, "b")
    child.label = "V/b/U0002"
    got = plan([base, item(3, 10, "a")], Policy(last=1), NOW,
               lambda i: {"U0002": "a/U0001"}.get(i.ulid), others=[child])
    assert {d.item.ulid: (d.action, d.reasons) for d in got} == {
        "U0003": (KEEP, ["last"]), "U0001": (HELD, ["base of V/b/U0002"])}


def test_an_incomplete_archive_counts_for_no_rule():
    items = [item(0, 0), item(1, 1), item(2, 2)]
    items[2].incomplete = True
    got = plan(items, Policy(last=1), NOW, no_parent)
    assert [(d.item.ulid, d.action, d.reasons) for d in got] == [
        ("U0002", DELETE, ["incomplete"]),
        ("U0001", KEEP, ["last"]),
        ("U0000", DELETE, []),
    ]


@settings(max_examples=120, deadline=None)
@given(histories(), policies, st.booleans(), st.lists(st.integers(0, 24 * 500), max_size=5))
def test_incomplete_archives_change_nothing_for_the_others(history, policy, early, hours):
    """Archives sealed incomplete (never anyone's base) added anywhere in a
    history leave every other archive's decision as it was."""
    items, parents = history
    cut = [Item(f"X{n:04d}", "a", T0 + datetime.timedelta(hours=h), (), incomplete=True)
           for n, h in enumerate(hours)]
    def decide(its):
        return {item_key(d.item): (d.action, d.reasons) for d in plan(
            its, policy, NOW, lambda i: parents.get(item_key(i)), allow_early_delete=early)}
    with_cut = decide(items + cut)
    assert {k: v for k, v in with_cut.items() if not k.startswith("a/X")} == decide(items)
    assert all(with_cut[item_key(c)] == (DELETE, ["incomplete"]) for c in cut)
