"""Scorers and policies on their own: what each flags, what it must not, bad configs, and the
toxicity model's files loaded only after matching the installed package's RECORD."""

from __future__ import annotations

import pickle
import shutil
from importlib import metadata
from pathlib import Path

import pytest

from retro_ops.errors import PolicyError, ScorerError
from retro_ops.governance import toxicity
from retro_ops.governance.policy import load_policy
from retro_ops.governance.scorers import BlocklistScorer, PiiScorer, luhn_ok, make_scorer, scorer_key

CLEAN = "Call me Ishmael. Some years ago, never mind how long precisely, I went to sea."


@pytest.mark.parametrize("text, kinds", [
    ("write to captain.ahab@pequod-whaling.com today", "email"),
    ("call 555-867-5309 before noon", "phone"),
    ("or call 555-867-5309.", "phone"),
    ("call +44 20 7946 0958 before noon", "phone"),
    ("card 4111 1111 1111 1111 exp 12/29", "card"),
    ("card 5500-0000-0000-0004 please", "card"),
    ("the server at 192.168.44.17 is down", "ip"),
    ("the server at 2001:db8::8a2e:370:7334 is down", "ip"),
    (CLEAN, ""),
    ("in 1851 the ship sailed 3000 miles", ""),
    ("version 1.2.3.4.5 and 999.1.1.1", ""),
    ("card 4111 1111 1111 1112 exp", ""),  # fails Luhn: not a card, not a phone either
])
def test_pii_scorer_finds_each_kind_and_nothing_in_clean_text(text, kinds):
    [(score, detail)] = PiiScorer().score([text])
    assert (score, detail) == ((1.0, kinds) if kinds else (0.0, ""))


def test_luhn():
    assert luhn_ok("4111111111111111") and luhn_ok("79927398713")
    assert not luhn_ok("4111111111111112") and not luhn_ok("79927398710")


def test_toxicity_scorer_separates_toxic_from_clean_text():
    scorer = make_scorer("toxicity", {})
    toxic, clean = scorer.score(["you are a worthless fucking idiot, shut up", CLEAN])
    assert toxic[0] > 0.9 > 0.1 > clean[0]
    assert scorer_key(scorer) == "toxicity@alt-profanity-check-1.9.1"


def test_blocklist_version_follows_its_patterns():
    a, b = BlocklistScorer(("takedown-\\d+",)), BlocklistScorer(("takedown-\\d+", "secret"))
    assert a.version != b.version and a.version == BlocklistScorer(("takedown-\\d+",)).version
    assert a.score(["see TAKEDOWN-42 here", CLEAN]) == [(1.0, "takedown-\\d+"), (0.0, "")]


def test_bad_scorer_configs_are_refused():
    with pytest.raises(ScorerError, match=r"blocklist pattern '\(' is not a valid regex"):
        BlocklistScorer(("(",))
    with pytest.raises(ScorerError, match=r"unknown PII kinds \['ssn'\]"):
        PiiScorer(("ssn",))
    with pytest.raises(ScorerError, match="unknown scorer 'nsfw'"):
        make_scorer("nsfw", {})


@pytest.mark.parametrize("body, message", [
    ('name = "p"\n', "policy 'p' has no \\[\\[rule\\]\\]"),
    ('[[rule]]\nscorer = "pii"\nthreshold = 1\n', "policy needs a `name`"),
    ('name = "p"\n[[rule]]\nscorer = "pii"\nthreshold = 2\n', "rule 1: threshold must be a number in .0, 1., got 2"),
    ('name = "p"\n[[rule]]\nscorer = "pii"\nthreshold = 1\nscope = "corpus"\n', "rule 1: scope 'corpus' is not one of"),
    ('name = "p"\n[[rule]]\nscorer = "nsfw"\nthreshold = 1\n', "rule 1: unknown scorer 'nsfw'"),
    ('name = "p"\n[[rule\n', "cannot read policy"),
])
def test_bad_policies_are_refused_naming_the_file_and_rule(tmp_path, body, message):
    path = tmp_path / "policy.toml"
    path.write_text(body)
    with pytest.raises(PolicyError, match=f"{path}: .*{message}" if "name" in message else message):
        load_policy(path)


class Payload:
    """Unpickling this creates a sentinel file: proof that a tampered model was loaded."""

    def __init__(self, sentinel: Path):
        self.sentinel = sentinel

    def __reduce__(self):
        return (Path.touch, (self.sentinel,))


def test_a_model_file_that_differs_from_the_record_is_never_loaded(tmp_path, monkeypatch):
    """A copy of the package whose model.joblib is a live pickle payload, with the real RECORD:
    the hash check refuses it before joblib sees a byte."""
    real = metadata.distribution(toxicity.DISTRIBUTION)
    fake = tmp_path / "site"
    info = fake / f"alt_profanity_check-{real.version}.dist-info"
    info.mkdir(parents=True)
    for name in ("METADATA", "RECORD"):
        shutil.copy(Path(real.locate_file(f"{info.name}/{name}")), info / name)
    data = fake / "profanity_check" / "data"
    data.mkdir(parents=True)
    shutil.copy(Path(real.locate_file(toxicity.MODEL_FILES[0])), data / "vectorizer.joblib")
    sentinel = tmp_path / "payload-ran"
    (data / "model.joblib").write_bytes(pickle.dumps(Payload(sentinel)))
    monkeypatch.syspath_prepend(str(fake))
    toxicity._model.cache_clear()
    try:
        with pytest.raises(ScorerError, match=r"model\.joblib: sha256 differs from alt-profanity-check's RECORD"):
            make_scorer("toxicity", {}).score(["anything"])
    finally:
        toxicity._model.cache_clear()
    assert not sentinel.exists()
    monkeypatch.undo()
    assert len(toxicity.verified_model_files()) == 2  # the real package, once the copy is gone
