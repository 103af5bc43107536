"""Config files: removed keys refused in a user's config and migrated out of saved runs' config.yaml (versioned);
format 4 nests the keys by section, flat keys still read."""

import dataclasses

import pytest
import yaml

from sctrace._errors import SctraceInputError
from sctrace.config import CONFIG_VERSION, REMOVED_KEYS, SECTION_OF, SECTIONS, TraceConfig, load_config


def _config(**flat):
    """The defaults with ``flat`` keys set (each key's section is found by its name)."""
    return TraceConfig().update(flat)


def test_a_removed_key_in_a_users_config_is_named_and_refused(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("time_mixup: 0.5\nd_model: 32\n")
    with pytest.raises(SctraceInputError, match=r"time_mixup in .*mine.yaml were removed .*; delete them"):
        load_config(config_file=path)
    with pytest.raises(SctraceInputError, match="were removed"):
        load_config(tie_token_embeddings=True)


def test_saved_configs_carry_their_version_and_read_back(tmp_path):
    path = tmp_path / "config.yaml"
    _config(d_model=48).to_yaml(path)
    assert yaml.safe_load(path.read_text())["config_version"] == CONFIG_VERSION
    assert TraceConfig.from_yaml(path) == _config(d_model=48)


def _old_run_config(tmp_path, **removed):
    """A version-1 config.yaml: no version key, every removed key at the value fit wrote, updated by ``removed``."""
    fields = _config(d_model=48).flat().copy()
    fields.update({key: kept for key, (kept, _) in REMOVED_KEYS.items()}, **removed)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(fields))
    return path


def test_an_old_run_with_the_kept_values_loads_silently(tmp_path, recwarn):
    assert TraceConfig.from_yaml(_old_run_config(tmp_path)) == _config(d_model=48)
    assert not [w for w in recwarn if "no longer supported" in str(w.message)]


def test_an_old_run_trained_with_a_removed_training_setting_loads_with_a_warning(tmp_path):
    with pytest.warns(UserWarning, match=r"time_mixup: 0.5, no longer supported; its weights predict as trained"):
        assert TraceConfig.from_yaml(_old_run_config(tmp_path, time_mixup=0.5)) == _config(d_model=48)


def test_an_old_run_of_a_network_no_longer_built_is_refused(tmp_path):
    with pytest.raises(SctraceInputError, match="tie_token_embeddings: True, which sctrace no longer builds; re-fit"):
        TraceConfig.from_yaml(_old_run_config(tmp_path, tie_token_embeddings=True))
    with pytest.raises(SctraceInputError, match="cls\\+mean\\+genes, which sctrace no longer builds"):
        TraceConfig.from_yaml(_old_run_config(tmp_path, count_pooling="cls+mean+genes"))
    path = tmp_path / "config.yaml"
    path.write_text(f"config_version: {CONFIG_VERSION + 1}\n")
    with pytest.raises(SctraceInputError, match="newer than this sctrace reads"):
        TraceConfig.from_yaml(path)


# Keys removed after losing on the leave-one-time-out protocol; version-2 runs saved before that hold them.
PRUNED_NETWORK_KEYS = ("time_bias", "count_time")  # another value built another network: refused
PRUNED_TRAINING_KEYS = ("source_time_target",)  # training only: dropped with a warning
PRUNED_KEYS = PRUNED_NETWORK_KEYS + PRUNED_TRAINING_KEYS


def _version_2_run_config(tmp_path, **removed):
    """A version-2 config.yaml as fit wrote it while the pruned keys existed (at their defaults), updated by ``removed``."""
    fields = {"config_version": 2, **_config(d_model=48).flat(), **dict.fromkeys(PRUNED_KEYS, False), **removed}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(fields, sort_keys=False))
    return path


def test_the_pruned_keys_are_removed_keys_off_by_default():
    for key in PRUNED_KEYS:
        assert key not in TraceConfig().flat()
        assert REMOVED_KEYS[key] == (False, key in PRUNED_NETWORK_KEYS)


def test_a_version_2_run_with_the_pruned_keys_off_loads_silently(tmp_path, recwarn):
    assert CONFIG_VERSION == 5
    assert TraceConfig.from_yaml(_version_2_run_config(tmp_path)) == _config(d_model=48)
    assert not [w for w in recwarn if "no longer supported" in str(w.message)]


@pytest.mark.parametrize("key", PRUNED_NETWORK_KEYS)
def test_a_version_2_run_whose_pruned_key_built_another_network_is_refused(tmp_path, key):
    with pytest.raises(SctraceInputError, match=f"{key}: True, which sctrace no longer builds; re-fit the run"):
        TraceConfig.from_yaml(_version_2_run_config(tmp_path, **{key: True}))


@pytest.mark.parametrize("key", PRUNED_TRAINING_KEYS)
def test_a_version_2_run_trained_with_a_pruned_training_key_loads_with_a_warning(tmp_path, key):
    with pytest.warns(UserWarning, match=f"{key}: True, no longer supported; its weights predict as trained"):
        assert TraceConfig.from_yaml(_version_2_run_config(tmp_path, **{key: True})) == _config(d_model=48)


def test_a_users_config_naming_the_pruned_keys_is_refused_with_their_names(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({**dict.fromkeys(PRUNED_KEYS, True), "d_model": 32}))
    with pytest.raises(SctraceInputError, match=f"{', '.join(sorted(PRUNED_KEYS))} in .*mine.yaml were removed"):
        load_config(config_file=path)
    for key in PRUNED_KEYS:
        with pytest.raises(SctraceInputError, match=f"{key} in overrides were removed"):
            load_config(**{key: False})


def test_a_version_2_run_without_min_rows_had_one_partner_set_per_source_cell(tmp_path):
    fields = {"config_version": 2, **{k: v for k, v in _config(d_model=48).flat().items() if k != "min_rows"}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(fields, sort_keys=False))
    assert TraceConfig.from_yaml(path) == _config(d_model=48, min_rows=0)
    assert TraceConfig().data.min_rows == 1024


def test_source_times_is_a_removed_training_key_whatever_the_version(tmp_path, recwarn):
    assert REMOVED_KEYS["source_times"] == ("first", False)  # training only: the weights still predict as trained
    nested = _config(d_model=48).nested()
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"config_version": 4, **nested}, sort_keys=False))  # before the key
    assert TraceConfig.from_yaml(path) == _config(d_model=48)
    nested["training"]["source_times"] = "first"
    path.write_text(yaml.safe_dump({"config_version": 5, **nested}, sort_keys=False))
    assert TraceConfig.from_yaml(path) == _config(d_model=48)
    assert not [w for w in recwarn if "no longer supported" in str(w.message)]
    nested["training"]["source_times"] = "all"
    path.write_text(yaml.safe_dump({"config_version": 5, **nested}, sort_keys=False))
    with pytest.warns(UserWarning, match="source_times: all, no longer supported; its weights predict as trained"):
        assert TraceConfig.from_yaml(path) == _config(d_model=48)
    with pytest.raises(SctraceInputError, match="source_times in overrides were removed"):
        load_config(source_times="all")


def test_min_steps_is_a_removed_training_key(tmp_path, recwarn):
    assert REMOVED_KEYS["min_steps"] == (0, False)  # a step budget: training only, the weights predict as trained
    nested = _config(d_model=48).nested()
    path = tmp_path / "config.yaml"
    for value in (0, 2000):
        nested["training"]["min_steps"] = value
        path.write_text(yaml.safe_dump({"config_version": 5, **nested}, sort_keys=False))
        if value:
            with pytest.warns(UserWarning, match="min_steps: 2000, no longer supported; its weights predict as trained"):
                assert TraceConfig.from_yaml(path) == _config(d_model=48)
        else:
            assert TraceConfig.from_yaml(path) == _config(d_model=48)
            assert not [w for w in recwarn if "no longer supported" in str(w.message)]
    with pytest.raises(SctraceInputError, match="min_steps in overrides were removed"):
        load_config(min_steps=100)


def test_a_version_3_run_with_count_standardise_loads_when_off_and_is_refused_when_on(tmp_path, recwarn):
    assert REMOVED_KEYS["count_standardise"] == (False, True)  # its running statistics were the head's buffers
    path = tmp_path / "config.yaml"
    for value in (False, True):
        fields = {"config_version": 3, **_config(d_model=48).flat(), "count_standardise": value}
        path.write_text(yaml.safe_dump(fields, sort_keys=False))
        if value:
            with pytest.raises(SctraceInputError, match="count_standardise: True, which sctrace no longer builds"):
                TraceConfig.from_yaml(path)
        else:
            assert TraceConfig.from_yaml(path) == _config(d_model=48)
    assert not [w for w in recwarn if "no longer supported" in str(w.message)]
    with pytest.raises(SctraceInputError, match="count_standardise in overrides were removed"):
        load_config(count_standardise=True)


def test_a_version_3_run_with_the_relative_time_code_is_refused_and_the_absolute_one_loads(tmp_path):
    assert REMOVED_KEYS["time_code"] == ("absolute", True)  # relative read every time from the decoded one
    path = tmp_path / "config.yaml"
    for value in ("absolute", "relative"):
        path.write_text(yaml.safe_dump({"config_version": 3, **_config(d_model=48).flat(), "time_code": value}))
        if value == "relative":
            with pytest.raises(SctraceInputError, match="time_code: relative, which sctrace no longer builds"):
                TraceConfig.from_yaml(path)
        else:
            assert TraceConfig.from_yaml(path) == _config(d_model=48)
    with pytest.raises(SctraceInputError, match="time_code in overrides were removed"):
        load_config(time_code="absolute")


def test_a_version_5_run_with_a_count_prior_is_refused_and_one_without_it_loads(tmp_path, recwarn):
    assert REMOVED_KEYS["count_prior"] == ("none", True)  # the count head read the prior's features
    nested = _config(d_model=48).nested()
    path = tmp_path / "config.yaml"
    for value in ("none", "residual", "centred"):
        nested["counts"]["count_prior"] = value
        path.write_text(yaml.safe_dump({"config_version": 5, **nested}, sort_keys=False))
        if value == "none":
            assert TraceConfig.from_yaml(path) == _config(d_model=48)
        else:
            with pytest.raises(SctraceInputError, match=f"count_prior: {value}, which sctrace no longer builds"):
                TraceConfig.from_yaml(path)
    assert not [w for w in recwarn if "no longer supported" in str(w.message)]
    with pytest.raises(SctraceInputError, match="count_prior in overrides were removed"):
        load_config(count_prior="residual")


# Format 4: the keys nested by section in config.yaml; flat keys (presets, user files, overrides) still work.
CHANGED = {"genes": "hvg", "d_model": 48, "count_hidden": 64, "lr": 0.01, "temperature": 0.5, "count_sampling": "iid"}


def test_a_version_3_flat_run_loads_into_its_sections_with_the_same_values(tmp_path):
    path = tmp_path / "config.yaml"
    flat = {**TraceConfig().flat(), **CHANGED}
    path.write_text(yaml.safe_dump({"config_version": 3, **flat}, sort_keys=False))
    config = TraceConfig.from_yaml(path)
    assert config.flat() == flat
    assert (config.data.genes, config.network.d_model, config.counts.count_hidden, config.training.lr,
            config.generation.temperature, config.generation.count_sampling) == ("hvg", 48, 64, 0.01, 0.5, "iid")


def test_a_version_4_config_is_nested_by_section_and_reads_back(tmp_path):
    path = tmp_path / "config.yaml"
    config = _config(**CHANGED)
    config.to_yaml(path)
    saved = yaml.safe_load(path.read_text())
    assert list(saved) == ["config_version", *SECTIONS] and saved["config_version"] == CONFIG_VERSION
    assert {key: list(saved[key]) for key in SECTIONS} == {
        name: [key for key, section in SECTION_OF.items() if section == name] for name in SECTIONS}
    assert saved["training"]["lr"] == 0.01 and saved["network"]["d_model"] == 48
    assert TraceConfig.from_yaml(path) == config
    assert len(dataclasses.fields(TraceConfig)) == 5


def test_overrides_nested_by_section(tmp_path):
    nested = TraceConfig().update({"training": {"lr": 0.01}, "network": {"d_model": 48}, "generation": None})
    assert nested == _config(lr=0.01, d_model=48)
    assert (nested.training.lr, nested.network.d_model, nested.training.weight_decay) == (0.01, 48, 1e-4)
    path = tmp_path / "mine.yaml"
    path.write_text("training:\n  lr: 0.01\ndata:\n  n_top_genes: 100\nd_model: 48\n")
    loaded = load_config(config_file=path)
    assert (loaded.training.lr, loaded.network.d_model, loaded.data.n_top_genes) == (0.01, 48, 100)
    assert loaded.data.genes == "hvg"  # a number of HVGs asked for means HVGs, nested or not
    with pytest.raises(SctraceInputError, match=r"d_model \(in network\) in overrides are not in section training"):
        TraceConfig().update({"training": {"d_model": 48}})
    with pytest.raises(SctraceInputError, match="unknown config key.s. learning_rate in overrides; valid keys"):
        TraceConfig().update({"training": {"learning_rate": 0.01}})
    with pytest.raises(SctraceInputError, match="config key 'lr' in overrides must be a float, got 'fast'"):
        TraceConfig().update({"training": {"lr": "fast"}})
    with pytest.raises(SctraceInputError, match="time_bias in overrides were removed"):
        TraceConfig().update({"network": {"time_bias": False}})
    with pytest.raises(SctraceInputError, match="config section 'training' in overrides must be a mapping"):
        TraceConfig().update({"training": 0.01})


def test_flat_overrides_reach_their_sections():
    config = TraceConfig().update({"lr": 0.01, "pairing": "random", "count_sampling": "iid"})
    assert (config.training.lr, config.data.pairing, config.generation.count_sampling) == (0.01, "random", "iid")
    assert config.network == TraceConfig().network and config.counts == TraceConfig().counts
    assert load_config(lr=0.01).training.lr == 0.01
    with pytest.raises(SctraceInputError, match="must be one of random, stratified, ot, got 'nearest'"):
        TraceConfig().update({"pairing": "nearest"})
    with pytest.raises(SctraceInputError, match="'context_dropout' in overrides is a probability in"):
        TraceConfig().update({"context_dropout": 1.0})


def test_choices_come_from_every_sections_literal_keys():
    from sctrace.config import CHOICES

    assert {"pairing", "encoder", "rank_encoding", "likelihood", "mask_schedule",
            "count_sampling"} <= set(CHOICES)
    assert CHOICES["count_sampling"] == ("iid", "stratified", "copula")
