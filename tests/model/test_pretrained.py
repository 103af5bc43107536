"""Pretrained Geneformer-format encoder: table readers, file discovery, gene mapping and the encoder module."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pandas as pd
import pytest
import torch

from sctrace._errors import SctraceInputError
from sctrace.data.tokenize import CLS_ID, N_SPECIAL, PAD_ID
from sctrace.model.embeddings import sinusoidal_time_encoding
from sctrace.model.encoder_files import (
    find_encoder_files,
    geneformer_medians_for,
    load_gene_medians,
    load_token_dictionary,
    map_genes,
    special_tokens,
)
from sctrace.model.pretrained import PretrainedEncoder

transformers = pytest.importorskip("transformers")

ENSEMBL = [f"ENSG{100 + i:011d}" for i in range(56)]  # Geneformer token ids 4..59
SYMBOLS = [f"Gene{i}" for i in range(56)]
V2_SPECIALS = {"<pad>": 0, "<mask>": 1, "<cls>": 2, "<eos>": 3}
V2_DICTIONARY = {**V2_SPECIALS, **{gene: 4 + i for i, gene in enumerate(ENSEMBL)}}
# Our genes: versioned ids, plain ids and two unknown genes in the middle of the vocabulary.
OUR_GENES = [f"{ENSEMBL[i]}.{i % 7 + 1}" for i in range(20)] + ["NOTAGENE", "ENSG99999999999.2"] + ENSEMBL[20:40]
N_OUR_MAPPED = 40


def bert_dir(tmp_path, dictionary, name="model", dropout=0.3, max_positions=128):
    """A tiny random Geneformer-like checkpoint (a BertForMaskedLM) with a JSON dictionary and CSV medians."""
    directory = tmp_path / name
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=60, hidden_size=24, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=max_positions, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
    )
    transformers.BertForMaskedLM(config).save_pretrained(directory, safe_serialization=True)
    (directory / "token_dictionary_test.json").write_text(json.dumps(dictionary))
    medians = pd.Series(np.linspace(0.5, 3.0, len(ENSEMBL)), index=ENSEMBL)
    medians.to_csv(directory / "gene_median_dictionary.csv", header=["median"], index_label="gene")
    return directory


@pytest.fixture
def v2_dir(tmp_path):
    return bert_dir(tmp_path, V2_DICTIONARY)


def sources(n_genes=len(OUR_GENES)):
    """Three [CLS]-prefixed sentences in our vocabulary: unmapped genes inside, padding, and an empty cell."""
    unmapped = [N_SPECIAL + 20, N_SPECIAL + 21]
    rows = [
        [CLS_ID, N_SPECIAL + 3, unmapped[0], N_SPECIAL + 30, N_SPECIAL + 0, unmapped[1], N_SPECIAL + 41],
        [CLS_ID, N_SPECIAL + 25, N_SPECIAL + 7, PAD_ID, PAD_ID, PAD_ID, PAD_ID],
        [CLS_ID, PAD_ID, PAD_ID, PAD_ID, PAD_ID, PAD_ID, PAD_ID],
    ]
    assert max(max(row) for row in rows) < N_SPECIAL + n_genes
    return torch.tensor(rows, dtype=torch.long)


# ----------------------------------------------------------------------------------------------------- tables


def test_token_dictionary_formats_agree(tmp_path):
    dictionary = {**V2_SPECIALS, "ENSG00000141510": 4, "ENSG00000012048": 5}
    (tmp_path / "d.json").write_text(json.dumps(dictionary))
    with open(tmp_path / "d.pkl", "wb") as handle:  # numpy ints, protocol 2 (bytes via _codecs.encode)
        pickle.dump({key: np.int64(value) for key, value in dictionary.items()}, handle, protocol=2)
    with open(tmp_path / "d.pickle", "wb") as handle:
        pickle.dump(dictionary, handle, protocol=5)
    pd.Series(dictionary).to_csv(tmp_path / "d.csv", header=["token_id"], index_label="gene")
    pd.Series(dictionary).to_csv(tmp_path / "d.tsv", sep="\t", header=False)
    for name in ("d.json", "d.pkl", "d.pickle", "d.csv", "d.tsv"):
        loaded = load_token_dictionary(tmp_path / name)
        assert loaded == dictionary, name
        assert all(type(value) is int for value in loaded.values())


def test_gene_medians_from_numpy_scalar_pickles(tmp_path):
    medians = {"ENSG00000141510": np.float32(1.25), "ENSG00000012048": np.float64(0.3), "ENSG00000000003": 7}
    for protocol in (2, 4):
        path = tmp_path / f"m{protocol}.pkl"
        path.write_bytes(pickle.dumps(medians, protocol=protocol))
        loaded = load_gene_medians(path)
        assert loaded.dtype == np.float64
        assert loaded.to_dict() == {key: float(value) for key, value in medians.items()}


class _RunsCommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_pickles_are_refused_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "token_dictionary.pkl"
    path.write_bytes(pickle.dumps({"<pad>": 0, "ENSG1": _RunsCommand(marker)}))
    for loader in (load_token_dictionary, load_gene_medians):
        with pytest.raises(SctraceInputError, match="refuses"):
            loader(path)
    assert not marker.exists()
    path.write_bytes(pickle.dumps({"x": eval}))  # a builtin reference
    with pytest.raises(SctraceInputError, match="refuses"):
        load_token_dictionary(path)
    # A numpy scalar of object dtype would hand back an arbitrary object: only numeric dtypes are admitted.
    numeric = pickle.dumps({"x": np.float64(1.0)}, protocol=4)
    assert numeric.count(b"f8") == 1
    path.write_bytes(numeric.replace(b"f8", b"O8"))
    with pytest.raises(SctraceInputError, match="refuses"):
        load_gene_medians(path)


def test_bad_tables_have_clear_errors(tmp_path):
    (tmp_path / "a.csv").write_text("gene,token,extra\nENSG1,4,x\n")
    with pytest.raises(SctraceInputError, match="3 columns"):
        load_token_dictionary(tmp_path / "a.csv")
    (tmp_path / "m.json").write_text(json.dumps({"ENSG1": 0.0}))
    with pytest.raises(SctraceInputError, match="must be > 0"):
        load_gene_medians(tmp_path / "m.json")
    (tmp_path / "t.json").write_text(json.dumps({"ENSG1": 1.5}))
    with pytest.raises(SctraceInputError, match="finite int"):
        load_token_dictionary(tmp_path / "t.json")
    (tmp_path / "l.pkl").write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(SctraceInputError, match="one mapping"):
        load_token_dictionary(tmp_path / "l.pkl")
    (tmp_path / "t.txt").write_text("x")
    with pytest.raises(SctraceInputError, match="unknown suffix"):
        load_token_dictionary(tmp_path / "t.txt")


# ------------------------------------------------------------------------------------------------ discovery


def test_find_encoder_files(v2_dir, tmp_path):
    files = find_encoder_files(v2_dir)
    assert files.config == v2_dir / "config.json"
    assert files.weights == v2_dir / "model.safetensors"
    assert files.token_dictionary.name == "token_dictionary_test.json"
    assert files.gene_medians.name == "gene_median_dictionary.csv"

    (v2_dir / "token_dictionary_other.pkl").write_bytes(pickle.dumps(V2_DICTIONARY))
    with pytest.raises(SctraceInputError, match="several candidates"):
        find_encoder_files(v2_dir)
    explicit = find_encoder_files(v2_dir, token_dictionary=v2_dir / "token_dictionary_other.pkl")
    assert explicit.token_dictionary.name == "token_dictionary_other.pkl"

    (v2_dir / "gene_median_dictionary.csv").unlink()
    with pytest.raises(SctraceInputError, match="no gene median table"):
        find_encoder_files(v2_dir, token_dictionary=explicit.token_dictionary)

    bin_only = tmp_path / "bin_only"
    bin_only.mkdir()
    (bin_only / "config.json").write_text((v2_dir / "config.json").read_text())
    (bin_only / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(SctraceInputError, match="safetensors only"):
        find_encoder_files(bin_only)
    with pytest.raises(SctraceInputError, match="no config.json"):
        find_encoder_files(tmp_path)


# -------------------------------------------------------------------------------------------------- mapping


def test_map_genes_ensembl_versions_and_symbols():
    ids, n_mapped = map_genes(OUR_GENES, V2_DICTIONARY)
    assert n_mapped == N_OUR_MAPPED
    expected = [4 + i for i in range(20)] + [-1, -1] + [4 + i for i in range(20, 40)]
    np.testing.assert_array_equal(ids, expected)
    assert ids.dtype == np.int64

    by_symbol = {"<pad>": 0, "<mask>": 1, **{symbol: 2 + i for i, symbol in enumerate(SYMBOLS)}}
    ids, n_mapped = map_genes(["gene3", "GENE0", "Gene55", "<pad>", "ENSG00000000100"], by_symbol)
    np.testing.assert_array_equal(ids, [5, 2, 57, -1, -1])
    assert n_mapped == 3
    # Keys equal up to case are ambiguous for a case-insensitive match; an exact match still works.
    ids, _ = map_genes(["SEPT1", "Sept1", "sept1"], {"<pad>": 0, "SEPT1": 1, "Sept1": 2})
    np.testing.assert_array_equal(ids, [1, 2, -1])


def test_special_tokens():
    assert special_tokens(V2_DICTIONARY) == special_tokens({"[PAD]": 0, "[MASK]": 1, "[CLS]": 2, "[EOS]": 3})
    v1 = special_tokens({"<pad>": 0, "<mask>": 1, "ENSG1": 2})
    assert (v1.pad, v1.mask, v1.cls, v1.eos) == (0, 1, None, None)
    with pytest.raises(SctraceInputError, match="<pad>"):
        special_tokens({"ENSG1": 2})


def test_geneformer_medians_for(v2_dir):
    files = find_encoder_files(v2_dir)
    medians = load_gene_medians(files.gene_medians)
    ours = geneformer_medians_for(OUR_GENES, medians, load_token_dictionary(files.token_dictionary))
    assert list(ours.index) == [gene for gene in OUR_GENES if gene not in ("NOTAGENE", "ENSG99999999999.2")]
    assert ours["ENSG00000000103.4"] == medians["ENSG00000000103"]
    assert ours[ENSEMBL[25]] == medians[ENSEMBL[25]]


# -------------------------------------------------------------------------------------------------- encoder


def reference_encode(encoder, source, time, eos_id):
    """Slow per-cell version: BERT on each cell's own [<cls>, mapped genes, <eos>] sentence, without padding."""
    token_map = encoder.token_map.tolist()
    time_code = sinusoidal_time_encoding(encoder_scaled_time(encoder, time), encoder.d_model)
    out = torch.zeros(*source.shape, encoder.d_model)
    for row, sentence in enumerate(source.tolist()):
        kept = [position for position, token in enumerate(sentence) if token != PAD_ID and token_map[token] >= 0]
        ids = [token_map[sentence[position]] for position in kept] + [eos_id]
        hidden = encoder.bert(input_ids=torch.tensor([ids])).last_hidden_state[0]
        for slot, position in enumerate(kept):
            out[row, position] = encoder.projection(hidden[slot])
    return out + time_code[:, None, :]


def encoder_scaled_time(encoder, time):
    return (time - encoder.time_origin) / encoder.time_span * encoder.time_scale


def test_encoder_matches_per_cell_reference(v2_dir):
    torch.manual_seed(1)
    encoder = PretrainedEncoder.from_directory(v2_dir, OUR_GENES, d_model=16, time_origin=1.0, time_span=4.0)
    assert (encoder.n_mapped, encoder.n_genes) == (N_OUR_MAPPED, len(OUR_GENES))
    assert encoder.summary() == f"mapped {N_OUR_MAPPED} of {len(OUR_GENES)} genes to the Geneformer vocabulary"
    # The BertForMaskedLM's "bert." body was loaded, not a fresh initialisation.
    saved = transformers.BertForMaskedLM.from_pretrained(v2_dir).bert.state_dict()
    for key, value in encoder.bert.state_dict().items():
        assert torch.equal(value, saved[key]), key

    source, time = sources(), torch.tensor([1.0, 2.5, 5.0])
    encoder.eval()
    with torch.no_grad():
        z0, pad = encoder(source, time)
        expected = reference_encode(encoder, source, time, eos_id=3)
    assert z0.shape == (3, 7, 16)
    expected_pad = source == PAD_ID
    expected_pad[0, [2, 5]] = True  # the two unmapped genes
    torch.testing.assert_close(pad, expected_pad, rtol=0, atol=0)
    torch.testing.assert_close(z0[~pad], expected[~pad], rtol=1e-5, atol=1e-5)
    # A scalar time is broadcast over the batch.
    with torch.no_grad():
        torch.testing.assert_close(encoder(source, 2.5)[0][1], z0[1])


def parameters_of(module):
    return {name: value.detach().clone() for name, value in module.named_parameters()}


def one_step(encoder):
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=1e-2, weight_decay=0.1)
    z0, pad = encoder(sources(), torch.tensor([0.0, 0.5, 1.0]))
    (z0[~pad] ** 2).sum().backward()
    optimizer.step()


def test_frozen_bert_is_untouched_and_dropout_free(v2_dir):
    encoder = PretrainedEncoder.from_directory(v2_dir, OUR_GENES, d_model=16, mode="frozen")
    encoder.train()
    assert not encoder.bert.training and encoder.projection.training
    assert not any(parameter.requires_grad for parameter in encoder.bert.parameters())
    first, _ = encoder(sources(), 0.5)
    second, _ = encoder(sources(), 0.5)
    torch.testing.assert_close(first, second, rtol=0, atol=0)  # BERT's dropout (p=0.3) is off

    bert_before, projection_before = parameters_of(encoder.bert), parameters_of(encoder.projection)
    one_step(encoder)
    for name, value in encoder.bert.named_parameters():
        assert torch.equal(value, bert_before[name]), name
    assert not torch.equal(encoder.projection.weight, projection_before["weight"])


def test_finetune_trains_bert(v2_dir):
    encoder = PretrainedEncoder.from_directory(v2_dir, OUR_GENES, d_model=16, mode="finetune")
    encoder.train()
    assert encoder.bert.training
    torch.manual_seed(0)
    first, _ = encoder(sources(), 0.5)
    second, _ = encoder(sources(), 0.5)
    assert not torch.equal(first, second)  # dropout is active when fine-tuning

    bert_before = parameters_of(encoder.bert)
    one_step(encoder)
    changed = [name for name, value in encoder.bert.named_parameters() if not torch.equal(value, bert_before[name])]
    assert "embeddings.word_embeddings.weight" in changed
    assert "encoder.layer.0.attention.self.query.weight" in changed


def test_v1_dictionary_uses_mean_pooled_cls(tmp_path):
    """Without <cls>/<eos>, BERT sees only genes and [CLS] is the projected gene mean plus a learned vector."""
    v1_dictionary = {key: value for key, value in V2_DICTIONARY.items() if key not in ("<cls>", "<eos>")}
    directory = bert_dir(tmp_path, v1_dictionary, name="v1")
    encoder = PretrainedEncoder.from_directory(directory, OUR_GENES, d_model=16).eval()
    assert encoder.eos_id is None and encoder.cls_vector is not None and encoder.max_genes == 128
    source = sources()
    z0, pad = encoder(source, 0.0)
    assert not pad[:, 0].any()
    time_code = sinusoidal_time_encoding(encoder_scaled_time(encoder, torch.zeros(1)), 16)[0]
    with torch.no_grad():
        genes = [N_SPECIAL + 3, N_SPECIAL + 30, N_SPECIAL + 0, N_SPECIAL + 41]
        ids = encoder.token_map[torch.tensor([genes])]
        hidden = encoder.bert(input_ids=ids).last_hidden_state[0]
        expected_cls = encoder.projection(hidden).mean(0) + encoder.cls_vector + time_code
        expected_gene = encoder.projection(hidden[1]) + time_code
    torch.testing.assert_close(z0[0, 0], expected_cls, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(z0[0, 3], expected_gene, rtol=1e-5, atol=1e-5)
    # An empty cell: [CLS] is the learned vector alone (plus time), finite.
    torch.testing.assert_close(z0[2, 0], (encoder.cls_vector + time_code).detach(), rtol=1e-6, atol=1e-6)
    z0[:, 0].sum().backward()
    assert encoder.cls_vector.grad is not None and encoder.cls_vector.grad.abs().sum() > 0


def test_rebuild_from_config_without_the_directory(v2_dir):
    encoder = PretrainedEncoder.from_directory(v2_dir, OUR_GENES, d_model=16, mode="finetune", time_scale=10.0)
    config = json.loads(json.dumps(encoder.to_config()))
    rebuilt = PretrainedEncoder(**config)
    word_embeddings = rebuilt.bert.embeddings.word_embeddings.weight
    assert not torch.equal(word_embeddings, encoder.bert.embeddings.word_embeddings.weight)
    rebuilt.load_state_dict(encoder.state_dict())
    encoder.eval(), rebuilt.eval()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(sources(), 0.3), encoder(sources(), 0.3), rtol=0, atol=0)
    assert rebuilt.summary() == encoder.summary()
    assert any(key.startswith("bert.") for key in encoder.state_dict())


def test_encoder_input_errors(v2_dir):
    with pytest.raises(SctraceInputError, match="gene_key"):
        PretrainedEncoder.from_directory(v2_dir, SYMBOLS[:30] + ENSEMBL[:2], d_model=8)
    with pytest.raises(SctraceInputError, match="mode"):
        PretrainedEncoder.from_directory(v2_dir, OUR_GENES, d_model=8, mode="thaw")

    too_many = {**V2_DICTIONARY, "ENSG99999999999": 70}
    (v2_dir / "token_dictionary_test.json").write_text(json.dumps(too_many))
    with pytest.raises(SctraceInputError, match="belongs to this model"):
        PretrainedEncoder.from_directory(v2_dir, OUR_GENES + ["ENSG99999999999"], d_model=8)

    from safetensors.torch import save_file

    (v2_dir / "token_dictionary_test.json").write_text(json.dumps(V2_DICTIONARY))
    save_file({"unrelated": torch.zeros(2)}, str(v2_dir / "model.safetensors"))
    with pytest.raises(SctraceInputError, match="lacks"):
        PretrainedEncoder.from_directory(v2_dir, OUR_GENES, d_model=8)


def test_sentence_longer_than_positions(tmp_path):
    directory = bert_dir(tmp_path, V2_DICTIONARY, max_positions=8)
    encoder = PretrainedEncoder.from_directory(directory, OUR_GENES, d_model=8)
    assert encoder.max_genes == 6
    fits = torch.tensor([[CLS_ID] + [N_SPECIAL + i for i in range(6)]])
    assert encoder(fits, 0.0)[0].shape == (1, 7, 8)
    # Unmapped genes do not take positions, so only mapped ones count against the limit.
    with_unmapped = torch.tensor([[CLS_ID] + [N_SPECIAL + i for i in range(6)] + [N_SPECIAL + 20]])
    assert encoder(with_unmapped, 0.0)[0].shape == (1, 8, 8)
    too_long = torch.tensor([[CLS_ID] + [N_SPECIAL + i for i in range(7)]])
    with pytest.raises(SctraceInputError, match="max_len to at most 6"):
        encoder(too_long, 0.0)


# ------------------------------------------------------------------------------------------ through TRACE / CLI


def simulator_bert_dir(tmp_path, timecourse, dropout=0.0):
    """A tiny random checkpoint whose dictionary knows the simulator's genes (all but every tenth)."""
    genes = list(timecourse.var_names)
    known = [g for i, g in enumerate(genes) if i % 10]
    dictionary = {**V2_SPECIALS, **{gene: 4 + i for i, gene in enumerate(known)}}
    directory = tmp_path / "gf"
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=len(dictionary), hidden_size=24, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=64, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
    )
    transformers.BertForMaskedLM(config).save_pretrained(directory, safe_serialization=True)
    (directory / "token_dictionary.json").write_text(json.dumps(dictionary))
    # Medians that differ from the data's own: the corpus must rank genes with these.
    pd.Series(np.linspace(0.2, 9.0, len(known)), index=known).to_csv(directory / "gene_medians.csv", header=False)
    return directory


@pytest.mark.parametrize("mode", ["frozen", "finetune"])
def test_trace_fits_saves_and_loads_with_a_pretrained_encoder(mode, small_timecourse, tiny_fast_config, tmp_path):
    from sctrace.estimator import TRACE

    directory = simulator_bert_dir(tmp_path, small_timecourse)
    holdout = sorted(small_timecourse.obs["time"].unique())[2]
    config = {**tiny_fast_config, "max_epochs": 1, "max_len": 40}
    model = TRACE(small_timecourse, "time", holdout=holdout, encoder="geneformer", encoder_path=str(directory),
                  encoder_mode=mode, **config)
    assert "mapped" in repr(model) and model.net.pretrained is not None
    medians = pd.read_csv(directory / "gene_medians.csv", header=None, index_col=0).iloc[:, 0]
    spec = model.spec
    in_table = np.isin(spec.genes, medians.index)
    assert in_table.any() and (~in_table).any()
    np.testing.assert_allclose(np.asarray(spec.gene_medians)[in_table], medians.reindex(np.asarray(spec.genes)[in_table]))
    before = {k: v.clone() for k, v in model.net.pretrained.bert.state_dict().items()}
    model.fit(run_dir=tmp_path / "run", progress=False)
    after = model.net.pretrained.bert.state_dict()
    changed = any(not torch.equal(before[k], after[k]) for k in before)
    assert changed == (mode == "finetune")
    first = model.predict(holdout, n_cells=6, seed=1)
    loaded = TRACE.load(tmp_path / "run")  # rebuilt from encoder.json: the encoder directory is not needed
    again = loaded.predict(holdout, n_cells=6, seed=1)
    np.testing.assert_array_equal(first.obsm["sctrace_tokens"], again.obsm["sctrace_tokens"])
    (tmp_path / "run" / "encoder.json").unlink()
    with pytest.raises(SctraceInputError, match="encoder.json is missing"):
        TRACE.load(tmp_path / "run")


def test_pretrained_encoder_configuration_errors(small_timecourse, tiny_fast_config, tmp_path):
    from sctrace.estimator import TRACE

    with pytest.raises(SctraceInputError, match="needs its directory"):
        TRACE(small_timecourse, "time", encoder="geneformer", **tiny_fast_config)
    with pytest.raises(SctraceInputError, match="does not exist"):
        TRACE(small_timecourse, "time", encoder="geneformer", encoder_path=str(tmp_path / "nope"), **tiny_fast_config)
    with pytest.raises(SctraceInputError, match="'encoder_mode'.*frozen, finetune"):
        TRACE(small_timecourse, "time", encoder="geneformer", encoder_mode="thawed", **tiny_fast_config)
    directory = simulator_bert_dir(tmp_path, small_timecourse)
    with pytest.raises(SctraceInputError, match="lower max_len"):
        TRACE(small_timecourse, "time", task="none", encoder="geneformer", encoder_path=str(directory),
              **{**tiny_fast_config, "max_len": 100})


def test_benchmark_encoder_ablation_runs_the_paper_rows_with_a_local_model(small_timecourse, tiny_fast_config, tmp_path):
    import yaml

    from sctrace.harness.benchmark import run_benchmark

    directory = simulator_bert_dir(tmp_path, small_timecourse)
    holdout = sorted(small_timecourse.obs["time"].unique())[2]
    results = run_benchmark(small_timecourse, "time", holdout=holdout, out_dir=tmp_path / "out", methods=["sctrace"],
                            seeds=[0], ablate="encoder", encoder_path=directory, plots=False, echo=lambda line: None,
                            sctrace_overrides={**tiny_fast_config, "max_epochs": 1, "max_len": 40})
    labels = ["scratch", "random", "geneformer-frozen", "geneformer-finetune"]
    assert list(results["methods"]) == [f"sctrace[encoder={label}]" for label in labels]
    for entry in results["methods"].values():
        assert "failed" not in entry and np.isfinite(entry["runs"][0]["emd"])
    for label in labels:
        run = tmp_path / "out" / "runs" / f"sctrace_encoder_{label}_seed0"
        config = yaml.safe_load((run / "config.yaml").read_text())["network"]
        assert config["encoder"] == label.split("-")[0]
        assert (run / "encoder.json").exists() == label.startswith("geneformer")
        if label.startswith("geneformer"):
            assert config["encoder_mode"] == label.split("-")[1] and config["encoder_path"] == str(directory.resolve())
    assert not any("--encoder-path" in note for note in results["notes"])
