"""An agent token's signature is verified once per process while it is unexpired (ingest's hot path)."""

from __future__ import annotations

import datetime as dt

import pytest

from orchestrator import ingest as ingest_module
from orchestrator.auth import mint_agent_token, token_hash
from orchestrator.ingest import AgentIngest, ReportRejected
from orchestrator.models import Instance
from orchestrator.settings import load_settings
from tests.live import JWT_SECRET


@pytest.fixture
def ingest(mongo_db, tmp_path):
    service = AgentIngest(load_settings({"ORCH_DATA_DIR": str(tmp_path), "ORCH_JWT_SECRET": JWT_SECRET}))
    yield service
    service.close()


def test_a_verified_token_skips_the_decode_until_it_expires(ingest, monkeypatch):
    instance = Instance(name="box", owner="alice", spec={"cloud": "aws"}, cloud="aws", region="r", status="running")
    instance.save()
    token, _ = mint_agent_token(JWT_SECRET, str(instance.id))
    instance.agent_token_hash = token_hash(token)
    instance.save()
    decoded = []
    real_decode = ingest_module.decode_agent_token
    monkeypatch.setattr(ingest_module, "decode_agent_token", lambda *a: decoded.append(1) or real_decode(*a))
    for _ in range(3):
        assert ingest.authenticate(f"Bearer {token}") == (str(instance.id), token)
    assert len(decoded) == 1
    # Past its expiry the token is decoded again, and the decode says why it is refused.
    digest = token_hash(token)
    ingest._verified[digest] = (str(instance.id), dt.datetime(2020, 1, 1, tzinfo=dt.UTC).timestamp())
    monkeypatch.setattr(ingest_module, "decode_agent_token", lambda *a: (_ for _ in ()).throw(
        ingest_module.TokenError("token expired at 2020-01-01")))
    with pytest.raises(ReportRejected, match="expired"):
        ingest.authenticate(f"Bearer {token}")
    # A bad token is never remembered.
    with pytest.raises(ReportRejected):
        ingest.authenticate("Bearer not-a-token")
    assert len(ingest._verified) == 1


def test_the_verified_tokens_are_bounded(ingest, monkeypatch):
    monkeypatch.setattr(ingest_module, "MAX_VERIFIED_TOKENS", 3)
    for n in range(5):
        token, _ = mint_agent_token(JWT_SECRET, f"{n:024x}")
        ingest._verified_instance(token_hash(token), token)
    assert len(ingest._verified) == 3
