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
