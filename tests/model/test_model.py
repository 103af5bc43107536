"""The TRACE network, MaskGIT generation and the estimator façade."""

from __future__ import annotations

import functools
import inspect
import shutil

import numpy as np
import pytest
import torch
import yaml

from sctrace import SctraceInputError
from sctrace.config import TraceConfig, load_config, preset_names
from sctrace.estimator import TRACE
from sctrace.generate import _first_claim, maskgit_generate
from sctrace.model.module import CLS_ID, N_SPECIAL, PAD_ID, TraceNet, add_cls
from sctrace.rundir import INPUTS_FILE


def _random_net(vocab=43, max_len=30, seed=0) -> TraceNet:
    torch.manual_seed(seed)
    return TraceNet(vocab, vocab - N_SPECIAL, max_len, d_model=32, n_heads=2, head_dim=16).eval()


def test_presets_cover_the_paper_tables():
    assert {"cpu-small", "lps-interpolate", "lps-extrapolate", "tcell", "eb"} <= set(preset_names())
    eb = load_config("eb")
    assert (eb.network.d_model, eb.network.head_dim, eb.data.max_len, eb.counts.count_dropout,
            eb.generation.temperature) == (512, 32, 270, 0.25, 0.5)


def test_config_errors(tmp_path):
    with pytest.raises(SctraceInputError, match="unknown preset 'big'"):
        load_config("big")
    with pytest.raises(SctraceInputError, match="unknown config key.*d_modle"):
        load_config("cpu-small", d_modle=3)
    bad = tmp_path / "c.yaml"
    bad.write_text("lr: [1, 2]\n")
    with pytest.raises(SctraceInputError, match="'lr'.*must be a float"):
        load_config("cpu-small", bad)
    with pytest.raises(SctraceInputError, match="'mask_schedule' in overrides must be one of cosine, exponential"):
        load_config("cpu-small", mask_schedule="cosin")
    with pytest.raises(SctraceInputError, match=r"'context_dropout' in overrides is a probability in \[0, 1\), got 1"):
        load_config("cpu-small", context_dropout=1)


def test_config_as_a_mapping_or_a_config(tmp_path):
    """config= takes a YAML file, the same keys as a mapping (flat or by section) or a whole TraceConfig."""
    path = tmp_path / "c.yaml"
    path.write_text("training:\n  lr: 0.002\nd_model: 48\n")
    from_file = load_config("cpu-small", path)
    from_mapping = load_config("cpu-small", {"training": {"lr": 0.002}, "d_model": 48})
    assert from_file == from_mapping
    assert (from_mapping.training.lr, from_mapping.network.d_model) == (0.002, 48)
    # Overrides still come last; a whole config is taken as it is, whatever the preset says.
    assert load_config("cpu-small", {"lr": 0.002}, lr=0.003).training.lr == 0.003
    eb = load_config("eb")
    assert load_config("cpu-small", eb) == eb
    with pytest.raises(SctraceInputError, match="unknown config key.*d_modle"):
        load_config("cpu-small", {"d_modle": 3})
    with pytest.raises(SctraceInputError, match="config must be a YAML file's path, a mapping"):
        load_config("cpu-small", 5)  # type: ignore[arg-type]


def test_first_claim_keeps_most_confident_duplicate():
    genes = torch.tensor([[5, 5, 7, 5], [3, 4, 3, 3]])
    confidence = torch.tensor([[0.1, 0.9, 0.5, 0.9], [0.2, 0.1, 0.3, 0.0]])
    candidate = torch.tensor([[True, True, True, True], [True, True, False, True]])
    winners = _first_claim(genes, confidence, candidate, vocab_size=10)
    assert winners.tolist() == [[False, True, True, False], [True, True, False, False]]


@pytest.mark.parametrize("schedule", ["cosine", "exponential", "cubic", "linear"])
def test_generation_never_repeats_genes_or_emits_specials(schedule):
    net = _random_net()
    gen = torch.Generator().manual_seed(1)
    batch = 16
    source = add_cls(torch.randint(N_SPECIAL, 43, (batch, 20), generator=gen))
    context = [(add_cls(torch.randint(N_SPECIAL, 43, (batch, 25), generator=gen)), 1.0)]
    lengths = torch.randint(1, 31, (batch,), generator=gen)
    tokens, cls = maskgit_generate(net, source, 0.0, context, 0.5, lengths, n_iter=5, temperature=2.0,
                                   schedule=schedule, generator=gen)
    assert cls.shape == (batch, tokens.shape[1], 32) and tokens[:, 0].eq(CLS_ID).all()
    for row, length in zip(tokens, lengths):
        genes = row[1 : length + 1]
        assert (genes >= N_SPECIAL).all(), "a special token or an unfilled mask was emitted"
        assert len(set(genes.tolist())) == int(length), "a gene was placed twice"
        assert (row[length + 1 :] == PAD_ID).all()


def test_generation_length_equal_to_vocabulary_uses_every_gene():
    net = _random_net(vocab=13, max_len=10)
    source = add_cls(torch.arange(3, 13).repeat(4, 1))
    tokens, _ = maskgit_generate(net, source, 0.0, [], 1.0, torch.full((4,), 10), n_iter=3, temperature=5.0,
                                 generator=torch.Generator().manual_seed(0))
    assert all(sorted(row[1:].tolist()) == list(range(3, 13)) for row in tokens)


def test_generation_takes_exactly_n_iter_decoder_passes_plus_the_cls_pass(monkeypatch):
    # Small vocabulary, every gene used, hot sampling: in-step duplicates at the last step are near certain, and
    # they are redrawn from that step's distribution instead of costing extra decoder forwards.
    net = _random_net(vocab=13, max_len=10)
    calls = []
    decode = net.decode
    monkeypatch.setattr(net, "decode", lambda *a, **k: calls.append(1) or decode(*a, **k))
    source = add_cls(torch.arange(3, 13).repeat(8, 1))
    for n_iter in (1, 2, 4):
        calls.clear()
        tokens, _ = maskgit_generate(net, source, 0.0, [], 1.0, torch.full((8,), 10), n_iter=n_iter,
                                     temperature=5.0, generator=torch.Generator().manual_seed(n_iter))
        assert len(calls) == n_iter + 1
        assert all(sorted(row[1:].tolist()) == list(range(3, 13)) for row in tokens)


def test_generation_is_seeded():
    net = _random_net()
    source = add_cls(torch.randint(N_SPECIAL, 43, (4, 10), generator=torch.Generator().manual_seed(0)))
    def run(s):
        return maskgit_generate(net, source, 0.0, [], 1.0, torch.full((4,), 12), n_iter=4,
                                         generator=torch.Generator().manual_seed(s))[0]
    assert torch.equal(run(3), run(3)) and not torch.equal(run(3), run(4))


def test_tiny_model_overfits_a_handful_of_cells():
    """Four fixed cell pairs: masked-token accuracy far above chance and generation recovers the target genes."""
    torch.manual_seed(0)
    vocab, n_genes, length = 63, 60, 12
    gen = torch.Generator().manual_seed(0)
    def perm():
        return torch.randperm(n_genes, generator=gen)[:length] + N_SPECIAL
    sentences = torch.stack([torch.stack([add_cls(perm()[None])[0] for _ in range(3)]) for _ in range(4)])
    times = torch.tensor([0.0, 1.0, 2.0])
    counts = torch.rand(4, 3, n_genes, generator=gen).mul(5).floor()
    net = TraceNet(vocab, n_genes, length, d_model=64, n_heads=4, head_dim=16, dropout=0.0)
    optimiser = torch.optim.AdamW(net.parameters(), lr=3e-3)
    for step in range(300):
        k = 1 + step % 2
        losses = net.training_losses(sentences, times, k, counts[:, k], counts[:, k].sum(-1), "cosine", gen)
        optimiser.zero_grad()
        (losses["token_loss"] + losses["count_loss"] / n_genes).backward()
        optimiser.step()
    net.eval()
    accuracy = np.mean([
        float(net.training_losses(sentences, times, k, counts[:, k], counts[:, k].sum(-1), "cosine", gen)["masked_accuracy"])
        for k in (1, 2) for _ in range(5)
    ])
    assert accuracy > 0.8, f"masked accuracy {accuracy:.2f} (chance is {1 / n_genes:.3f})"
    tokens, _ = maskgit_generate(net, sentences[:, 0], 0.0, [(sentences[:, 1], 1.0)], 2.0, torch.full((4,), length),
                                 n_iter=6, temperature=0.5, generator=gen)
    recovered = np.mean([len(set(tokens[i, 1:].tolist()) & set(sentences[i, 2, 1:].tolist())) / length for i in range(4)])
    assert recovered > 0.7, f"generation recovered only {recovered:.0%} of the target genes"


def test_fit_writes_a_complete_run(fitted):
    model, run_dir, _ = fitted
    for name in ("model.safetensors", "config.yaml", "corpus/corpus.json", "corpus/tokens.npy", "checkpoints/last.ckpt"):
        assert (run_dir / name).exists(), name
    assert model.history is not None and "train_loss" in model.history.columns


def test_predict_output_and_save_load_roundtrip(fitted):
    model, run_dir, holdout = fitted
    first = model.predict(holdout, n_cells=20, seed=3)
    assert first.shape == (20, model.spec.n_genes) and list(first.var_names) == model.spec.genes
    assert {"zinb_mean"} <= set(first.layers) and first.obsm["X_sctrace"].shape == (20, 32)
    assert set(first.obs.columns) >= {"time", "source_cell", "library_size"}
    assert np.all(first.X.data >= 0) and np.allclose(first.X.data, np.round(first.X.data))
    loaded = TRACE.load(run_dir)
    again = loaded.predict(holdout, n_cells=20, seed=3)
    np.testing.assert_array_equal(first.X.toarray(), again.X.toarray())
    np.testing.assert_array_equal(first.obsm["sctrace_tokens"], again.obsm["sctrace_tokens"])


def test_predict_at_unseen_times_and_errors(fitted):
    model, _, _ = fitted
    late = model.predict(model.spec.time_values[-1] + 3.0, n_cells=5)
    assert late.n_obs == 5
    with pytest.raises(SctraceInputError, match="cannot parse time"):
        model.predict("soon")


def test_predict_at_a_given_library_size(fitted):
    model, _, holdout = fitted
    fixed = model.predict(holdout, n_cells=30, seed=0, library_size=2000)
    assert np.all(fixed.obs["library_size"] == 2000)
    # The expected counts sum to the depth asked for, so a deeper run gives deeper cells.
    np.testing.assert_allclose(np.asarray(fixed.layers["zinb_mean"]).sum(1), 2000, rtol=1e-3)
    deeper = model.predict(holdout, n_cells=30, seed=0, library_size=20000)
    assert deeper.X.sum() > 5 * fixed.X.sum()
    drawn = model.predict(holdout, n_cells=30, seed=0, library_size=[1000, 3000])
    assert set(drawn.obs["library_size"]) <= {1000.0, 3000.0} and drawn.obs["library_size"].nunique() == 2
    for bad in (0, -5, [np.nan], [], "deep"):
        with pytest.raises(SctraceInputError, match="library_size must be one or more positive"):
            model.predict(holdout, n_cells=3, library_size=bad)


def test_stratified_sampling_keeps_the_sentences_and_the_model_means(fitted, tmp_path):
    model, run_dir, holdout = fitted
    iid = model.predict(holdout, n_cells=40, seed=2, sampling="iid")
    stratified = model.predict(holdout, n_cells=40, seed=2, sampling="stratified")
    default = model.predict(holdout, n_cells=40, seed=2)  # cpu-small's count_sampling, copula
    # Same cells, sentences, depths and expected values: only how the counts are drawn from them differs.
    for other in (stratified, default):
        np.testing.assert_array_equal(iid.obsm["sctrace_tokens"], other.obsm["sctrace_tokens"])
        np.testing.assert_array_equal(iid.obs["library_size"], other.obs["library_size"])
        np.testing.assert_array_equal(iid.layers["zinb_mean"], other.layers["zinb_mean"])
    assert iid.uns["sctrace"]["sampling"] == "iid" and stratified.uns["sctrace"]["sampling"] == "stratified"
    assert default.uns["sctrace"]["sampling"] == "copula" and model.config.generation.count_sampling == "copula"
    counts = stratified.X.toarray()
    assert np.all(counts >= 0) and np.allclose(counts, np.round(counts)) and not np.array_equal(counts, iid.X.toarray())
    assert not np.array_equal(default.X.toarray(), counts)
    again = model.predict(holdout, n_cells=40, seed=2, sampling="stratified")
    np.testing.assert_array_equal(counts, again.X.toarray())
    with pytest.raises(SctraceInputError, match="unknown sampling 'sobol'; choose one of iid, stratified"):
        model.predict(holdout, n_cells=3, sampling="sobol")
    # Calls longer than one block of levels (4,096 cells; 16 here) draw block by block; the batch straddles them.
    import sctrace.generate as generate_module
    from sctrace.model.sampling import StratifiedLevels

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(generate_module, "StratifiedLevels", functools.partial(StratifiedLevels, block=16))
        blocked = model.predict(holdout, n_cells=40, seed=2, sampling="stratified")
    np.testing.assert_array_equal(blocked.obsm["sctrace_tokens"], stratified.obsm["sctrace_tokens"])
    blocked_counts = blocked.X.toarray()
    assert np.all(blocked_counts >= 0) and np.allclose(blocked_counts, np.round(blocked_counts))
    assert not np.array_equal(blocked_counts, counts)
    # A run saved before count_sampling existed has no such key and keeps drawing independently.
    old_run = tmp_path / "old_run"
    shutil.copytree(run_dir, old_run)
    config = old_run / "config.yaml"
    flat = TraceConfig.from_yaml(config).flat()
    assert "count_sampling" in flat
    # Such runs' config.yaml had no config_version either (format 1, flat): their missing keys take the old defaults.
    config.write_text(yaml.safe_dump({k: v for k, v in flat.items() if k != "count_sampling"}))
    (old_run / "sctrace_run.json").write_text('{"written_by": "sctrace"}')  # as such runs marked themselves
    with pytest.warns(UserWarning, match="predates the key.s. count_sampling"):
        old_model = TRACE.load(old_run)
    assert old_model.config.generation.count_sampling == "iid"
    np.testing.assert_array_equal(old_model.predict(holdout, n_cells=40, seed=2).X.toarray(), iid.X.toarray())


def test_library_size_is_refused_for_log_normalised_models(fitted, monkeypatch):
    model, _, holdout = fitted
    monkeypatch.setattr(model, "config", model.config.update({"likelihood": "hurdle"}))
    with pytest.raises(SctraceInputError, match="library_size applies to count likelihoods"):
        model.predict(holdout, n_cells=3, library_size=1000)


def test_fit_is_reproducible(small_timecourse, tiny_fast_config):
    holdout = sorted(small_timecourse.obs["time"].unique())[2]
    config = {**tiny_fast_config, "max_epochs": 1}
    weights = []
    for _ in range(2):
        model = TRACE(small_timecourse, "time", holdout=holdout, seed=11, **config).fit(progress=False)
        weights.append(torch.cat([p.detach().flatten() for p in model.net.parameters()]))
    assert torch.equal(weights[0], weights[1])


def test_embed_writes_cell_and_gene_embeddings(fitted, small_timecourse):
    model, _, _ = fitted
    out = model.embed(small_timecourse[:30])
    assert out.obsm["X_sctrace"].shape == (30, 32)
    known = np.isin(out.var_names, model.spec.genes)
    assert np.isfinite(out.varm["sctrace_genes"][known]).all() and np.isnan(out.varm["sctrace_genes"][~known]).all()
    with pytest.raises(SctraceInputError, match="genes are missing from the data"):
        model.embed(small_timecourse[:30, 50:])


def test_run_directory_safety(fitted, tmp_path, small_timecourse, tiny_fast_config):
    model, run_dir, holdout = fitted
    with pytest.raises(SctraceInputError, match="already exists; pass overwrite=True"):
        model.save(run_dir)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("precious")
    with pytest.raises(SctraceInputError, match="did not write"):
        model.save(foreign, overwrite=True)
    assert (foreign / "notes.txt").read_text() == "precious"


def test_load_rejects_incomplete_or_corrupt_runs(fitted, tmp_path):
    model, _, _ = fitted
    target = model.save(tmp_path / "copy")
    (target / "model.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(SctraceInputError, match="corrupt"):
        TRACE.load(target)
    (target / "model.safetensors").unlink()
    with pytest.raises(SctraceInputError, match="incomplete: model.safetensors is missing"):
        TRACE.load(target)
    with pytest.raises(SctraceInputError, match="does not exist"):
        TRACE.load(tmp_path / "nowhere")


def test_resume_continues_from_last_checkpoint(small_timecourse, tiny_fast_config, tmp_path):
    holdout = sorted(small_timecourse.obs["time"].unique())[2]
    config = {**tiny_fast_config, "max_epochs": 1}
    run_dir = tmp_path / "run"
    TRACE(small_timecourse, "time", holdout=holdout, **config).fit(run_dir=run_dir, progress=False)
    resumed = TRACE(small_timecourse, "time", holdout=holdout, **config)
    resumed.fit(max_epochs=2, run_dir=run_dir, resume=True, progress=False)
    assert resumed.history["epoch"].max() == 1  # epoch 0 came from the checkpoint, epoch 1 was trained now
    with pytest.raises(SctraceInputError, match="nothing to resume"):
        TRACE(small_timecourse, "time", holdout=holdout, **config).fit(run_dir=tmp_path / "new", resume=True)


def test_a_loaded_model_refuses_to_train(fitted, tmp_path):
    """A run directory keeps no training counts: fitting a loaded model says so instead of failing in the data
    loader, or, resuming a run without a data fingerprint, in the resume check."""
    _, run_dir, _ = fitted
    old_run = tmp_path / "old"
    shutil.copytree(run_dir, old_run)
    (old_run / INPUTS_FILE).unlink()  # as a run from before the fingerprint
    for loaded, options in ((TRACE.load(run_dir), {}), (TRACE.load(old_run), {"run_dir": old_run, "resume": True})):
        with pytest.raises(SctraceInputError, match="keeps no training counts"):
            loaded.fit(progress=False, **options)


def _lognormalised(adata):
    lognorm = adata.copy()
    totals = np.asarray(lognorm.X.sum(axis=1))
    lognorm.X = lognorm.X.multiply(1e4 / totals).log1p().tocsr().astype(np.float32)
    return lognorm


def test_the_data_say_what_they_hold_and_the_likelihood_follows(small_timecourse):
    """count_kind auto (the default) reads the values; likelihood auto gives zinb for counts, hurdle for logs."""
    counts = TRACE(small_timecourse, "time", holdout=2.5)
    assert (counts.spec.count_kind, counts.config.counts.likelihood) == ("counts", "zinb")
    logs = TRACE(_lognormalised(small_timecourse), "time", holdout=2.5)
    assert (logs.spec.count_kind, logs.config.counts.likelihood) == ("lognorm", "hurdle")
    # FPKM-like values are neither: refused with their fix.
    values = small_timecourse.copy()
    values.X = values.X.astype(np.float32) * 37.25
    with pytest.raises(SctraceInputError, match=r"neither raw counts nor log-normalised .*np.log1p\(adata.X\)"):
        TRACE(values, "time", holdout=2.5)


def test_lognorm_data_refuse_a_count_likelihood(small_timecourse):
    with pytest.raises(SctraceInputError, match="log-normalised values, and likelihood 'zinb' models raw counts; use "
                                                "likelihood='hurdle' or 'gaussian'"):
        TRACE(_lognormalised(small_timecourse), "time", holdout=2.5, likelihood="zinb")


def test_count_data_refuse_a_lognorm_likelihood(small_timecourse):
    with pytest.raises(SctraceInputError, match="likelihood 'hurdle' models log-normalised values, and X holds raw "
                                                "counts.*count_kind='lognorm'"):
        TRACE(small_timecourse, "time", holdout=2.5, likelihood="hurdle")
    # Counts declared log-normalised are refused by their size, with the fix.
    with pytest.raises(SctraceInputError, match="far above any log-normalised expression.*count_kind='counts'"):
        TRACE(small_timecourse, "time", holdout=2.5, count_kind="lognorm")


@pytest.mark.parametrize("marginal", ["gaussian", "quantile"])
def test_hurdle_model_on_log_normalised_data(small_timecourse, tiny_fast_config, tmp_path, marginal):
    lognorm = small_timecourse.copy()
    totals = np.asarray(lognorm.X.sum(axis=1))
    lognorm.X = lognorm.X.multiply(1e4 / totals).log1p().tocsr().astype(np.float32)
    holdout = sorted(lognorm.obs["time"].unique())[2]
    model = TRACE(lognorm, "time", holdout=holdout, seed=0, likelihood="hurdle", hurdle_marginal=marginal,
                  **{**tiny_fast_config, "max_epochs": 2})
    assert model.spec.count_kind == "lognorm"
    model.fit(run_dir=tmp_path / "run", progress=False)
    assert np.all(np.isfinite(model.history["val_loss"].dropna().to_numpy(float)))
    loaded = TRACE.load(tmp_path / "run")
    pred = loaded.predict(holdout, n_cells=40, seed=0)
    values, mean = pred.X.toarray(), np.asarray(pred.layers["hurdle_mean"])
    assert np.all(values >= 0) and np.all(np.isfinite(mean))
    # Exact zeros come from the hurdle, at about the rate the real cells have them.
    real = lognorm[lognorm.obs["time"] != holdout][:, pred.var_names].X.toarray()
    assert abs((values == 0).mean() - (real == 0).mean()) < 0.25 and 0 < (values == 0).mean() < 1
    if marginal == "quantile":
        tables = model.net.count_decoder.marginal_quantiles.numpy()
        # The tables come from the training cells alone: their top quantile is each gene's training maximum.
        np.testing.assert_allclose(tables[-1], real.max(0), rtol=1e-6)
        held = lognorm[lognorm.obs["time"] == holdout][:, pred.var_names].X.toarray()
        assert (held.max(0) > real.max(0)).any()  # a leak of the held-out cells would show here
        # Saved with the weights, and every drawn value lies on its gene's training range.
        torch.testing.assert_close(loaded.net.count_decoder.marginal_quantiles, model.net.count_decoder.marginal_quantiles)
        on = values > 0
        assert on.any() and np.all(values[on] >= np.broadcast_to(tables[0], values.shape)[on] - 1e-6)
        assert np.all(values[on] <= np.broadcast_to(tables[-1], values.shape)[on] + 1e-6)


def test_predict_from_given_source_cells(fitted, small_timecourse):
    model, _, holdout = fitted
    first = small_timecourse[small_timecourse.obs["time"] == model.spec.source_time][:7]
    out = model.predict(holdout, source=first, seed=2)
    assert out.n_obs == 7 and list(out.obs["source_cell"]) == list(first.obs_names)
    # The source cells matter: other sources give other cell states (with the same seed the sampled tokens of
    # a barely trained model can coincide: inverse-CDF draws absorb small changes of the logits).
    other = model.predict(holdout, source=small_timecourse[small_timecourse.obs["time"] == model.spec.source_time][7:14], seed=2)
    assert not np.allclose(out.obsm["X_sctrace"], other.obsm["X_sctrace"])
    with pytest.raises(SctraceInputError, match="genes are missing"):
        model.predict(holdout, source=first[:, 40:])
    with pytest.raises(SctraceInputError, match="no cells"):
        model.predict(holdout, source=first[:0])


def test_unified_position_code_lays_the_time_points_end_to_end():
    from sctrace.model.embeddings import CellEmbedding, sinusoidal_time_encoding

    # Observed times 0, 2, 4, 6 (three steps of 2); sentences of up to 5 genes + [CLS]: blocks of 6 positions.
    embed = CellEmbedding(10, 8, 5, rank_encoding="unified", time_origin=0.0, time_span=6.0, time_steps=3)
    pads = torch.zeros(3, 4, dtype=torch.long)  # the padding token's embedding is zero: only the code is left
    code = embed(pads, torch.tensor([0.0, 2.0, 3.0]))
    expected = sinusoidal_time_encoding(torch.tensor([0.0, 1.0, 2.0, 3.0, 6.0, 7.0, 8.0, 9.0, 9.0, 10.0, 11.0, 12.0]), 8)
    torch.testing.assert_close(code.reshape(-1, 8), expected)  # time 3, unseen, starts half a block after time 2


def test_a_model_with_the_unified_code_fits_and_predicts_an_unseen_time(small_timecourse, tiny_fast_config, tmp_path):
    holdout = sorted(small_timecourse.obs["time"].unique())[2]
    model = TRACE(small_timecourse, "time", holdout=holdout, rank_encoding="unified", **{**tiny_fast_config, "max_epochs": 1})
    assert not hasattr(model.net.target_embedding, "rank") and model.net.target_embedding.time_steps == 4
    model.fit(run_dir=tmp_path / "run", progress=False)
    first = model.predict(holdout, n_cells=5, seed=0)
    again = TRACE.load(tmp_path / "run").predict(holdout, n_cells=5, seed=0)
    np.testing.assert_array_equal(first.obsm["sctrace_tokens"], again.obsm["sctrace_tokens"])


def test_random_encoder_stays_at_its_initialisation_and_saves_and_loads(small_timecourse, tiny_fast_config, tmp_path):
    holdout = sorted(small_timecourse.obs["time"].unique())[2]
    model = TRACE(small_timecourse, "time", holdout=holdout, encoder="random", **{**tiny_fast_config, "max_epochs": 1})
    assert "frozen at initialisation" in repr(model)
    frozen = {**model.net.source_embedding.state_dict(prefix="source_embedding."), **model.net.encoder.state_dict(prefix="encoder.")}
    before = {k: v.clone() for k, v in model.net.state_dict().items()}
    model.fit(run_dir=tmp_path / "run", progress=False)
    after = model.net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in frozen)
    assert any(not torch.equal(before[k], after[k]) for k in after if k.startswith("decoder."))
    loaded = TRACE.load(tmp_path / "run")  # no encoder.json: the random encoder's weights are in the safetensors
    assert not (tmp_path / "run" / "encoder.json").exists()
    torch.testing.assert_close(loaded.net.encoder.state_dict(), model.net.encoder.state_dict())
    assert not any(p.requires_grad for p in loaded.net.encoder.parameters())


def test_count_state_pools_gene_positions_only():
    torch.manual_seed(0)
    net = TraceNet(43, 40, 30, d_model=32, n_heads=2, head_dim=16, count_pooling="cls+mean").eval()
    assert net.count_decoder.hidden[0].in_features == 64
    tokens = torch.tensor([[CLS_ID, 5, 9, 7, PAD_ID, PAD_ID], [CLS_ID, 11, 4, PAD_ID, PAD_ID, PAD_ID]])
    hidden = torch.randn(2, 6, 32)
    state = net.count_state(hidden, tokens)
    for row, n in ((0, 3), (1, 2)):
        expected_mean = hidden[row, 1 : 1 + n].mean(0)
        torch.testing.assert_close(state[row, 32:], expected_mean / expected_mean.norm())
        torch.testing.assert_close(state[row, :32], hidden[row, 0] / hidden[row, 0].norm())
    # Padding states never enter the mean.
    hidden[:, 4:] = 1e6
    torch.testing.assert_close(net.count_state(hidden, tokens), state)
    with pytest.raises(ValueError, match="count_pooling"):
        TraceNet(43, 40, 30, count_pooling="max")


def test_context_dropout_leaves_context_time_points_out_in_training_only(small_timecourse, tiny_fast_config, tmp_path,
                                                                         monkeypatch):
    contexts = []
    original = TraceNet.build_context

    def spy(self, z0, z0_pad, context):
        contexts.append((self.training, len(context)))
        return original(self, z0, z0_pad, context)

    monkeypatch.setattr(TraceNet, "build_context", spy)
    times = sorted(small_timecourse.obs["time"].unique())
    model = TRACE(small_timecourse, "time", holdout=times[-1], task="extrapolate", seed=0, context_dropout=0.5,
                  **{**tiny_fast_config, "max_epochs": 3})
    # Without the extrapolation calibration, whose inner fit has one context time fewer.
    model.fit(run_dir=tmp_path / "run", progress=False, calibrate_extrapolation=False)
    full = len(model.spec.time_values) - 2  # every observed time but the source and the target
    assert full >= 2
    trained = [n for training, n in contexts if training]
    # Some batches lose context time points, and the count varies; validation keeps the full context.
    assert min(trained) < full and len(set(trained)) > 1 and max(trained) <= full
    assert {n for training, n in contexts if not training} == {full}


def test_training_reads_the_first_time_as_source_and_decodes_every_later_one(small_timecourse, tiny_fast_config,
                                                                           tmp_path, monkeypatch):
    drawn = []
    original = TraceNet.training_losses

    def spy(self, *args, **kwargs):
        bound = inspect.signature(original).bind(self, *args, **kwargs)
        drawn.append((self.training, bound.arguments["target_index"]))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(TraceNet, "training_losses", spy)
    holdout = sorted(small_timecourse.obs["time"].unique())[2]
    model = TRACE(small_timecourse, "time", holdout=holdout, seed=0, **{**tiny_fast_config, "max_epochs": 4})
    model.fit(run_dir=tmp_path / "run", progress=False)
    n_times = len(model.spec.time_values)
    # The first time is the source (as at generation), so it is never a target; every later one is, in training
    # and in validation.
    assert {t for training, t in drawn if training} == set(range(1, n_times))
    assert {t for training, t in drawn if not training} == set(range(1, n_times))


def test_training_losses_refuse_the_source_as_target():
    net = TraceNet(43, 40, 8, d_model=16, n_heads=2, head_dim=8, n_encoder_layers=1, n_decoder_layers=1)
    sentences = torch.randint(3, 43, (2, 3, 9))
    sentences[:, :, 0] = CLS_ID
    with pytest.raises(ValueError, match="cannot be the source"):
        net.training_losses(sentences, torch.tensor([0.0, 1.0, 2.0]), 0, torch.ones(2, 40), torch.full((2,), 40.0),
                            "cosine")


def test_bf16_autocast_training_keeps_fp32_weights(small_timecourse, tiny_fast_config, tmp_path):
    # The GPU default ("auto" there) is bf16 autocast; Lightning runs the same autocast on CPU, so the mixed
    # precision path (attention, token head, ZINB loss on bf16 activations) is exercised here too.
    holdout = sorted(small_timecourse.obs["time"].unique())[2]
    model = TRACE(small_timecourse, "time", holdout=holdout, **{**tiny_fast_config, "max_epochs": 3})
    dtypes = []
    hook = model.net.token_head.register_forward_hook(lambda module, inputs, output: dtypes.append(output.dtype))
    model.fit(run_dir=tmp_path / "run", progress=False, precision="bf16-mixed")
    hook.remove()
    assert torch.bfloat16 in dtypes  # the token head ran under autocast
    assert {p.dtype for p in model.net.parameters()} == {torch.float32}
    val = model.history["val_loss"].dropna().to_numpy()
    assert np.isfinite(val).all() and val[-1] < val[0]
    loaded = TRACE.load(tmp_path / "run")
    assert {p.dtype for p in loaded.net.parameters()} == {torch.float32}
    out = loaded.predict(holdout, n_cells=6, seed=0)
    assert np.isfinite(out.layers["zinb_mean"]).all() and out.X.sum() > 0
    with pytest.raises(SctraceInputError, match="unknown precision 'fp8'"):
        TRACE(small_timecourse, "time", holdout=holdout, **tiny_fast_config).fit(precision="fp8")



def test_the_count_loss_of_held_aside_cells_picks_the_checkpoint(small_timecourse, tiny_fast_config, tmp_path):
    holdout = sorted(small_timecourse.obs["time"].unique())[2]
    model = TRACE(small_timecourse, "time", holdout=holdout, seed=0, **{**tiny_fast_config, "max_epochs": 4})
    n_val = model.corpus.spec.validation_rows
    assert n_val and not set(np.unique(model.corpus.pairs[:-n_val])) & set(np.unique(model.corpus.pairs[-n_val:]))
    model.fit(run_dir=tmp_path / "run", progress=False, calibrate_extrapolation=False)
    state = torch.load(tmp_path / "run" / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    (callback,) = [v for k, v in state["callbacks"].items() if k.startswith("ModelCheckpoint")]
    scores = model.history["val_count_loss"].dropna().to_numpy(float)
    assert callback["monitor"] == "val_count_loss" and len(scores) == 4
    assert float(callback["best_model_score"]) == pytest.approx(scores.min())
