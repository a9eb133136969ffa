import pytest

from harness import config as C


def test_defaults_build_and_flatten_with_dots():
    cfg = C.build_config()
    flat = C.to_flat(cfg)
    assert flat["noise.kind"] == "none" and flat["collab.topology"] == "individual"
    assert set(flat) == set(C.all_keys())


def test_overrides_set_dotted_keys_and_ints_become_floats():
    cfg = C.build_config(
        {"noise": {"kind": "symmetric"}},
        {"noise.rate": 0, "collab.topology": "hierarchical", "collab.heads": 4},
    )
    assert cfg.noise.rate == 0.0 and isinstance(cfg.noise.rate, float)
    assert cfg.collab.heads == 4


def test_unknown_key_suggests_the_right_one():
    with pytest.raises(C.ConfigError, match=r"noise\.rte: unknown key; did you mean noise\.rate\?"):
        C.build_config({"noise": {"rte": 0.2}})


def test_every_problem_is_reported_at_once():
    with pytest.raises(C.ConfigError) as info:
        C.build_config(
            {
                "noise": {"rate": 1.5, "kind": "symetric"},
                "optim": {"lr": "fast"},
                "model": {"arch": "resnet33"},
            }
        )
    text = "\n".join(map(str, info.value.problems))
    assert "noise.rate: must be in [0, 1], got 1.5" in text
    assert "unknown noise kind 'symetric'" in text and "did you mean symmetric?" in text
    assert "optim.lr: must be float, got str 'fast'" in text
    assert "Unknown arch" in text or "unknown arch 'resnet33'" in text
    assert len(info.value.problems) == 4


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"collab.topology": "hierarchical", "collab.heads": 1}, "needs at least 2 heads"),
        ({"collab.topology": "hierarchical", "collab.heads": 3}, "power of two"),
        ({"collab.topology": "individual", "collab.heads": 2}, "trains one head"),
        ({"collab.kept_head": 1}, "must be < heads"),
        ({"data.name": "cifar10", "data.root": "/no/such/folder"}, "folder does not exist: /no/such/folder"),
        ({"noise.kind": "human"}, "needs the CIFAR-N .pt file"),
        ({"optim.schedule": "step"}, "needs milestones"),
        ({"collab.rescale": "grad"}, "unknown rescale mode 'grad'; choose from backprop, loss, none"),
        (
            {"collab.topology": "simple", "collab.heads": 2, "collab.split": 7},
            "collab.split: split boundary 7",
        ),
        ({"run.device": "tpu"}, "must be auto, cpu, cuda or cuda:N"),
        ({"optim.batch_size": True}, "must be int, got bool"),
        ({"optim.label_loss": "mae"}, "optim.label_loss: unknown label loss 'mae'; choose from ce, gce, sce"),
        ({"optim.label_smoothing": 1.0}, r"optim.label_smoothing: must be in \[0, 1\), got 1.0"),
        ({"optim.gce_q": 0}, r"optim.gce_q: must be in \(0, 1\], got 0"),
        ({"optim.sce_alpha": -0.1}, "optim.sce_alpha: must be >= 0, got -0.1"),
        (
            {"optim.label_loss": "gce", "optim.label_smoothing": 0.1},
            "optim.label_smoothing: label smoothing \\(0.1\\) applies to cross-entropy, but optim.label_loss is gce",
        ),
        ({"optim.label_loss": "sce", "optim.sce_alpha": 0, "optim.sce_beta": 0}, "both 0"),
    ],
)
def test_bad_values_name_the_key_and_what_is_allowed(overrides, message):
    with pytest.raises(C.ConfigError, match=message):
        C.build_config({}, overrides)


def test_parse_overrides_reads_values_as_yaml():
    assert C.parse_overrides(
        ["optim.lr=0.05", "collab.split=[1, 2]", "data.root=~/data", "collab.rescale=loss"]
    ) == {
        "optim.lr": 0.05,
        "collab.split": [1, 2],
        "data.root": "~/data",
        "collab.rescale": "loss",
    }
    with pytest.raises(C.ConfigError, match="expected key=value"):
        C.parse_overrides(["optim.lr"])


def test_yaml_round_trip(tmp_path):
    cfg = C.build_config({}, {"noise.kind": "pairflip", "noise.rate": 0.3})
    path = tmp_path / "c.yaml"
    path.write_text(C.dump_yaml(cfg))
    assert C.build_config(C.load_yaml(path)) == cfg
    with pytest.raises(FileNotFoundError, match="config file not found"):
        C.load_yaml(tmp_path / "missing.yaml")


def test_a_noise_rate_without_a_noise_kind_is_an_error_that_suggests_one():
    with pytest.raises(
        C.ConfigError, match=r"noise\.rate: noise kind none trains on the clean labels"
    ) as info:
        C.build_config({"noise": {"kind": "none", "rate": 0.4}})
    assert "set noise.kind (e.g. symmetric" in str(info.value)
    assert C.build_config({"noise": {"kind": "none", "rate": 0.0}}).noise.rate == 0.0


def test_a_noise_kind_registered_after_import_is_accepted(monkeypatch):
    from noise import registry

    with pytest.raises(C.ConfigError, match="unknown noise kind 'reverse'"):
        C.build_config({"noise": {"kind": "reverse", "rate": 0.2}})
    kind = registry.Kind("reverse", lambda labels, spec, *, num_classes, **_: num_classes - 1 - labels)
    monkeypatch.setitem(registry._REGISTRY, "reverse", kind)
    assert C.build_config({"noise": {"kind": "reverse", "rate": 0.2}}).noise.kind == "reverse"


def test_the_old_rescale_spelling_is_accepted_with_a_deprecation_warning():
    with pytest.warns(FutureWarning, match="collab.rescale: true is the old spelling of backprop"):
        assert C.build_config({"collab": {"rescale": True}}).collab.rescale == "backprop"
    with pytest.warns(FutureWarning, match="false is the old spelling of none"):
        assert C.build_config({"collab": {"rescale": False}}).collab.rescale == "none"
    assert C.build_config({}).collab.rescale == "backprop"


def test_the_config_reference_in_docs_is_the_one_the_declarations_give():
    """docs/config.md is generated from the keys' declarations: rewrite it with
    `harness validate --keys > docs/config.md` after declaring a key."""
    from pathlib import Path

    from harness.config.reference import reference

    docs = Path(__file__).resolve().parents[1] / "docs" / "config.md"
    assert docs.read_text() == reference(), (
        "docs/config.md is stale: harness validate --keys > docs/config.md"
    )
    for key in C.all_keys():
        assert f"`{key}`" in docs.read_text(), key
