"""The gateway's stable/canary split and its API-key check (pure functions, no app)."""

from __future__ import annotations

import hashlib

import pytest
from gateway.config import GatewaySettings
from gateway.routing import CANARY, STABLE, Split, key_accepted, key_digest, place
from pydantic import ValidationError

STABLE_URL, CANARY_URL = "http://inference:8003", "http://inference-canary:8003"
USERS = [f"user-{i}" for i in range(20_000)]


def share_on_canary(split: Split) -> float:
    return sum(split.pool_for(u).variant == CANARY for u in USERS) / len(USERS)


def test_a_user_always_lands_on_the_same_pool() -> None:
    split = Split(STABLE_URL, CANARY_URL, 0.3)
    first = {u: split.pool_for(u) for u in USERS[:2000]}
    # Another Split with the same settings: another replica, or this one after a restart.
    again = Split(STABLE_URL, CANARY_URL, 0.3)
    assert all(again.pool_for(u) == pool for u, pool in first.items())


def test_places_do_not_depend_on_the_process() -> None:
    # Fixed values: a salted hash (Python's hash()) would move users between restarts.
    expected = int.from_bytes(hashlib.sha256(b"user-1").digest()[:8], "big") / 2**64
    assert place("user-1") == expected
    assert all(0.0 <= place(u) < 1.0 for u in USERS[:1000])


def test_weight_zero_sends_everyone_to_stable_and_one_everyone_to_canary() -> None:
    assert share_on_canary(Split(STABLE_URL, CANARY_URL, 0.0)) == 0.0
    assert share_on_canary(Split(STABLE_URL, CANARY_URL, 1.0)) == 1.0
    assert Split(STABLE_URL, CANARY_URL, 1.0).pool_for("anyone").url == CANARY_URL


@pytest.mark.parametrize("weight", [0.01, 0.1, 0.25, 0.5, 0.9])
def test_the_canary_gets_about_its_weight_of_users(weight: float) -> None:
    # 20,000 users: the binomial standard deviation is at most 0.0035; 0.015 is > 4 of them.
    assert share_on_canary(Split(STABLE_URL, CANARY_URL, weight)) == pytest.approx(
        weight, abs=0.015
    )


def test_raising_the_weight_only_moves_users_from_stable_to_canary() -> None:
    low, high = Split(STABLE_URL, CANARY_URL, 0.1), Split(STABLE_URL, CANARY_URL, 0.4)
    for user in USERS[:5000]:
        if low.pool_for(user).variant == CANARY:
            assert high.pool_for(user).variant == CANARY, user


def test_without_a_canary_url_everything_is_stable_whatever_the_weight() -> None:
    for canary_url in (None, ""):
        split = Split(STABLE_URL, canary_url, 0.5)
        assert split.canary is None
        assert split.canary_weight == 0.0
        assert {split.pool_for(u).variant for u in USERS[:2000]} == {STABLE}
        assert split.pool_for("u").url == STABLE_URL


def test_a_weight_outside_zero_to_one_is_refused() -> None:
    with pytest.raises(ValueError, match="not in"):
        Split(STABLE_URL, CANARY_URL, 1.5)


# ------------------------------------------------------------------------------------ settings


def test_settings_read_the_pools_weight_and_key_digests(monkeypatch: pytest.MonkeyPatch) -> None:
    digests = [key_digest("key-a"), key_digest("key-b").upper()]
    monkeypatch.setenv("STREAMREC_GATEWAY_INFERENCE_CANARY_URL", CANARY_URL)
    monkeypatch.setenv("STREAMREC_GATEWAY_CANARY_WEIGHT", "0.05")
    monkeypatch.setenv("STREAMREC_GATEWAY_API_KEY_HASHES", f" {digests[0]} ,{digests[1]},")
    settings = GatewaySettings()
    assert settings.inference_canary_url == CANARY_URL
    assert settings.canary_weight == 0.05
    assert settings.api_key_hashes == [key_digest("key-a"), key_digest("key-b")]


def test_settings_default_to_no_canary_and_no_auth(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMREC_GATEWAY_INFERENCE_CANARY_URL", "")
    monkeypatch.setenv("STREAMREC_GATEWAY_API_KEY_HASHES", "")
    settings = GatewaySettings()
    assert settings.inference_canary_url is None
    assert settings.canary_weight == 0.0
    assert settings.api_key_hashes == []


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("STREAMREC_GATEWAY_CANARY_WEIGHT", "1.01"),
        ("STREAMREC_GATEWAY_CANARY_WEIGHT", "-0.1"),
        # A key where its digest belongs: refused at start, not a silent 401 forever.
        ("STREAMREC_GATEWAY_API_KEY_HASHES", "my-secret-key"),
        ("STREAMREC_GATEWAY_API_KEY_HASHES", "ab" * 31),
    ],
)
def test_settings_refuse_bad_values(name: str, value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        GatewaySettings()


# ------------------------------------------------------------------------------------- API key


def test_a_key_is_accepted_by_its_digest_only() -> None:
    accepted = [key_digest("key-a"), key_digest("key-b")]
    assert key_accepted("key-a", accepted)
    assert key_accepted("key-b", accepted)
    assert not key_accepted("key-c", accepted)
    assert not key_accepted(key_digest("key-a"), accepted)  # the digest is not the key
    assert not key_accepted(None, accepted)
    assert not key_accepted("key-a", [])
