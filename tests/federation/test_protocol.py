"""The round settings that cross the wire: typed on both sides, parsed once, bounds enforced,
and a node that receives bad settings refuses with every bad field named."""

from __future__ import annotations

import doctest
import json
from typing import Any

import pytest
from flwr.app import ConfigRecord, RecordDict

import medidd.federation.node
import medidd.federation.protocol
from aggregator.wire import refusal
from medidd.federation import protocol as P
from medidd.nets import NetConfig
from medidd.preprocess.pipeline import PreprocessConfig
from medidd.train import TrainConfig
from tests.federation.test_apps import _weights, call

NET = NetConfig(name="dncnn", width=4, depth=2)
SPEC = {"kind": "gaussian", "noise_sigma": 0.05}
PRE = PreprocessConfig(size=32, max_slices_per_volume=6)

SETTINGS: list[P.RoundSettings] = [
    P.EvaluateSettings(net=NET, degradation=SPEC, preprocess=PRE, seed=3, batch_size=4,
                       max_slices=6),
    P.TrainSettings(train=TrainConfig(net=NET, steps=2, batch_size=2, patch_size=16),
                    degradation=SPEC, preprocess=PRE, seed=4, local_steps=2),
    P.AuditSettings(strategy="fedavg", net=NET, degradation=SPEC, preprocess=PRE, seed=0,
                    n_boot=50, max_slices_per_patient=None),
]


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: s.ROUND)
def test_settings_survive_the_wire_unchanged(settings: P.RoundSettings) -> None:
    again = P.parse_settings(type(settings), settings.model_dump_json())
    assert again == settings and type(again) is type(settings)


def _evaluate(**changes: Any) -> str:
    data = json.loads(SETTINGS[0].model_dump_json())
    data.update(changes)
    return json.dumps(data)


#: (case, model, JSON text, words the error must hold)
BAD: list[tuple[str, type[P.RoundSettings], object, tuple[str, ...]]] = [
    ("batch size 0", P.EvaluateSettings, _evaluate(batch_size=0),
     ("batch_size", "greater than or equal to 1")),
    ("max slices 0", P.EvaluateSettings, _evaluate(max_slices=0), ("max_slices",)),
    ("unknown key", P.EvaluateSettings, _evaluate(batch_sise=4),
     ("batch_sise: unknown key", "did you mean 'batch_size'")),
    ("bad net", P.EvaluateSettings, _evaluate(net={"name": "dncn"}), ("net.name", "dncnn")),
    ("bad degradation", P.EvaluateSettings, _evaluate(degradation={"kind": "gausian"}),
     ("degradation", "gaussian")),
    ("missing net", P.EvaluateSettings, _evaluate(net=None), ("net",)),
    ("local steps 0", P.TrainSettings,
     SETTINGS[1].model_dump_json().replace('"local_steps":2', '"local_steps":0'),
     ("local_steps", "greater than or equal to 1")),
    ("n_boot too small", P.AuditSettings,
     SETTINGS[2].model_dump_json().replace('"n_boot":50', '"n_boot":5'),
     ("n_boot", "greater than or equal to 10")),
    ("strategy misspelt", P.AuditSettings,
     SETTINGS[2].model_dump_json().replace('"fedavg"', '"fedavgg"'), ("strategy", "fedavg")),
    ("not JSON", P.EvaluateSettings, "{net:", ("evaluate settings",)),
    ("missing", P.AuditSettings, None, ("audit settings missing", P.SETTINGS_JSON)),
]


@pytest.mark.parametrize(("case", "model", "text", "words"), BAD, ids=[b[0] for b in BAD])
def test_bad_settings_are_rejected_with_the_field_named(
    case: str, model: type[P.RoundSettings], text: object, words: tuple[str, ...],
) -> None:
    with pytest.raises(P.SettingsError) as info:
        P.parse_settings(model, text)
    assert all(w in str(info.value) for w in words), str(info.value)


def test_settings_are_frozen() -> None:
    with pytest.raises(ValueError, match="frozen"):
        SETTINGS[0].seed = 5  # type: ignore[misc]


def test_a_node_refuses_bad_settings_naming_the_field_before_reading_any_patient() -> None:
    content = RecordDict({P.MODEL: _weights(),
                          P.SETTINGS: ConfigRecord({P.SETTINGS_JSON: _evaluate(batch_size=0)})})
    reason = refusal(call(P.EVALUATE, {"name": "site-a"}, content)) or ""
    assert "evaluate settings from the aggregator rejected: batch_size" in reason
    no_settings = RecordDict({P.MODEL: _weights()})
    assert "settings missing" in (refusal(call(P.TRAIN, {"name": "site-a"}, no_settings)) or "")


@pytest.mark.parametrize("module", [medidd.federation.protocol, medidd.federation.node])
def test_docstring_examples(module: Any) -> None:
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.attempted > 0 and result.failed == 0
