"""Random-weight models of named configurations: the full configurations' parameter counts (on the
meta device, nothing allocated) against a count by hand from the released config.json numbers,
scaled-down builds through the editing path in bf16, seeding, the cut-down tokenizer and errors."""

import pytest
import torch
from transformers import AutoTokenizer

from langedit.editing import Editor, load_hparams
from langedit.editing.values import ValueSettings, compute_values
from langedit.models.loading import ensure_default_model
from langedit.models.named import NAMED_CONFIGS, build_named_model, clipped_tokenizer, count_parameters, named_config
from edit_requests import BORN_EN, CORPUS, COUNTRY


REQUESTS = [COUNTRY, BORN_EN]
TEMPLATES = [["{}"], ["The cat sat. {}"]]
SMALL_VOCAB = 32000   # keeps the scaled-down builds small; the full vocabularies are checked analytically


def llama_like_count(vocab, d, d_ff, layers, heads, kv_heads, qkv_bias):
    """Untied embedding and head, per block: q/o (d x d), k/v (d x kv d_head), gate/up/down, two RMSNorm gains."""
    d_kv = kv_heads * d // heads
    attention = 2 * d * d + 2 * d * d_kv + (d + 2 * d_kv if qkv_bias else 0)
    return 2 * vocab * d + layers * (attention + 3 * d * d_ff + 2 * d) + d


def gptj_count(vocab, d, layers):
    """Untied embedding, head with bias; per block one LayerNorm, q/k/v/o without bias, fc_in/fc_out with."""
    d_ff = 4 * d
    block = 2 * d + 4 * d * d + (d * d_ff + d_ff) + (d_ff * d + d)
    return vocab * d + (vocab * d + vocab) + layers * block + 2 * d


def test_full_configurations_have_the_released_parameter_counts_without_allocating():
    assert count_parameters(named_config("llama3-8b")) == llama_like_count(128256, 4096, 14336, 32, 32, 8, False)
    assert count_parameters(named_config("qwen2.5-7b")) == llama_like_count(152064, 3584, 18944, 28, 28, 4, True)
    assert count_parameters(named_config("gpt-j-6b")) == gptj_count(50400, 4096, 28)
    assert round(count_parameters(named_config("llama3-8b")) / 1e9, 2) == 8.03        # Meta's "8B": 8.03 B
    assert round(count_parameters(named_config("qwen2.5-7b")) / 1e9, 2) == 7.62       # Qwen's model card: 7.61 B (truncated)


def test_full_configurations_carry_the_attention_settings_of_their_config_json():
    llama, qwen, gptj = (named_config(n) for n in ("llama3-8b", "qwen2.5-7b", "gpt-j-6b"))
    theta = lambda c: (getattr(c, "rope_parameters", None) or {}).get("rope_theta", getattr(c, "rope_theta", None))
    assert (llama.num_key_value_heads, llama.head_dim, theta(llama), llama.rms_norm_eps) == (8, 128, 500000.0, 1e-5)
    assert (qwen.num_key_value_heads, qwen.hidden_size // qwen.num_attention_heads, theta(qwen)) == (4, 128, 1e6)
    assert (gptj.rotary_dim, gptj.n_embd // gptj.n_head, gptj.n_positions) == (64, 256, 2048)
    assert not any(c.tie_word_embeddings for c in (llama, qwen, gptj))


@pytest.mark.parametrize("name, divisor", [("llama3-8b", 8), ("qwen2.5-7b", 4), ("gpt-j-6b", 8)])
def test_scaled_down_builds_keep_head_shapes_and_run_value_targets_in_bf16(name, divisor):
    lm = build_named_model(name, device="cpu", n_layers=3, width_divisor=divisor, vocab_size=SMALL_VOCAB)
    config, full = lm.model.config, named_config(name)
    assert all(p.dtype == torch.bfloat16 and p.device.type == "cpu" for p in lm.model.parameters())
    assert len(lm.tokenizer) == config.vocab_size == SMALL_VOCAB
    heads = getattr(config, "num_attention_heads", getattr(config, "n_head", None))
    full_heads = getattr(full, "num_attention_heads", getattr(full, "n_head", None))
    width = getattr(config, "hidden_size", getattr(config, "n_embd", None))
    full_width = getattr(full, "hidden_size", getattr(full, "n_embd", None))
    assert (width * divisor, heads * divisor) == (full_width, full_heads)        # head size unchanged
    if hasattr(config, "num_key_value_heads"):
        assert config.num_attention_heads // config.num_key_value_heads == full.num_attention_heads // full.num_key_value_heads
    settings = ValueSettings(layer=1, steps=3, lr=0.5)
    found = compute_values(lm.model, lm.tokenizer, lm.arch, REQUESTS, [TEMPLATES] * 2, settings, progress=False)
    assert torch.isfinite(found.values).all() and (found.values - found.states).norm() > 0
    assert found.steps == [3, 3]


def test_the_seed_alone_decides_the_weights():
    build = lambda seed: build_named_model("llama3-8b", device="cpu", seed=seed, n_layers=1, width_divisor=8,
                                           vocab_size=SMALL_VOCAB, dtype="float32").model.state_dict()
    first, again, other = build(0), build(0), build(1)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["model.layers.0.mlp.down_proj.weight"], other["model.layers.0.mlp.down_proj.weight"])
    assert first["model.layers.0.mlp.down_proj.weight"].dtype == torch.float32


def test_an_editor_edits_a_scaled_down_llama3_in_bf16(tmp_path):
    lm = build_named_model("llama3-8b", device="cpu", n_layers=9, width_divisor=8, vocab_size=SMALL_VOCAB)
    hp = load_hparams("memit", "llama", v_steps=3, stats_tokens=300)   # the paper's layers 4-8
    editor = Editor(lm, method="memit", hparams=hp, corpus_texts=CORPUS, progress=False, cache=tmp_path)
    report = editor.apply(REQUESTS)
    assert set(report.update_norm) == {4, 5, 6, 7, 8} and all(0 < n < float("inf") for n in report.update_norm.values())
    assert report.value_steps == [3, 3]


def test_the_cut_down_tokenizer_keeps_gemmas_common_tokens_and_every_character():
    full, cut = AutoTokenizer.from_pretrained(str(ensure_default_model())), clipped_tokenizer(SMALL_VOCAB)
    assert len(cut) == SMALL_VOCAB
    assert (cut.bos_token_id, cut.eos_token_id, cut.pad_token_id) == (full.bos_token_id, full.eos_token_id, full.pad_token_id)
    common = "The cat is in the house and the dog is not."
    tokens = full.convert_ids_to_tokens(full(common)["input_ids"])
    assert all(token in cut.get_vocab() for token in tokens)                  # kept: the lowest ids are common
    assert cut.convert_ids_to_tokens(cut(common)["input_ids"]) == tokens      # so tokenised as before
    for text in ["Wann wurde die IAAF Combined Events Challenge gegründet?", "巴特萨尔茨代特富尔特位于哪个国家？",
                 "Où est né Anna Maria ? ☃ \t tabs", "Ωμέγα 🙂"]:
        ids = cut(text)["input_ids"]
        assert max(ids) < SMALL_VOCAB and ids[0] == cut.bos_token_id
        assert cut.decode(ids, skip_special_tokens=True) == text
        assert len(ids) >= len(full(text)["input_ids"])      # fewer merges: never fewer tokens


def test_unknown_names_and_widths_that_do_not_divide_are_clear_errors():
    with pytest.raises(ValueError, match="known:.*llama3-8b"):
        named_config("llama-9000")
    with pytest.raises(ValueError, match="width_divisor=3"):
        named_config("llama3-8b", width_divisor=3)
    with pytest.raises(ValueError, match="n_layers"):
        named_config("gpt-j-6b", n_layers=0)
    assert sorted(NAMED_CONFIGS) == ["gpt-j-6b", "llama3-8b", "qwen2.5-7b"]
