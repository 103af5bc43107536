"""Removed config keys: refused in a user's config, migrated out of saved runs' config.yaml (versioned)."""

import pytest
import yaml

from sctrace._errors import SctraceInputError
from sctrace.config import CONFIG_VERSION, REMOVED_KEYS, TraceConfig, load_config


def test_a_removed_key_in_a_users_config_is_named_and_refused(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("time_mixup: 0.5\nd_model: 32\n")
    with pytest.raises(SctraceInputError, match=r"time_mixup in .*mine.yaml were removed .*; delete them"):
        load_config(config_file=path)
    with pytest.raises(SctraceInputError, match="were removed"):
        load_config(tie_token_embeddings=True)


def test_saved_configs_carry_their_version_and_read_back(tmp_path):
    path = tmp_path / "config.yaml"
    TraceConfig(d_model=48).to_yaml(path)
    assert yaml.safe_load(path.read_text())["config_version"] == CONFIG_VERSION
    assert TraceConfig.from_yaml(path) == TraceConfig(d_model=48)


def _old_run_config(tmp_path, **removed):
    """A version-1 config.yaml: no version key, every removed key at the value fit wrote, updated by ``removed``."""
    fields = TraceConfig(d_model=48).__dict__.copy()
    fields.update({key: kept for key, (kept, _) in REMOVED_KEYS.items()}, **removed)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(fields))
    return path


def test_an_old_run_with_the_kept_values_loads_silently(tmp_path, recwarn):
    assert TraceConfig.from_yaml(_old_run_config(tmp_path)) == TraceConfig(d_model=48)
    assert not [w for w in recwarn if "no longer supported" in str(w.message)]


def test_an_old_run_trained_with_a_removed_training_setting_loads_with_a_warning(tmp_path):
    with pytest.warns(UserWarning, match=r"time_mixup: 0.5, no longer supported; its weights predict as trained"):
        assert TraceConfig.from_yaml(_old_run_config(tmp_path, time_mixup=0.5)) == TraceConfig(d_model=48)


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
    fields = {"config_version": 2, **TraceConfig(d_model=48).__dict__, **dict.fromkeys(PRUNED_KEYS, False), **removed}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(fields, sort_keys=False))
    return path


def test_the_pruned_keys_are_removed_keys_off_by_default():
    for key in PRUNED_KEYS:
        assert key not in TraceConfig().__dict__
        assert REMOVED_KEYS[key] == (False, key in PRUNED_NETWORK_KEYS)


def test_a_version_2_run_with_the_pruned_keys_off_loads_silently(tmp_path, recwarn):
    assert CONFIG_VERSION == 3
    assert TraceConfig.from_yaml(_version_2_run_config(tmp_path)) == TraceConfig(d_model=48)
    assert not [w for w in recwarn if "no longer supported" in str(w.message)]


@pytest.mark.parametrize("key", PRUNED_NETWORK_KEYS)
def test_a_version_2_run_whose_pruned_key_built_another_network_is_refused(tmp_path, key):
    with pytest.raises(SctraceInputError, match=f"{key}: True, which sctrace no longer builds; re-fit the run"):
        TraceConfig.from_yaml(_version_2_run_config(tmp_path, **{key: True}))


@pytest.mark.parametrize("key", PRUNED_TRAINING_KEYS)
def test_a_version_2_run_trained_with_a_pruned_training_key_loads_with_a_warning(tmp_path, key):
    with pytest.warns(UserWarning, match=f"{key}: True, no longer supported; its weights predict as trained"):
        assert TraceConfig.from_yaml(_version_2_run_config(tmp_path, **{key: True})) == TraceConfig(d_model=48)


def test_a_users_config_naming_the_pruned_keys_is_refused_with_their_names(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({**dict.fromkeys(PRUNED_KEYS, True), "d_model": 32}))
    with pytest.raises(SctraceInputError, match=f"{', '.join(sorted(PRUNED_KEYS))} in .*mine.yaml were removed"):
        load_config(config_file=path)
    for key in PRUNED_KEYS:
        with pytest.raises(SctraceInputError, match=f"{key} in overrides were removed"):
            load_config(**{key: False})


def test_a_version_2_run_without_min_rows_had_one_partner_set_per_source_cell(tmp_path):
    fields = {"config_version": 2, **{k: v for k, v in TraceConfig(d_model=48).__dict__.items() if k != "min_rows"}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(fields, sort_keys=False))
    assert TraceConfig.from_yaml(path) == TraceConfig(d_model=48, min_rows=0)
    assert TraceConfig().min_rows == 1024


def test_a_version_3_run_with_count_standardise_loads_when_off_and_is_refused_when_on(tmp_path, recwarn):
    assert REMOVED_KEYS["count_standardise"] == (False, True)  # its running statistics were the head's buffers
    path = tmp_path / "config.yaml"
    for value in (False, True):
        fields = {"config_version": 3, **TraceConfig(d_model=48).__dict__, "count_standardise": value}
        path.write_text(yaml.safe_dump(fields, sort_keys=False))
        if value:
            with pytest.raises(SctraceInputError, match="count_standardise: True, which sctrace no longer builds"):
                TraceConfig.from_yaml(path)
        else:
            assert TraceConfig.from_yaml(path) == TraceConfig(d_model=48)
    assert not [w for w in recwarn if "no longer supported" in str(w.message)]
    with pytest.raises(SctraceInputError, match="count_standardise in overrides were removed"):
        load_config(count_standardise=True)
